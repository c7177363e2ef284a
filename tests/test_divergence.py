"""The divergence policy (rnnkit.callbacks.DivergenceGuard): a non-finite or exploding loss, or exploding weights,
stop every task's run in one line, and nothing non-finite is ever saved or resumed from."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import one_error_line
from rnnkit.callbacks import DIVERGENCE_STEPS, DivergenceGuard, explosion_threshold
from rnnkit.checkpoint import load_checkpoint, non_finite, save_checkpoint
from rnnkit.cli import main
from rnnkit.errors import CheckpointError, DivergenceError
from rnnkit.train import RunState

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("diverge")
    rng = np.random.default_rng(0)
    files = {"lm": d / "text.txt", "classify": d / "d.tsv", "forecast": d / "s.csv", "seq2seq": d / "pairs.tsv"}
    files["lm"].write_text("def f(x):\n    return x + 1\n" * 40)
    files["classify"].write_text("".join(f"{'ab' * (1 + i % 4)}{'cd'[i % 2]}\t{i % 2}\n" for i in range(80)))
    rows = [f"s{i},{t},{10 + np.sin(t / 2 + i) + rng.normal(0, 0.1):.4f}" for i in range(3) for t in range(30)]
    files["forecast"].write_text("id,time,value\n" + "\n".join(rows) + "\n")
    files["seq2seq"].write_text("".join(f"{w}\t{w[::-1]}\n" for w in ("abc", "bca", "cab", "abcd", "dcab", "bd") * 5))
    return files


EXTRA = {
    "lm": ["--embedding-size", "4", "--batch-size", "2", "--bptt", "8"],
    # without the n-gram bag: this model's SGD run reaches the gradient-norm check before a non-finite loss
    "classify": ["--embedding-size", "4", "--head-size", "4", "--ngrams", "0"],
    "forecast": ["--horizon", "2", "--num-samples", "4", "--eval-samples", "4"],
    "seq2seq": ["--embedding-size", "4"],
}


def _argv(task: str, data: dict[str, Path], out: Path, *flags: str) -> list[str]:
    return ["train", task, "--data", str(data[task]), "--out", str(out), "--max-minutes", "0", "--hidden-size", "8",
            *EXTRA[task], *flags]  # fmt: skip


@pytest.mark.parametrize(
    ("task", "optimizer", "why"),
    [
        ("lm", ["--optimizer", "adamw"], "the validation loss is"),  # exploding validation loss
        ("classify", ["--optimizer", "sgd", "--clip", "0"], "the gradient norm became"),  # before the step
        ("forecast", ["--optimizer", "adamw"], "the weights' norm grew"),  # the NLL hides it; the weights do not
        ("seq2seq", ["--optimizer", "sgd", "--clip", "0"], "the validation loss is"),
    ],
)
def test_a_diverging_run_stops_in_one_line_and_saves_nothing_non_finite(task, optimizer, why, data, tmp_path, capsys):
    run = tmp_path / "run"
    argv = _argv(task, data, run, "--lr", "1e6", "--max-steps", "30", "--eval-every", "5", "--checkpoint-every", "1",
                 *optimizer)  # fmt: skip
    line = one_error_line(capsys, main(argv))
    assert "training diverged" in line and why in line, line
    assert not (run / "summary.json").exists()
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            payload = load_checkpoint(run / name)
            assert non_finite(payload["model"]) is None and non_finite(payload["optimizer"]) is None


def test_a_normal_run_with_an_early_spike_is_not_stopped():
    """A training loss far above the threshold for fewer than DIVERGENCE_STEPS steps in a row does not stop a run;
    that many in a row does; a NaN stops it at once."""
    trainer = SimpleNamespace(state=RunState())
    guard = DivergenceGuard()
    guard.check_step(trainer, 0.7, 1.0, 1e-3)  # the reference: the first training loss
    limit = explosion_threshold(0.7)
    assert limit == pytest.approx(100.7)
    for _ in range(3):
        for _ in range(DIVERGENCE_STEPS - 1):
            guard.check_step(trainer, 1e4, 1.0, 1e-3)  # a spike, and another, ...
        guard.check_step(trainer, 0.5, 1.0, 1e-3)  # ... each ended by a sane step
    with pytest.raises(DivergenceError, match=f"stayed above 100.7 .* for {DIVERGENCE_STEPS} steps"):
        for _ in range(DIVERGENCE_STEPS):
            guard.check_step(trainer, 1e4, 1.0, 1e-3)
    with pytest.raises(DivergenceError, match="the gradient norm became inf"):
        guard.check_step(SimpleNamespace(state=RunState()), 1.0, math.inf, 1e-3)
    # a negative reference (a forecaster's NLL) scales by max(|ref|, 1): -2 + 100 * 2
    assert explosion_threshold(-2.0) == pytest.approx(198.0)


def test_non_finite_weights_are_never_saved_nor_resumed(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_argv("lm", data, run, "--max-steps", "2", "--eval-every", "2")) == 0
    payload = load_checkpoint(run / "last.pt")
    before = (run / "last.pt").read_bytes()
    key = next(iter(payload["model"]))
    payload["model"][key] = payload["model"][key].clone().fill_(float("nan"))
    with pytest.raises(DivergenceError, match=f"not written: .*NaN or inf \\(first in {key}\\)"):
        save_checkpoint(run / "last.pt", payload)
    assert (run / "last.pt").read_bytes() == before
    # a NaN checkpoint written by an older rnnkit (or by hand) is refused on resume, in one line
    torch.save({**payload, "format_version": 2}, run / "last.pt")
    capsys.readouterr()
    line = one_error_line(capsys, main([*_argv("lm", data, run, "--max-steps", "4", "--eval-every", "2"), "--resume"]))
    assert "cannot resume" in line and "non-finite" in line and key in line
    with pytest.raises(CheckpointError):
        from rnnkit.checkpoint import load_run

        load_run(run, "last")
