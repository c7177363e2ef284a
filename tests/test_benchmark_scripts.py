"""The benchmark scripts still run against today's API (they are not imported by anything else, so nothing else
would notice when a rename breaks them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit.precision import bf16_supported

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent / "src")}


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("[!_]*.py")))
def test_every_script_imports_and_prints_its_help(script):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          env=ENV, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


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
