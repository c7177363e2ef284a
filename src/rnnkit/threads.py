"""CPU threads chosen from the cores that are actually free, while a run trains (``--threads 0``, the default).

Why: torch runs each operation's parallel part on a pool of OpenMP threads, one per core, and every parallel
region ends in a barrier that waits for the slowest thread. Beside other work at the same priority (another
training run, a build, a second user), one of those threads shares its core with that work and is descheduled
for whole time slices (milliseconds), while a training step of a recurrent net runs thousands of parallel regions
of microseconds each: every barrier waits out the time slice. Measured on a 2-core machine beside such work, a
step with 2 threads ran several times slower than with 1 (``rnnkit bench --contention`` reproduces it). Work at a
lower priority (``nice``) does not do this, as the kernel hands the core back at once.

``ThreadTuner`` is a trainer callback: it times the training steps (the trainer's own clock of the step, not the
evaluations) at each candidate thread count in turn, keeps the fastest, and probes again after a while, at once
when the steps get much slower than they were when it chose. On an idle machine it keeps all threads and probes
ever less often, so the idle speed stays; beside other work it drops to the threads that the free cores can run.
The thread count changes the grouping of no sum in rnnkit's kernels or torch's CPU matrix products on the tested
machines (a run that switches trains to the same bits as one that does not: ``tests/test_threads.py``).

``busy_load(n)`` starts ``n`` processes that spin at normal priority, the reproducible load of the benchmark.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from rnnkit.callbacks import Callback, Event

__all__ = ["ThreadTuner", "busy_load", "candidate_threads"]

log = logging.getLogger(__name__)


def candidate_threads(most: int) -> list[int]:
    """The counts worth timing up to ``most``: all, half and one (a barrier cost grows with every thread)."""
    return sorted({most, max(1, most // 2), 1}, reverse=True)


class ThreadTuner(Callback):
    """Keep the fastest thread count of ``candidate_threads(most)`` for the training steps (see the module).

    A probe times ``probe_steps`` steps at each count (after one step to settle), then keeps the fastest for
    ``period_s`` seconds of training; a probe that keeps the same count doubles the period (up to
    ``max_period_s``), one that changes it goes back to ``period_s``. A median step ``slowdown`` times slower than
    the chosen count's at its probe starts a probe at once. ``clock`` returns the trainer's seconds of training
    steps so far (``trainer.train_s``); ``set_threads`` is ``torch.set_num_threads`` (both replaceable in tests).
    """

    def __init__(
        self,
        most: int,
        *,
        probe_steps: int = 4,
        period_s: float = 15.0,
        max_period_s: float = 240.0,
        slowdown: float = 1.6,
        clock: Callable[[Any], float] | None = None,
        set_threads: Callable[[int], None] = torch.set_num_threads,
    ) -> None:
        if most < 1:
            raise ValueError(f"most must be a thread count >= 1, got {most}")
        self.candidates = candidate_threads(most)
        self.probe_steps, self.period_s, self.max_period_s = probe_steps, period_s, max_period_s
        self.slowdown = slowdown
        self.clock = clock or (lambda trainer: trainer.train_s)
        self.set_threads = set_threads
        self.chosen = self.current = self.candidates[0]  # the process starts on all of them
        self.period = period_s
        self.queue: list[int] = []  # counts still to time in this probe (the first is being timed)
        self.times: dict[int, list[float]] = {}
        self.recent: list[float] = []  # step times at the chosen count since the probe
        self.chosen_time = float("inf")
        self.next_probe = 0.0
        self.last: float | None = None
        self.skip = 0
        self.history: list[tuple[float, int]] = []  # (training seconds, count chosen): what the run did

    def on_start(self, trainer: Any, event: Event) -> None:
        self.last = self.clock(trainer)
        self._start_probe(self.last)

    def on_batch_end(self, trainer: Any) -> None:
        now = self.clock(trainer)
        step = now - self.last
        self.last = now
        if self.skip:
            self.skip -= 1
            return
        if self.queue:
            self._probe_step(step, now)
            return
        self.recent.append(step)
        self.recent = self.recent[-2 * self.probe_steps :]
        typical = statistics.median(self.recent) if len(self.recent) >= self.probe_steps else 0.0
        slowed = typical > self.slowdown * self.chosen_time
        if now >= self.next_probe or slowed:
            if slowed:
                log.debug("steps %.1fx slower than at the last probe: probing the thread count again",
                          typical / self.chosen_time)  # fmt: skip
                self.period = self.period_s
            self._start_probe(now)

    def _start_probe(self, now: float) -> None:
        # the chosen count first, then the others: the first timed steps are the least disturbed by the switch
        self.queue = [self.chosen, *(c for c in self.candidates if c != self.chosen)]
        self.times = {c: [] for c in self.queue}
        self._switch(self.queue[0])

    def _probe_step(self, step: float, now: float) -> None:
        count = self.queue[0]
        self.times[count].append(step)
        if len(self.times[count]) < self.probe_steps:
            return
        self.queue.pop(0)
        if self.queue:
            self._switch(self.queue[0])
            return
        medians = {c: statistics.median(t) for c, t in self.times.items()}
        best = min(medians, key=lambda c: (medians[c], -c))
        self.period = min(2 * self.period, self.max_period_s) if best == self.chosen else self.period_s
        if best != self.chosen:
            log.info("training on %d CPU thread%s (a step took %s)", best, "" if best == 1 else "s",
                     ", ".join(f"{1e3 * m:.1f} ms on {c}" for c, m in sorted(medians.items())))  # fmt: skip
        self.chosen, self.chosen_time, self.recent = best, medians[best], []
        self.history.append((now, best))
        self.next_probe = now + self.period
        self._switch(best)

    def _switch(self, count: int) -> None:
        if count != self.current:
            self.set_threads(count)
            self.current = count
        self.skip = 1  # the step after a switch wakes or parks the pool's threads: not timed


@contextmanager
def busy_load(processes: int) -> Iterator[list[subprocess.Popen]]:
    """``processes`` Python processes that spin at the caller's priority until the block ends (then killed)."""
    if processes < 0:
        raise ValueError(f"processes must be >= 0, got {processes}")
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
             for _ in range(processes)]  # fmt: skip
    try:
        time.sleep(0.2 if procs else 0.0)  # running before the caller times anything
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
