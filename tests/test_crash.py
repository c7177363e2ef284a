"""Crashes: training killed with SIGKILL at random moments, then resumed until done, ends bit-identical to a run
that was never interrupted; a full disk is one line, and what was written before survives."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import one_error_line
from rnnkit.checkpoint import load_checkpoint
from rnnkit.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent / "src")}


def _train(text: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rnnkit", "train", "lm", "--data", str(text), "--out", str(out),
            "--max-steps", "3000", "--max-minutes", "0", "--eval-every", "70", "--checkpoint-every", "30",
            "--hidden-size", "8", "--embedding-size", "4", "--batch-size", "2", "--bptt", "8", "--device", "cpu",
            "--log-every", "50", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("crash") / "text.txt"
    p.write_text("def f(x):\n    return x * 2 + 1\n" * 200)
    return p


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("straight") / "run"
    started = time.monotonic()
    subprocess.run(_train(corpus, out), env=ENV, check=True, capture_output=True, timeout=300)
    return {**load_checkpoint(out / "last.pt"), "seconds": time.monotonic() - started}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_killed_runs_resume_to_the_same_bits(seed, corpus, straight, tmp_path):
    rng = random.Random(seed)
    out = tmp_path / "run"
    killed_at = []  # the step of last.pt after each kill (None: killed before the first checkpoint)
    for _attempt in range(12):
        resume = ["--resume"] if (out / "last.pt").exists() else []
        left = 1 - (load_checkpoint(out / "last.pt")["step"] / 3000 if resume else 0)  # share of the steps to run
        proc = subprocess.Popen(_train(corpus, out, *resume), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        if len(killed_at) < 3:  # the first three attempts die at a random moment of training
            started = time.monotonic()
            while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() - started < 60:
                time.sleep(0.01)
            # a random moment within the first half of what the rest of the run takes, timed on the uninterrupted
            # run, so each kill lands inside training however fast this machine is
            time.sleep(rng.uniform(0.0, 0.5 * left * straight["seconds"]))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
                last = out / "last.pt"
                killed_at.append(load_checkpoint(last)["step"] if last.exists() else None)
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        break
    else:
        raise AssertionError("the run never finished")
    assert len(killed_at) == 3 and all(s is None or s < 3000 for s in killed_at), killed_at
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary file left behind
    final = load_checkpoint(out / "last.pt")
    assert final["step"] == straight["step"] == 3000
    for key, value in straight["model"].items():
        assert torch.equal(final["model"][key], value), key


class _FullFile:
    """A file of ``os.fdopen`` whose writes fail with ENOSPC, as on a full disk."""

    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self.f.close()
        return False

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self.f.fileno()


def _tiny_lm(corpus: Path, run: Path, steps: int) -> list[str]:
    sizes = ["--hidden-size", "8", "--embedding-size", "4", "--batch-size", "2", "--bptt", "8"]
    return ["train", "lm", "--data", str(corpus), "--out", str(run), "--max-steps", str(steps), "--max-minutes", "0",
            "--eval-every", "2", *sizes]  # fmt: skip


def test_a_full_disk_is_one_line_and_the_old_files_survive(corpus, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(_tiny_lm(corpus, run, 4)) == 0
    forecasts = tmp_path / "kept.txt"
    forecasts.write_text("an earlier output\n")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    real = os.fdopen
    monkeypatch.setattr("rnnkit.io.os.fdopen", lambda fd, *a, **k: _FullFile(real(fd, *a, **k)))
    capsys.readouterr()
    line = one_error_line(capsys, main([*_tiny_lm(corpus, run, 8), "--resume"]))
    assert "no space left on device" in line and str(run) in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # all whole, no temporary
    line = one_error_line(capsys, main(["gradflow", "--out", str(tmp_path / "kept.png"), "--seq-len", "3"]))
    assert "no space left on device" in line and not (tmp_path / "kept.png").exists()
    monkeypatch.undo()
    assert main([*_tiny_lm(corpus, run, 8), "--resume"]) == 0  # and the run goes on once there is room
    assert load_checkpoint(run / "last.pt")["step"] == 8
