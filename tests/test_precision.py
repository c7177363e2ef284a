"""``--precision fp32|bf16|auto``: what it resolves to where, its autocast, and the trainer under it: every task
trains a bf16 step with fp32 master weights, resumes bit-exactly in bf16, and ``rnnkit eval`` reproduces the
metrics training reported."""

from __future__ import annotations

import json
import logging
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rnnkit.precision
from conftest import one_error_line
from rnnkit.backends import available_backends
from rnnkit.cells import cell_spec
from rnnkit.checkpoint import load_checkpoint, load_run
from rnnkit.cli import main
from rnnkit.config import TrainConfig
from rnnkit.data.music import write_midi
from rnnkit.errors import ConfigError
from rnnkit.precision import at_least_fp32, autocast, bf16_supported, precision_name, resolve_precision
from rnnkit.recurrent import MODES
from rnnkit.tasks import (
    TASKS,
    ClassifyConfig,
    ClassifyTask,
    CTCConfig,
    CTCTask,
    ForecastConfig,
    ForecastTask,
    LMConfig,
    LMTask,
    MusicConfig,
    MusicTask,
    Seq2SeqConfig,
    Seq2SeqTask,
)
from rnnkit.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with bf16 instructions, whatever this machine has (autocast itself runs bf16 on any CPU)."""
    monkeypatch.setattr(rnnkit.precision, "bf16_supported", lambda device: True)


# --- resolving ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx512_bf16": True}, True),
        ({"amx_bf16": True, "avx512_bf16": False}, True),
        ({"avx512_f": True, "avx512_bw": True, "avx512_vl": True, "avx512_dq": True}, False),  # emulated bf16
        ({"architecture": "arm64", "bf16": True}, False),
        ({}, False),
    ],
)
def test_bf16_support_is_avx512_bf16_or_amx(monkeypatch, flags, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    assert bf16_supported(CPU) is expected
    assert bf16_supported("cpu") is expected


@pytest.mark.parametrize(
    ("name", "supported", "expected"),
    [
        ("fp32", True, torch.float32),
        ("fp32", False, torch.float32),
        ("bf16", True, torch.bfloat16),
        ("auto", True, torch.bfloat16),
        ("auto", False, torch.float32),
    ],
)
def test_resolve_precision(monkeypatch, caplog, name, supported, expected):
    monkeypatch.setattr(rnnkit.precision, "bf16_supported", lambda device: supported)
    with caplog.at_level(logging.INFO, logger="rnnkit.precision"):
        assert resolve_precision(name, CPU) == expected
    lines = [r for r in caplog.records if r.name == "rnnkit.precision"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO  # asked, resolved and why, in one line
    assert f"precision {precision_name(expected)} (asked {name})" in lines[0].getMessage()


def test_bf16_on_a_cpu_without_bf16_is_one_warning_and_fp32(monkeypatch, caplog):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_f": True})
    with caplog.at_level(logging.INFO, logger="rnnkit.precision"):
        assert resolve_precision("bf16", CPU) == torch.float32
    lines = [r for r in caplog.records if r.name == "rnnkit.precision"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert lines[0].getMessage() == (
        "precision bf16 asked, but the CPU has no avx512_bf16 or AMX instructions: running in fp32"
    )


def test_unknown_precisions_and_dtypes_are_errors():
    with pytest.raises(ValueError, match=r"precision must be one of fp32, bf16, auto, got 'fp16'"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match=r"dtype must be torch.float32 or torch.bfloat16, got torch.float16"):
        autocast(torch.float16, CPU)


def test_autocast_is_bf16_matmuls_or_nothing():
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    with autocast(torch.float32, CPU):
        assert F.linear(x, w).dtype == torch.float32
    with autocast(torch.bfloat16, "cpu"):
        assert F.linear(x, w).dtype == torch.bfloat16
    assert F.linear(x, w).dtype == torch.float32  # and nothing is left behind


def test_losses_read_at_least_fp32():
    for dtype in (torch.bfloat16, torch.float16):
        assert at_least_fp32(torch.ones(2, dtype=dtype)).dtype == torch.float32
    for t in (torch.ones(2), torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.long)):
        assert at_least_fp32(t) is t  # fp32 is not copied, fp64 is not narrowed


# --- the config and the command line ----------------------------------------------------------------------------


def test_precision_is_a_train_field_fp32_by_default():
    assert TrainConfig().precision == "fp32"
    assert TrainConfig(precision="auto").precision == "auto"
    with pytest.raises(ConfigError, match=r"^precision must be one of fp32, bf16, auto, got 'fp16'$"):
        TrainConfig(precision="fp16")


def test_the_cli_flag_parses_and_a_bad_value_is_one_line(tmp_path, capsys):
    from rnnkit.cli import build_parser
    from rnnkit.cliargs import config_overrides

    args = build_parser().parse_args(["train", "classify", "--data", "x.tsv", "--precision", "bf16"])
    assert config_overrides(args, ClassifyConfig)["train"] == {"precision": "bf16"}
    status = main(["train", "lm", "--precision", "fp16", "--out", str(tmp_path / "r"), "--max-steps", "1"])
    line = one_error_line(capsys, status)
    assert line == "rnnkit: error: precision must be one of fp32, bf16, auto, got 'fp16'"
    assert not (tmp_path / "r").exists()


# --- every task under bf16 --------------------------------------------------------------------------------------

TRAIN = {"batch_size": 8, "max_steps": 6, "max_minutes": 0, "eval_every": 3, "log_every": 1, "warmup_steps": 2,
         "precision": "bf16"}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("precision")
    (d / "lm.txt").write_text("def f(x):\n    return x * 2 + 1\n" * 40)
    rng = random.Random(0)
    rows = ["".join(rng.choice("abc") for _ in range(rng.randint(3, 14))) for _ in range(120)]
    (d / "classify.tsv").write_text("text\tlabel\n" + "".join(f"{s}\t{'yes' if 'ab' in s else 'no'}\n" for s in rows))
    noise = np.random.default_rng(0).normal(0, 0.1, (4, 30))
    series = [f"s{i},{t},{10 + np.sin(t / 2 + i) + noise[i, t]:.4f}" for i in range(4) for t in range(30)]
    (d / "series.csv").write_text("id,time,value\n" + "\n".join(series) + "\n")
    words = ["abc", "bca", "cab", "abcd", "dcab", "bd", "db", "cc", "ad", "da"]
    (d / "pairs.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in words * 4))
    g = np.random.default_rng(0)
    np.savez(d / "features.npz", X=g.normal(size=(40, 16, 5)).astype(np.float32), lengths=g.integers(8, 17, 40),
             targets=np.array(["ab", "ba", "abc", "c"] * 10))  # fmt: skip
    (d / "music").mkdir()
    for k, frames in enumerate(np.random.default_rng(0).random((5, 12, 6)) < 0.3):
        frames[-1, 0] = True
        (d / "music" / f"piece{k}.mid").write_bytes(write_midi(frames, 4, low=60))
    return d


def _task(name: str, data, mode: str = "gru", backend: str = "auto", **train_options):
    """A tiny task of each kind, with dropout (so resume must restore the RNG), on the default backend (auto: the
    fused kernels for GRU); ``mode`` and ``backend`` are the classifier's."""
    t = TRAIN | train_options
    if name == "lm":
        m = {"mode": "lstm", "embedding_size": 6, "hidden_size": 12, "num_layers": 2, "dropout": 0.2}
        d = {"data": str(data / "lm.txt"), "val_fraction": 0.1}
        return LMTask(LMConfig.from_dict({"model": m, "data": d, "train": t | {"bptt": 10}}))
    if name == "classify":
        m = {"mode": mode, "backend": backend, "hidden_size": 12, "embedding_size": 6, "head_size": 8, "dropout": 0.2}
        d = {"data": str(data / "classify.tsv")}
        return ClassifyTask(ClassifyConfig.from_dict({"model": m, "data": d, "train": t}))
    if name == "forecast":
        m = {"mode": "lstm", "hidden_size": 12, "num_layers": 2, "dropout": 0.2, "num_samples": 8}
        d = {"data": str(data / "series.csv"), "horizon": 4, "season_length": 6, "eval_samples": 8}
        return ForecastTask(ForecastConfig.from_dict({"model": m, "data": d, "train": t}))
    if name == "ctc":
        m = {"hidden_size": 8, "num_layers": 2, "dropout": 0.2, "subsample": 2}
        d = {"data": str(data / "features.npz"), "val_fraction": 0.2, "specaugment": True}
        return CTCTask(CTCConfig.from_dict({"model": m, "data": d, "train": t}))
    if name == "music":
        m = {"hidden_size": 8, "nade_size": 4, "dropout": 0.2, "num_layers": 2}
        d = {"data": [str(data / "music")], "val_fraction": 0.3, "seq_len": 8}
        return MusicTask(MusicConfig.from_dict({"model": m, "data": d, "train": t | {"batch_size": 2}}))
    m = {"hidden_size": 8, "embedding_size": 4, "dropout": 0.2}
    d = {"data": str(data / "pairs.tsv"), "val_fraction": 0.2}
    return Seq2SeqTask(Seq2SeqConfig.from_dict({"model": m, "data": d, "train": t}))


