"""Checkpoints: atomic writes, weights_only loading, RNG round trips, load_run, one clear error per bad input."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rnnkit.checkpoint import (
    FORMAT_VERSION,
    get_rng_state,
    load_checkpoint,
    load_run,
    save_checkpoint,
    set_rng_state,
)
from rnnkit.errors import CheckpointError
from rnnkit.tasks.language_model import LMConfig
from rnnkit.tasks.language_model import LMDataConfig as DataConfig
from rnnkit.tasks.language_model import LMModelConfig as ModelConfig
from rnnkit.tasks.language_model import LMTrainConfig as TrainConfig
from rnnkit.train import train_lm

pytestmark = pytest.mark.usefixtures("one_thread")


def test_save_load_round_trip_leaves_no_temp_files(tmp_path):
    payload = {"kind": "char_lm", "model": {"w": torch.arange(6.0)}, "cfg": {"a": None, "b": [1, 2.5, "x"]}}
    save_checkpoint(tmp_path / "c.pt", payload)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["format_version"] == FORMAT_VERSION and back["cfg"] == payload["cfg"]
    assert torch.equal(back["model"]["w"], payload["model"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_failed_save_keeps_the_old_file(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"kind": "char_lm", "step": 1})
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        save_checkpoint(tmp_path / "c.pt", {"kind": "char_lm", "step": 2, "bad": lambda: 0})
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint(tmp_path / "d.pt", {"step": 1})


class _Opaque:
    pass


def test_bad_checkpoints_are_one_clear_error(tmp_path):
    save_checkpoint(tmp_path / "good.pt", {"kind": "char_lm", "w": torch.randn(100)})
    raw = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save(torch.zeros(2), tmp_path / "tensor.pt")
    torch.save({"format_version": FORMAT_VERSION + 1, "kind": "char_lm"}, tmp_path / "newer.pt")
    torch.save({"format_version": 1, "kind": "classifier"}, tmp_path / "other.pt")
    torch.save({"format_version": 1, "kind": "char_lm", "x": _Opaque()}, tmp_path / "pickled.pt")
    cases = {
        "missing.pt": "no such checkpoint",
        "truncated.pt": "corrupt",
        "garbage.pt": "corrupt",
        "tensor.pt": "not an rnnkit checkpoint",
        "newer.pt": "newer than this rnnkit reads",
        "other.pt": "holds a 'classifier' model, expected 'lm'",
        "pickled.pt": "objects other than tensors",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as e:
            load_checkpoint(tmp_path / name, kind="lm")  # format 1's "char_lm" reads as "lm"
        assert name in str(e.value) and "\n" not in str(e.value)


def test_rng_state_round_trip():
    gen = torch.Generator().manual_seed(5)
    state = get_rng_state(gen)
    first = (torch.rand(4), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    set_rng_state(state, gen)
    again = (torch.rand(4), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    assert torch.equal(first[3], again[3])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    (folder / "text.txt").write_text("def f(x):\n    return x + 1\n" * 60)
    cfg = LMConfig(
        model=ModelConfig(mode="gru", embedding_size=8, hidden_size=16),
        data=DataConfig(data=str(folder / "text.txt"), val_fraction=0.2),
        train=TrainConfig(batch_size=4, bptt=8, max_steps=6, max_minutes=0, eval_every=3, log_every=2),
    )
    result = train_lm(cfg, folder / "run")
    return cfg, result


def test_load_run_gives_the_trained_model(tiny_run):
    cfg, result = tiny_run
    for which in ("best", "last"):
        run = load_run(result.run_dir, which)
        assert run.config == cfg and not run.model.training
        assert sorted(run.vocab.chars) == sorted(set("def f(x):\n    return x + 1\n") | {"\ufffd"})
        payload = load_checkpoint(result.run_dir / f"{which}.pt")
        for k, v in run.model.state_dict().items():
            assert torch.equal(v, payload["model"][k])
    assert load_run(result.run_dir, "last").step == 6
    assert load_run(result.run_dir).metrics["best_val_bpc"] == pytest.approx(result.best["bpc"])


def test_load_run_errors(tmp_path, tiny_run):
    with pytest.raises(CheckpointError, match="no such run folder"):
        load_run(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not an rnnkit run folder"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match="which"):
        load_run(tiny_run[1].run_dir, "first")
    (tmp_path / "last.pt").write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run(tmp_path)


def test_format_1_runs_load_but_do_not_resume(tiny_run, tmp_path):
    """A run written before tasks (kind "char_lm", the vocabulary at the top level) still samples and evaluates."""
    from rnnkit.errors import ConfigError

    cfg, result = tiny_run
    old = tmp_path / "old"
    old.mkdir()
    payload = load_checkpoint(result.run_dir / "best.pt")
    v1 = {key: value for key, value in payload.items() if key not in ("artefacts", "format_version")}
    v1 |= {"kind": "char_lm", "vocab": payload["artefacts"]["vocab"]}
    torch.save({**v1, "format_version": 1}, old / "last.pt")
    run = load_run(old)
    assert run.task.name == "lm" and run.vocab.chars == payload["artefacts"]["vocab"]
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, payload["model"][key])
    with pytest.raises(ConfigError, match="older rnnkit"):
        train_lm(cfg, old, resume=True)


def test_a_run_with_non_finite_weights_is_refused_in_one_line(tiny_run, tmp_path):
    _, result = tiny_run
    payload = load_checkpoint(result.run_dir / "best.pt")
    key = next(iter(payload["model"]))
    payload["model"][key] = payload["model"][key].clone().fill_(float("nan"))
    (tmp_path / "nan").mkdir()
    torch.save(payload, tmp_path / "nan" / "best.pt")  # save_checkpoint refuses it; an older rnnkit did not
    with pytest.raises(CheckpointError, match=f"non-finite weights .*first in {key}.*diverged") as e:
        load_run(tmp_path / "nan")
    assert "\n" not in str(e.value)
