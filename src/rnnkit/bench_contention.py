"""``rnnkit bench --contention``: training throughput on an idle machine and beside other work, one table.

Each row trains the character LM at its defaults (the built-in corpus, ``rnnkit train lm``'s model and batch) for
``--contention-seconds`` of training steps, once idle and once beside ``busy_load(--load)`` (processes that spin
at the same priority, started and stopped by the bench: what another job on the machine does), in interleaved
rounds, and reports the medians of characters per second and the ratio loaded / idle:

- ``rnnkit auto``: the fused kernels with ``--threads 0`` (the default: ``rnnkit.threads.ThreadTuner``);
- ``rnnkit all``: the fused kernels on all the cores torch uses, whatever the load (rnnkit before the tuner);
- ``torch.nn all``: ``--backend native`` (torch.nn's oneDNN/cuDNN recurrences) on all cores, as a user's own
  loop around ``torch.nn.LSTM`` runs;
- ``torch.nn auto``: the same with the tuner.

Throughput is the trainer's own (items over the seconds of optimiser steps; data loading and evaluations left
out), so a row measures the steps, not the start-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Callable

import torch

from rnnkit.threads import busy_load

__all__ = ["ROWS", "run_contention"]

# name: (backend, threads: 0 = the tuner, -1 = all of torch's threads fixed)
ROWS: dict[str, tuple[str, int]] = {
    "rnnkit auto": ("auto", 0),
    "rnnkit all": ("auto", -1),
    "torch.nn auto": ("native", 0),
    "torch.nn all": ("native", -1),
}


def _train_rate(backend: str, threads: int, seconds: float, quick: bool, steps: int = 0) -> float:
    from rnnkit.tasks.language_model import LMConfig, LMTask
    from rnnkit.train import train

    model = {"backend": backend} | ({"hidden_size": 32, "embedding_size": 8} if quick else {})
    data = {"max_chars": 200_000} if quick else {}
    train_cfg = {"max_minutes": seconds / 60, "max_steps": steps, "eval_every": 10**9, "checkpoint_every": 0,
                 "log_every": 10**9, "threads": torch.get_num_threads() if threads < 0 else threads}  # fmt: skip
    config = LMConfig.from_dict({"model": model, "data": data, "train": train_cfg})
    with tempfile.TemporaryDirectory() as folder:
        return train(LMTask(config), os.path.join(folder, "run"), plots=False).items_per_second


def run_contention(args: argparse.Namespace, write: Callable[[str], None]) -> int:
    """The contention table through ``write`` (see the module docstring); returns 0."""
    seconds = 0.0 if args.quick else args.contention_seconds  # --quick: 20 steps per run instead
    rounds = 1 if args.quick else args.repeats
    load = args.load if args.load is not None else max(1, (os.cpu_count() or 2) // 2)
    budget = "20 steps" if args.quick else f"{seconds:g} s of training steps"
    write(
        f"rnnkit bench --contention: char LM at its defaults{' (--quick: H=32)' if args.quick else ''}, {budget} per "
        f"run, {rounds} interleaved round(s), threads={torch.get_num_threads()}, load = {load} process(es) spinning "
        "at normal priority"
    )
    rates: dict[tuple[str, bool], list[float]] = {(name, loaded): [] for name in ROWS for loaded in (False, True)}
    for backend, threads in ROWS.values():  # untimed: the first steps load the C++ loops and warm the allocator
        _train_rate(backend, threads, 0.0, args.quick, steps=3)
    for _ in range(rounds):
        for loaded in (False, True):
            with busy_load(load if loaded else 0):
                for name, (backend, threads) in ROWS.items():
                    rates[name, loaded].append(_train_rate(backend, threads, seconds, args.quick, 20 * args.quick))
    write(f"{'row':14} {'idle chars/s':>13} {'loaded':>10} {'loaded/idle':>12} {'idle vs torch.nn all':>21}")
    reference = statistics.median(rates["torch.nn all", False])
    for name in ROWS:
        idle, busy = (statistics.median(rates[name, loaded]) for loaded in (False, True))
        write(f"{name:14} {idle:13.0f} {busy:10.0f} {busy / idle:11.2f}x {idle / reference:20.2f}x")
    write("loaded/idle: the share of the idle speed kept beside the load (1.00x: none lost); medians over rounds")
    return 0
