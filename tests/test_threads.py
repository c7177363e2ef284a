"""The thread tuner (``--threads 0``): it keeps the fastest thread count, probes again when the steps slow down,
changes no bit of training, and gives the process its thread count back; and the benchmark's busy load."""

from __future__ import annotations

import functools
import itertools
import os

import pytest
import torch

from rnnkit.callbacks import Callback
from rnnkit.tasks.language_model import LMConfig, LMTask
from rnnkit.threads import ThreadTuner, busy_load, candidate_threads
from rnnkit.train import train


class FakeRun:
    """Steps whose time depends on the thread count set: ``cost[count]`` seconds each."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost, self.threads, self.train_s, self.switches = cost, max(cost), 0.0, []

    def set_threads(self, count: int) -> None:
        self.threads = count
        self.switches.append(count)

    def steps(self, tuner: ThreadTuner, n: int) -> None:
        for _ in range(n):
            self.train_s += self.cost[self.threads]
            tuner.on_batch_end(self)


def _tuner(run: FakeRun, **kwargs) -> ThreadTuner:
    tuner = ThreadTuner(max(run.cost), clock=lambda t: t.train_s, set_threads=run.set_threads, **kwargs)
    tuner.on_start(run, {})
    return tuner


def test_candidates_are_all_half_and_one():
    assert candidate_threads(2) == [2, 1] and candidate_threads(16) == [16, 8, 1] and candidate_threads(1) == [1]
    with pytest.raises(ValueError, match="most must be a thread count >= 1, got 0"):
        ThreadTuner(0)


def test_keeps_all_threads_when_they_are_fastest_and_probes_ever_less_often():
    run = FakeRun({2: 0.01, 1: 0.018})  # an idle machine: two threads are faster
    tuner = _tuner(run, probe_steps=3, period_s=1.0, max_period_s=4.0)
    run.steps(tuner, 2000)
    assert tuner.chosen == 2 and run.threads == 2
    # probes at 0.0, then after 2, 4, 4, ... seconds of steps: the period doubled up to its cap
    starts = [t for t, _ in tuner.history]
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(starts)]
    assert gaps[:3] == pytest.approx([2.1, 4.1, 4.1], abs=0.15) and set(c for _, c in tuner.history) == {2}
    # each probe costs 1 + 3 steps at one thread: a few percent of an idle run at this cap
    slow_steps = sum(1 for c in run.switches if c == 1) * 4
    assert slow_steps / 2000 < 0.05


def test_drops_to_one_thread_beside_other_work_and_back_when_it_ends():
    run = FakeRun({2: 0.01, 1: 0.018})
    tuner = _tuner(run, probe_steps=3, period_s=1.0, max_period_s=100.0)
    run.steps(tuner, 300)
    assert tuner.chosen == 2
    run.cost = {2: 0.09, 1: 0.02}  # other work starts: the barrier of two threads waits out its time slices
    run.steps(tuner, 20)  # the slow-down is seen within a few steps, not after the 100 s period
    assert tuner.chosen == 1 and run.threads == 1
    run.cost = {2: 0.01, 1: 0.018}  # and ends: the next probe (after the period) goes back to two
    run.steps(tuner, 400)
    assert tuner.chosen == 2 and run.threads == 2


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("def f(x):\n    return x * 2 + 1\n" * 60)
    return path


class Watch(Callback):
    def __init__(self) -> None:
        self.threads: list[int] = []

    def on_batch_end(self, trainer) -> None:
        self.threads.append(torch.get_num_threads())


def test_a_run_that_switches_threads_trains_to_the_same_bits_and_gives_the_count_back(corpus, tmp_path, monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        fixed = train(LMTask(fixed_config(corpus, 12)), tmp_path / "fixed", plots=False)
        torch.set_num_threads(2)
        watch = Watch()
        # a tuner that probes at every chance: the run goes back and forth between 2 threads and 1
        monkeypatch.setattr("rnnkit.train.ThreadTuner", functools.partial(ThreadTuner, probe_steps=1, period_s=0.0))
        switching = train(LMTask(fixed_config(corpus, 12)), tmp_path / "switching", plots=False, callbacks=[watch])
        assert set(watch.threads) == {1, 2} and torch.get_num_threads() == 2
        for a, b in zip(fixed.model.parameters(), switching.model.parameters(), strict=True):
            assert torch.equal(a, b)
        # a fixed --threads is kept for the run, then the count is given back
        watch.threads.clear()
        train(LMTask(fixed_config(corpus, 6, threads=3)), tmp_path / "three", plots=False, callbacks=[watch])
        assert set(watch.threads) == {3} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def fixed_config(corpus, steps: int, threads: int = 0) -> LMConfig:
    return LMConfig.from_dict({"model": {"hidden_size": 24, "embedding_size": 8},
                               "data": {"data": str(corpus), "val_fraction": 0.1},
                               "train": {"batch_size": 4, "bptt": 16, "max_steps": steps, "max_minutes": 0,
                                         "eval_every": 5, "log_every": 1, "checkpoint_every": 0,
                                         "threads": threads}})  # fmt: skip


def test_busy_load_runs_its_processes_until_the_block_ends():
    with busy_load(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
        assert all(os.path.exists(f"/proc/{p.pid}") for p in procs)
    assert all(p.returncode is not None for p in procs)
    with pytest.raises(ValueError, match="processes must be >= 0, got -1"), busy_load(-1):
        pass
