"""Crashes: training killed with SIGKILL at random moments, then resumed until done, ends bit-identical to a run
that was never interrupted; a full disk is one line, and what was written before survives."""

from __future__ import annotations

import contextlib
import errno
import json
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
STEPS, EVERY = 600, 30  # a checkpoint every 30 steps: 20 of them, each a moment a kill may interrupt

# ``python -c PAUSED NAME ARGS...``: rnnkit's command line ARGS, which stops ("paused" on stdout, then a long sleep)
# at the moment NAME names, for the test to kill it there: "cleanup" when a resume removes a leftover temporary
# of best.pt, "write" when a file's bytes are written but not yet renamed into place
PAUSED = """
import os, pathlib, sys, time
def pause():
    print("paused", flush=True)
    time.sleep(120)
if sys.argv[1] == "cleanup":
    unlink = pathlib.Path.unlink
    def slow_unlink(self, missing_ok=False):
        if self.name.startswith(".best.pt."):
            pause()
        return unlink(self, missing_ok=missing_ok)
    pathlib.Path.unlink = slow_unlink
else:
    fsync = os.fsync
    def slow_fsync(fd):
        fsync(fd)
        pause()
    os.fsync = slow_fsync
from rnnkit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _kill_when_paused(where: str, args: list[str]) -> None:
    """Run rnnkit ``args`` until it pauses at ``where`` (see PAUSED), then SIGKILL it there."""
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, where, *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline().strip()
        assert line == "paused", proc.communicate(timeout=60)[1][-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _train(text: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rnnkit", "train", "lm", "--data", str(text), "--out", str(out),
            "--max-steps", str(STEPS), "--max-minutes", "0", "--eval-every", "70", "--checkpoint-every", str(EVERY),
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
    subprocess.run(_train(corpus, out), env=ENV, check=True, capture_output=True, timeout=300)
    seconds = json.loads((out / "summary.json").read_text())["elapsed_s"]  # the training loop's own time
    return {**load_checkpoint(out / "last.pt"), "seconds_per_step": seconds / STEPS}


def _wait_for_step(last: Path, proc: subprocess.Popen, target: int) -> None:
    """Until last.pt holds step >= ``target`` (or the process ends): a trigger that does not assume how fast this
    machine is. last.pt is replaced atomically, so it is read again only when a new file has been renamed in."""
    seen = None
    while proc.poll() is None:
        with contextlib.suppress(FileNotFoundError):
            stat = last.stat()
            if (stat.st_ino, stat.st_mtime_ns) != seen:
                seen = (stat.st_ino, stat.st_mtime_ns)
                if load_checkpoint(last)["step"] >= target:
                    return
        time.sleep(0.005)


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_bits(corpus, straight, tmp_path):
    rng = random.Random(0)
    out, last = tmp_path / "run", tmp_path / "run" / "last.pt"
    killed_at = []  # the step of last.pt after each kill
    for _kill in range(2):
        step = load_checkpoint(last)["step"] if last.exists() else 0
        proc = subprocess.Popen(_train(corpus, out, *(["--resume"] if step else [])), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        # once the run has written a checkpoint one to five checkpoints on, a random moment within the next 30
        # steps (their time as the uninterrupted run took them): a kill may land inside a step or a checkpoint write
        _wait_for_step(last, proc, step + EVERY * rng.randint(1, 5))
        time.sleep(rng.uniform(0.0, EVERY * straight["seconds_per_step"]))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, f"the run ended before its kill: {err[-2000:]}"
        killed_at.append(load_checkpoint(last)["step"])
    # a kill while a resume removes what an interrupted write left (issue 26: such a resume once broke the run)
    for leftover in (".last.pt.abcdefgh.tmp", ".best.pt.ijklmnop.tmp"):
        (out / leftover).write_bytes(b"half a checkpoint")
    _kill_when_paused("cleanup", _train(corpus, out, "--resume")[3:])
    assert load_checkpoint(last)["step"] == killed_at[-1]
    proc = subprocess.run(_train(corpus, out, "--resume"), env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 0 < killed_at[0] < killed_at[1] < STEPS, killed_at  # each resumed run got further, none finished
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary file left behind
    final = load_checkpoint(last)
    assert final["step"] == straight["step"] == STEPS
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


@pytest.mark.slow
def test_a_second_train_on_one_out_is_refused_and_a_killed_holder_leaves_no_stuck_lock(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(  # holds the folder's lock as a running train does, until killed
        [sys.executable, "-c", "import sys, time; from rnnkit.io import hold_lock\n"
         "with hold_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(run)],
        env=ENV, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        line = one_error_line(capsys, main(_tiny_lm(corpus, run, 2)))
        assert f"{run} is in use by another rnnkit train (process {holder.pid})" in line
        assert not (run / "last.pt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert main(_tiny_lm(corpus, run, 2)) == 0  # the OS released the killed holder's lock
    assert load_checkpoint(run / "last.pt")["step"] == 2 and not (run / ".lock").exists()


@pytest.mark.slow
def test_a_killed_or_full_export_leaves_nothing_and_the_next_export_cleans_up(corpus, tmp_path, capsys):
    run, model = tmp_path / "run", tmp_path / "m.pt"
    assert main(_tiny_lm(corpus, run, 2)) == 0
    export = ["export", "--run", str(run), "--format", "torchscript", "--out", str(model)]
    _kill_when_paused("write", export)  # killed with the whole file written to its temporary, not renamed
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.pt.")]
    assert len(left) == 1 and not model.exists()

    # a full disk (here: a file-size limit, EFBIG) is one line and leaves no file; torch.jit's own writer aborted
    # the process (exit 134, "unexpected pos") and left a 0-byte temporary
    def limited():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))

    # ONNX is serialised in memory too, so its full disk is the same line
    onnx = ["export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    for argv, path in ((export, model), (onnx, tmp_path / "m.onnx")):
        proc = subprocess.run([sys.executable, "-m", "rnnkit", *argv], env=ENV, capture_output=True, text=True,
                              preexec_fn=limited, timeout=120)  # fmt: skip
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
        assert lines[0].startswith(f"rnnkit: error: {path}: no space left on device")
        assert not path.exists()
    assert main(export) == 0  # the next export of m.pt removes what the killed one left
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert torch.jit.load(str(model)) is not None
