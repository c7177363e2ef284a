"""The benchmark scripts still run against today's API (they are not imported by anything else, so nothing else
would notice when a rename breaks them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit.precision import bf16_supported

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent / "src")}


# Every script's --help in one Python process (each run as __main__ by runpy, output captured apart): one import of
# torch for them all instead of one per script, which was most of this file's time
HELP = """
import contextlib, io, json, runpy, sys, traceback
report, paths, results = sys.argv[1], sys.argv[2:], {}
for path in paths:
    out, err, status = io.StringIO(), io.StringIO(), 0
    sys.argv = [path, "--help"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
            status = 1
    results[path] = {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}
with open(report, "w") as f:
    json.dump(results, f)
"""
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("[!_]*.py"))


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict:
    report = tmp_path_factory.mktemp("helps") / "helps.json"
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(BENCHMARKS), ENV["PYTHONPATH"]])}  # the scripts' _common
    proc = subprocess.run([sys.executable, "-c", HELP, str(report), *(str(BENCHMARKS / s) for s in SCRIPTS)],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {Path(path).name: result for path, result in json.loads(report.read_text()).items()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_imports_and_prints_its_help(script, helps):
    assert helps[script]["status"] == 0, helps[script]["stderr"][-2000:]
    assert "usage:" in helps[script]["stdout"]


@pytest.mark.slow
def test_lm_vs_compressors_trains_scores_and_prints_its_table(tmp_path):
    text = tmp_path / "code.txt"
    text.write_text("".join(f"def f{i % 7}(x):\n    return x * {i % 5}\n" for i in range(600)))
    argv = [str(BENCHMARKS / "lm_vs_compressors.py"), "--data", str(text), "--minutes", "0.003", "--hidden-size", "16",
            "--out", str(tmp_path / "run"), "--device", "cpu", "--dynamic-lr", "0.001"]  # fmt: skip
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "chars/s" in proc.stdout
    for row in ("rnnkit char LM", "dynamic eval lr 0.001", "xz -9e (given train)"):
        assert row in proc.stdout


@pytest.mark.slow
def test_seq2seq_speed_times_every_decoder_and_prints_ratios():
    argv = [str(BENCHMARKS / "seq2seq_speed.py"), "--shapes", "g2p", "--batch", "3", "--repeats", "1", "--threads", "1"]
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("g2p")]
    assert [r[2] for r in rows[:4]] == ["before", "steps,", "steps", "parallel"] and rows[0][-1] == "1.00x"
    assert sum("greedy," in r or "beam" in r for r in rows) == 4


@pytest.mark.slow
def test_lm_vs_compressors_in_bf16(tmp_path):
    text = tmp_path / "code.txt"
    text.write_text("".join(f"def f{i % 7}(x):\n    return x * {i % 5}\n" for i in range(600)))
    argv = [str(BENCHMARKS / "lm_vs_compressors.py"), "--data", str(text), "--minutes", "0.003", "--hidden-size", "16",
            "--out", str(tmp_path / "run"), "--device", "cpu", "--dynamic-lr", "", "--precision", "bf16",
            "--no-compressors"]  # fmt: skip
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    used = "bf16" if bf16_supported("cpu") else "fp32"  # bf16 asked on a CPU without it trains fp32
    assert f"precision {used}" in proc.stdout and "rnnkit char LM" in proc.stdout
    assert "xz" not in proc.stdout.split("rnnkit char LM")[1].split("note:")[0]


def test_ctc_speech_stops_cleanly_without_its_synthesizers(tmp_path):
    """The speech benchmark needs espeak-ng and flite (Debian packages): without them on PATH it says which and
    exits 0, having written nothing."""
    env = {**ENV, "PATH": str(tmp_path)}  # no espeak-ng, no flite
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "ctc_speech.py"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "needs espeak-ng (apt-get install espeak-ng), flite (apt-get install flite)" in proc.stderr
    assert not (tmp_path / "out").exists()