def _float_tensors(tree, where="") -> list[tuple[str, torch.Tensor]]:
    """Every floating-point tensor of a checkpoint payload, with its path."""
    if isinstance(tree, torch.Tensor):
        return [(where, tree)] if tree.is_floating_point() else []
    if isinstance(tree, dict):
        return [x for k, v in tree.items() for x in _float_tensors(v, f"{where}/{k}")]
    if isinstance(tree, (list, tuple)):
        return [x for i, v in enumerate(tree) for x in _float_tensors(v, f"{where}/{i}")]
    return []


def _watch(task, seen: list) -> None:
    """Record, for each training loss and evaluation, whether it ran under bf16 autocast (and the loss's dtype)."""
    loss, evaluate = task.loss, task.evaluate

    def bf16() -> bool:
        return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16

    def watched_loss(*args):
        out = loss(*args)
        seen.append(("loss", bf16(), out[0].dtype))
        return out

    def watched_evaluate(*args):
        seen.append(("evaluate", bf16(), None))
        return evaluate(*args)

    task.loss, task.evaluate = watched_loss, watched_evaluate


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize(  # the fused kernels' bf16 paths in make test; auto and the loop in the slow tier
    "backend", [pytest.param("auto", marks=pytest.mark.slow), "fused", pytest.param("loop", marks=pytest.mark.slow)]
)
def test_every_cell_trains_in_bf16(mode, backend, data, tmp_path, bf16_cpu):
    """Every cell, on each backend that runs it, trains under bf16 autocast: finite losses, fp32 weights."""
    if backend != "auto" and backend not in available_backends(cell_spec(mode)):
        pytest.skip(f"{mode} has no {backend} backend")
    task = _task("classify", data, mode=mode, backend=backend)
    events = []
    result = train(task, tmp_path / "run", on_event=events.append, plots=False)
    losses = [e["loss"] for e in events if e["kind"] == "step"]
    assert result.precision == "bf16" and len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_trains_in_bf16_with_fp32_master_weights_and_resumes_bit_exactly(name, data, tmp_path, bf16_cpu):
    assert set(TASKS) == {"lm", "classify", "forecast", "seq2seq", "ctc", "music"}  # a new task joins in _task
    task, seen, events = _task(name, data), [], []
    _watch(task, seen)
    straight = train(task, tmp_path / "straight", on_event=events.append)
    # every forward ran under bf16 autocast, and every loss came out fp32
    assert [s for s in seen if s[0] == "loss"] == [("loss", True, torch.float32)] * 6
    assert [s for s in seen if s[0] == "evaluate"] == [("evaluate", True, None)] * 2
    losses = [e["loss"] for e in events if e["kind"] == "step"]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert all(math.isfinite(v) for v in straight.last.values())
    # the master weights, the optimiser's state, the carried state and the checkpoint are fp32
    assert straight.precision == "bf16" and events[0]["precision"] == "bf16"
    assert json.loads((tmp_path / "straight" / "summary.json").read_text())["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in straight.model.parameters())
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    assert a["precision"] == "bf16" and a["config"]["train"]["precision"] == "bf16"
    tensors = _float_tensors({k: a[k] for k in ("model", "optimizer", "stream_state")})
    assert tensors and {t.dtype for _, t in tensors} == {torch.float32}, [(k, t.dtype) for k, t in tensors]

    def interrupt(event):
        if event["kind"] == "step" and event["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_task(name, data), tmp_path / "resumed", on_event=interrupt, plots=False)
    resumed = train(_task(name, data), tmp_path / "resumed", resume=True, plots=False)
    assert resumed.steps == 6 and resumed.last == straight.last and resumed.best == straight.best
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for k, state in a["optimizer"]["state"].items():
        assert all(torch.equal(state[n], b["optimizer"]["state"][k][n]) for n in state), k


def test_resuming_in_another_precision_warns(data, tmp_path, bf16_cpu, caplog):
    train(_task("lm", data, precision="fp32", max_steps=3), tmp_path / "r", plots=False)
    with caplog.at_level(logging.WARNING, logger="rnnkit.train"):
        result = train(_task("lm", data, max_steps=5), tmp_path / "r", resume=True, plots=False)
    assert result.steps == 5 and result.precision == "bf16"
    assert any("resuming in bf16 a run trained so far in fp32" in r.getMessage() for r in caplog.records)


def test_rnnkit_eval_reproduces_the_validation_loss_of_a_bf16_run(data, tmp_path, bf16_cpu, capsys):
    """eval runs under the run's precision: the loss training reported, not the (different) fp32 one."""
    from rnnkit.metrics import evaluate_text

    cfg = _task("lm", data).config
    result = train(LMTask(cfg), tmp_path / "run")
    val_text = (data / "lm.txt").read_text()[-int(len((data / "lm.txt").read_text()) * 0.1) :]
    (tmp_path / "val.txt").write_text(val_text)
    argv = ["eval", "--run", str(tmp_path / "run"), "--data", str(tmp_path / "val.txt"), "--json", "--batch-size",
            str(cfg.train.batch_size)]  # fmt: skip
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["loss"] == pytest.approx(result.best["loss"], rel=1e-6)
    run = load_run(tmp_path / "run", "best")
    fp32 = evaluate_text(run.model, run.vocab, val_text, batch_size=cfg.train.batch_size, bptt=cfg.train.bptt)
    assert fp32["loss"] != pytest.approx(got["loss"], rel=1e-6)  # so the test above can tell the two apart
