"""Configuration of a character-level language-model run: three frozen dataclasses and their union.

Every field carries ``metadata={"help": ...}`` with its units: the CLI generates one flag per field
(``hidden_size`` -> ``--hidden-size``), so field names are unique across ``ModelConfig``, ``DataConfig`` and
``TrainConfig``. Validation lives in ``__post_init__``, so ``dataclasses.replace`` re-validates; a bad value
raises ``ConfigError`` naming the field, the expected range and the received value.

    >>> cfg = LMConfig.from_dict({"model": {"hidden_size": 64}, "train": {"max_steps": 100}})
    >>> cfg.model.hidden_size, cfg.train.max_steps
    (64, 100)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from rnnkit.errors import ConfigError

__all__ = ["DataConfig", "LMConfig", "ModelConfig", "TrainConfig"]

MODES = ("lstm", "gru", "elman")
BACKENDS = ("auto", "loop", "native", "fused")
INITS = ("torch", "orthogonal")
OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_float(name: str, value: object, low: float, high: float, *, low_open=False, high_open=False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ConfigError(f"{name} must be a number in {lo}{low}, {high}{hi}, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Embedding -> rnnkit.RNN -> dropout -> linear head (``rnnkit.tasks.language_model.CharLM``)."""

    mode: str = field(default="lstm", metadata={"help": "recurrent cell: lstm, gru or elman"})
    embedding_size: int = field(default=64, metadata={"help": "character embedding width (units)"})
    hidden_size: int = field(default=384, metadata={"help": "hidden state width per layer (units)"})
    num_layers: int = field(default=1, metadata={"help": "stacked recurrent layers (count)"})
    dropout: float = field(
        default=0.0, metadata={"help": "dropout probability between layers and before the head, in [0, 1)"}
    )
    tie_weights: bool = field(
        default=False,
        metadata={
            "help": "share the embedding and head weights (Press & Wolf 2016); needs embedding_size == hidden_size"
        },
    )
    backend: str = field(default="auto", metadata={"help": "RNN implementation: auto, loop, native or fused"})
    init: str = field(
        default="torch",
        metadata={"help": "initialisation: torch (uniform) or orthogonal (orthogonal W_hh, LSTM forget bias 1)"},
    )

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, MODES)
        _check_int("embedding_size", self.embedding_size, 1)
        _check_int("hidden_size", self.hidden_size, 1)
        _check_int("num_layers", self.num_layers, 1)
        _check_float("dropout", self.dropout, 0.0, 1.0, high_open=True)
        if not isinstance(self.tie_weights, bool):
            raise ConfigError(f"tie_weights must be true or false, got {self.tie_weights!r}")
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise ConfigError(
                "tie_weights needs embedding_size == hidden_size, "
                f"got embedding_size={self.embedding_size}, hidden_size={self.hidden_size}"
            )
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("init", self.init, INITS)


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it is split."""

    data: str | None = field(
        default=None,
        metadata={"help": "UTF-8 text file to train on (path); default: the Python standard library source"},
    )
    val_fraction: float = field(
        default=0.05, metadata={"help": "fraction of the text held out, from its end, for validation, in (0, 0.5]"}
    )
    max_chars: int = field(
        default=10_000_000, metadata={"help": "use at most this many characters of the text (chars, 0 = all)"}
    )

    def __post_init__(self) -> None:
        if self.data is not None and (not isinstance(self.data, str) or not self.data):
            raise ConfigError(f"data must be a non-empty file path or unset, got {self.data!r}")
        _check_float("val_fraction", self.val_fraction, 0.0, 0.5, low_open=True)
        _check_int("max_chars", self.max_chars, 0)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop: batches, optimiser, schedule, budgets, evaluation and checkpoints.

    At least one budget must be set. With ``max_steps`` the warmup + cosine schedule runs over the steps; with
    only ``max_minutes`` it runs over the wall-clock budget (the cosine's progress is elapsed / budget).
    """

    batch_size: int = field(default=32, metadata={"help": "rows of the batch, each a contiguous text stream (count)"})
    bptt: int = field(default=128, metadata={"help": "truncated-BPTT chunk length (time steps = chars)"})
    optimizer: str = field(default="adamw", metadata={"help": "optimiser: adamw or sgd"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (after warmup)"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay (AdamW) or L2 (SGD), >= 0"})
    warmup_steps: int = field(default=50, metadata={"help": "linear learning-rate warmup (steps)"})
    min_lr_ratio: float = field(
        default=0.1, metadata={"help": "final learning rate of the cosine as a fraction of lr, in [0, 1]"}
    )
    clip: float = field(default=1.0, metadata={"help": "max global gradient norm (0 = no clipping)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimiser steps (steps, 0 = no limit)"})
    max_minutes: float = field(
        default=5.0, metadata={"help": "stop after this much training time (minutes, 0 = no limit)"}
    )
    eval_every: int = field(default=200, metadata={"help": "validate every this many steps (steps)"})
    eval_chars: int = field(
        default=100_000, metadata={"help": "validate on at most this many held-out characters (chars, 0 = all)"}
    )
    patience: int = field(
        default=0, metadata={"help": "stop after this many evaluations without improvement (evals, 0 = off)"}
    )
    checkpoint_every: int = field(
        default=500, metadata={"help": "write last.pt every this many steps (steps, 0 = only at evals and the end)"}
    )
    seed: int = field(default=0, metadata={"help": "seed for parameters, dropout and data (integer)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu or cuda"})
    log_every: int = field(default=20, metadata={"help": "report training loss every this many steps (steps)"})

    def __post_init__(self) -> None:
        _check_int("batch_size", self.batch_size, 1)
        _check_int("bptt", self.bptt, 1)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_float("lr", self.lr, 0.0, math.inf, low_open=True, high_open=True)
        _check_float("weight_decay", self.weight_decay, 0.0, math.inf, high_open=True)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_float("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_float("clip", self.clip, 0.0, math.inf, high_open=True)
        _check_int("max_steps", self.max_steps, 0)
        _check_float("max_minutes", self.max_minutes, 0.0, math.inf, high_open=True)
        if self.max_steps == 0 and self.max_minutes == 0:
            raise ConfigError("max_steps or max_minutes must be > 0 (a step or time budget), got both 0")
        _check_int("eval_every", self.eval_every, 1)
        _check_int("eval_chars", self.eval_chars, 0)
        _check_int("patience", self.patience, 0)
        _check_int("checkpoint_every", self.checkpoint_every, 0)
        _check_int("seed", self.seed, 0)
        _check_choice("device", self.device, DEVICES)
        _check_int("log_every", self.log_every, 1)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


@dataclass(frozen=True)
class LMConfig:
    """The whole run: ``model``, ``data`` and ``train`` sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict {"model": {...}, "data": {...}, "train": {...}} (JSON- and TOML-ready but for None)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LMConfig:
        """Inverse of ``to_dict``; missing keys take their defaults, unknown sections or keys are a ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a table/dict of sections, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section {unknown[0]!r} (expected one of {', '.join(_SECTIONS)})")
        sections = {}
        for name, section_cls in _SECTIONS.items():
            values = d.get(name, {})
            if not isinstance(values, dict):
                raise ConfigError(f"config section {name!r} must be a table/dict, got {type(values).__name__}")
            known = {f.name for f in dataclasses.fields(section_cls)}
            bad = sorted(set(values) - known)
            if bad:
                raise ConfigError(f"unknown config key {bad[0]!r} in section {name!r}")
            sections[name] = section_cls(**values)
        return cls(**sections)


def section_of(key: str) -> str:
    """The section ("model", "data" or "train") that holds field ``key`` (names are unique across sections)."""
    for name, section_cls in _SECTIONS.items():
        if key in {f.name for f in dataclasses.fields(section_cls)}:
            return name
    raise ConfigError(f"unknown config key {key!r}")
