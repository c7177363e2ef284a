"""The ``[tensorboard]`` extra: a training run writes TensorBoard scalars, the same numbers as its metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from rnnkit.cli import main

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="needs the [tensorboard] extra: pip install 'rnnkit[tensorboard]'",
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_run_logs_its_metrics_to_tensorboard(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("def f(x):\n    return x * 2 + 1\n" * 40)
    run = tmp_path / "run"
    argv = ["train", "lm", "--data", str(text), "--out", str(run), "--max-steps", "6", "--max-minutes", "0",
            "--eval-every", "3", "--log-every", "1", "--hidden-size", "8", "--embedding-size", "4", "--bptt", "8",
            "--batch-size", "2"]  # fmt: skip
    assert main(argv) == 0
    events = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "bpc", "lr", "val_loss", "val_bpc"} <= tags, tags
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for tag in ("loss", "val_bpc"):
        logged = {e.step: e.value for e in events.Scalars(tag)}
        expected = {r["step"]: r[tag] for r in rows if tag in r}
        assert logged.keys() == expected.keys() and expected
        assert all(abs(logged[s] - v) <= 1e-6 * max(1.0, abs(v)) for s, v in expected.items()), (tag, logged, expected)
