"""Shared pieces of the classification benchmarks: thread limits, the rnnkit CLI round trip, markdown tables.

rnnkit is driven through its command line, ``python -m rnnkit train classify ...`` then ``python -m rnnkit eval
--json``, in a child process, so a benchmark measures exactly what a user would run. The child's progress goes to
our stderr; the tables go to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


# the `rnnkit train classify` settings a benchmark passes on only when given (unset: the task's defaults)
SETTINGS: dict[str, dict] = {
    "--mode": {"choices": ("lstm", "gru", "elman"), "help": "cell"},
    "--embedding-size": {"type": int, "help": "token embedding width, and the n-gram bag's (text only)"},
    "--hidden-size": {"type": int, "help": "hidden width per direction"},
    "--num-layers": {"type": int, "help": "stacked layers"},
    "--bidirectional": {"choices": ("true", "false")},
    "--pooling": {"choices": ("last", "mean", "max", "attention")},
    "--dropout": {"type": float, "help": "between layers and in the head"},
    "--batch-size": {"type": int, "help": "examples per step"},
    "--lr": {"type": float, "help": "peak learning rate"},
    "--eval-every": {"type": int, "help": "evaluate every N steps (evaluations use the budget)"},
    "--patience": {"type": int, "help": "evaluations without improvement before stopping (0 = off)"},
    "--scaling": {"choices": ("dataset", "series"), "help": "a series' scaling"},
}


def add_settings(parser: argparse.ArgumentParser, flags: tuple[str, ...]) -> argparse._ArgumentGroup:
    """An argument group of ``flags`` (keys of ``SETTINGS``), each None unless given."""
    group = parser.add_argument_group("rnnkit settings (passed to `rnnkit train classify`; unset: the task's defaults)")
    for flag in flags:
        group.add_argument(flag, **SETTINGS[flag])
    return group


def given_settings(args: argparse.Namespace, flags: tuple[str, ...]) -> list[str]:
    """``rnnkit train classify`` options for the settings among ``flags`` that were given."""
    options = []
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            options += [flag, str(value)]
    return options


def log(message: str) -> None:
    """Progress line on stderr (stdout is kept for the tables)."""
    print(message, file=sys.stderr, flush=True)


def limit_threads(threads: int):
    """Cap BLAS/OpenMP threads in this process and in the rnnkit children; returns the threadpoolctl handle.

    The environment variables reach the children (torch reads ``OMP_NUM_THREADS`` at start-up); threadpoolctl caps
    the BLAS and OpenMP pools numpy/scipy/scikit-learn have already loaded here. Keep the handle alive.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


def rnnkit_command(*args: str) -> list[str]:
    """``python -m rnnkit ARGS`` with this interpreter, so the venv's rnnkit is the one measured."""
    return [sys.executable, "-m", "rnnkit", *args]


def run_command(cmd: list[str], what: str) -> float:
    """Run ``cmd`` with its stdout and stderr on our stderr; wall seconds, or RuntimeError naming the command."""
    log("$ " + " ".join(cmd[1:]))
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=None)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{what} exited with {done.returncode}: {' '.join(cmd)}")
    return wall


def train_run(task: str, out_dir: Path, args: list[str]) -> tuple[dict, float]:
    """Run ``rnnkit train TASK --out OUT_DIR ARGS``; return (summary.json, wall seconds).

    OUT_DIR is the benchmark's own folder: a run left there by an earlier benchmark is removed first (rnnkit
    refuses to train over a finished run). The child's stdout and stderr both stream to our stderr. A non-zero exit
    raises ``RuntimeError`` naming the command, so a broken interface fails loudly instead of printing blanks.
    """
    if out_dir.exists():
        log(f"removing the earlier run {out_dir}")
        shutil.rmtree(out_dir)
    wall = run_command(rnnkit_command("train", task, "--out", str(out_dir), *args), "rnnkit train")
    summary_path = out_dir / "summary.json"
    if not summary_path.is_file():
        raise RuntimeError(f"rnnkit train finished but wrote no {summary_path}")
    return json.loads(summary_path.read_text()), wall


def train_classifier(data: Path, out_dir: Path, options: list[str]) -> tuple[dict, float]:
    """``rnnkit train classify --data DATA --out OUT_DIR OPTIONS`` (see ``train_run``)."""
    return train_run("classify", out_dir, ["--data", str(data), *options])


def evaluate_classifier(run_dir: Path, data: Path) -> dict:
    """``rnnkit eval --run RUN_DIR --data DATA --json`` -> its JSON object (accuracy, macro_f1, n, ...)."""
    cmd = rnnkit_command("eval", "--run", str(run_dir), "--data", str(data), "--json")
    log("$ " + " ".join(cmd[1:]))
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"rnnkit eval exited with {done.returncode}: {' '.join(cmd)}")
    text = done.stdout.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # Tolerate stray lines before the object; the contract is one JSON object on stdout.
        for line in reversed(text.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"rnnkit eval printed no JSON object; stdout was:\n{text}") from None


def summary_value(summary: dict, key: str) -> float | None:
    """A number from summary.json or eval's JSON, or None where it is missing (reported as n/a, never invented)."""
    value = summary.get(key)
    return float(value) if isinstance(value, int | float) else None


def fmt(value: float | None, digits: int = 3) -> str:
    """Fixed-point number, or 'n/a'."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table with columns padded to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    return "\n".join(lines)
