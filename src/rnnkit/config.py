"""Configuration shared by every task: value checks, the trainer's section, and the run-config base class.

A task's configuration is a frozen dataclass of sections (``model``, ``data``, ``train``), each itself a frozen
dataclass whose fields carry ``metadata={"help": ...}`` with their units. The CLI generates one flag per field
(``hidden_size`` -> ``--hidden-size``), so field names are unique across a task's sections. Validation lives in
``__post_init__``, so ``dataclasses.replace`` re-validates; a bad value raises ``ConfigError`` naming the field,
the expected range and the received value.

    >>> from rnnkit.tasks.language_model import LMConfig
    >>> cfg = LMConfig.from_dict({"model": {"hidden_size": 64}, "train": {"max_steps": 100}})
    >>> cfg.model.hidden_size, cfg.train.max_steps
    (64, 100)
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rnnkit.backends import backends_for
from rnnkit.cells import cell_spec
from rnnkit.errors import ConfigError
from rnnkit.init import INITS
from rnnkit.precision import PRECISIONS
from rnnkit.recurrent import BACKENDS, MODES

__all__ = [
    "BACKENDS",
    "DEVICES",
    "INITS",
    "MODES",
    "OPTIMIZERS",
    "PRECISIONS",
    "RecurrentConfig",
    "Regularisers",
    "RunConfig",
    "TrainConfig",
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_recurrent",
    "recurrent_field",
]

OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
MAX_INT = 2**62  # far above any real size or seed; keeps values inside int64 and torch's seed range


def check_int(name: str, value: object, low: int, high: int = MAX_INT) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        bound = f">= {low}" if high == MAX_INT else f"in [{low}, {high}]"
        raise ConfigError(f"{name} must be an integer {bound}, got {value!r}")


def check_float(name: str, value: object, low: float, high: float, *, low_open=False, high_open=False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ConfigError(f"{name} must be a number in {lo}{low}, {high}{hi}, got {value!r}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")


def check_recurrent(config: Any, max_size: int = 2**20) -> None:
    """The checks every task's model section shares: ``mode``, ``embedding_size``, ``hidden_size``, ``num_layers``,
    ``dropout``, ``backend`` and ``init`` (sizes far beyond any real model are a typo, not a request for terabytes)."""
    check_choice("mode", config.mode, MODES)
    if hasattr(config, "embedding_size"):  # a task without token inputs (forecasting) has none
        check_int("embedding_size", config.embedding_size, 1, max_size)
    check_int("hidden_size", config.hidden_size, 1, max_size)
    check_int("num_layers", config.num_layers, 1, 1024)
    check_float("dropout", config.dropout, 0.0, 1.0, high_open=True)
    check_choice("backend", config.backend, BACKENDS)
    check_choice("init", config.init, INITS)
    if config.init == "orthogonal" and cell_spec(config.mode).recurrent_weight is None:
        raise ConfigError(f"init orthogonal needs a cell with recurrent weights, and mode {config.mode!r} has none")
    if isinstance(config, Regularisers):
        for name in ("zoneout", "weight_drop", "dropout_input", "dropout_output"):
            check_float(name, getattr(config, name), 0.0, 1.0, high_open=True)
        check_bool("locked_dropout", config.locked_dropout)
        if config.weight_drop > 0 and cell_spec(config.mode).recurrent_weight is None:
            raise ConfigError(f"weight_drop needs a cell with recurrent weights, and mode {config.mode!r} has none")
        if config.backend != "auto":
            locked = config.locked_dropout and config.dropout > 0
            usable = backends_for(cell_spec(config.mode), config.zoneout > 0, locked, config.num_layers)
            if config.backend not in usable:
                why = " with zoneout" if config.zoneout > 0 else " with locked dropout between layers" if locked else ""
                choices = ", ".join(("auto", *usable))
                what = f"mode {config.mode!r}{why}"
                raise ConfigError(f"backend {config.backend} cannot run {what}; use one of {choices}")


@dataclass(frozen=True)
class Regularisers:
    """The recurrent regularisers every task's model section has (all off by default); see ``rnnkit.RNN``."""

    zoneout: float = field(
        default=0.0,
        metadata={"help": "zoneout on h and c: chance a unit keeps its previous value (Krueger et al. 2016), [0, 1)"},
    )
    weight_drop: float = field(
        default=0.0, metadata={"help": "DropConnect on the recurrent weights, one mask per batch (AWD-LSTM), [0, 1)"}
    )
    dropout_input: float = field(
        default=0.0, metadata={"help": "locked dropout on the recurrence's input, one mask per sequence, [0, 1)"}
    )
    dropout_output: float = field(
        default=0.0, metadata={"help": "locked dropout on the recurrence's output, one mask per sequence, [0, 1)"}
    )
    locked_dropout: bool = field(
        default=False, metadata={"help": "between layers, one dropout mask per sequence instead of one per step"}
    )

    def rnn_options(self) -> dict[str, Any]:
        """The keyword arguments of ``rnnkit.RNN`` these fields set."""
        names = ("zoneout", "weight_drop", "dropout_input", "dropout_output", "locked_dropout")
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class RecurrentConfig(Regularisers):
    """The recurrent fields of every task's model section, checked by ``check_recurrent``.

    A task's section inherits them and redeclares only those whose default (or help) differs, with
    ``recurrent_field``; dataclass fields keep their first position, so every section lists the regularisers, then
    these six, then its own fields:

        @dataclass(frozen=True)
        class ForecastModelConfig(RecurrentConfig):
            hidden_size: int = recurrent_field("hidden_size", 64)
            head: str = field(default="studentt", metadata={"help": ...})
    """

    mode: str = field(default="lstm", metadata={"help": "recurrent cell: " + ", ".join(MODES)})
    hidden_size: int = field(default=128, metadata={"help": "hidden state width per layer (units)"})
    num_layers: int = field(default=1, metadata={"help": "stacked recurrent layers (count)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout between layers, in [0, 1)"})
    backend: str = field(default="auto", metadata={"help": "RNN implementation: auto, loop, native or fused"})
    init: str = field(
        default="torch",
        metadata={"help": "initialisation: torch (uniform) or orthogonal (orthogonal W_hh, LSTM forget bias 1)"},
    )

    def __post_init__(self) -> None:
        check_recurrent(self)


def recurrent_field(name: str, default: Any, help: str | None = None) -> Any:
    """A ``RecurrentConfig`` field redeclared with another default, and its help unless ``help`` is given."""
    base = RecurrentConfig.__dataclass_fields__[name]
    return field(default=default, metadata={"help": base.metadata["help"] if help is None else help})


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop every task shares: batches, optimiser, schedule, budgets, evaluation, checkpoints.

    At least one budget must be set. ``max_epochs`` is a step budget of ceil(max_epochs x batches per epoch) steps
    (the smaller of the two when ``max_steps`` is set too). With a step budget the warmup + cosine schedule runs over
    the steps; with only ``max_minutes`` it runs over the wall-clock budget (the cosine's progress is elapsed /
    budget).
    A task may extend it (the language model adds ``bptt`` and ``eval_chars``).
    """

    batch_size: int = field(default=32, metadata={"help": "examples (rows) per batch (count)"})
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
    max_epochs: float = field(
        default=0.0, metadata={"help": "stop after this many passes over the training batches (0 = no limit)"}
    )
    eval_every: int = field(default=200, metadata={"help": "validate every this many steps (steps)"})
    eval_time_share: float = field(
        default=0.1,
        metadata={"help": "when time is the only budget, also validate once this share of it has passed since the last "
                  "validation (fraction of --max-minutes, 0 = by steps only)"},
    )  # fmt: skip
    patience: int = field(
        default=0, metadata={"help": "stop after this many evaluations without improvement (evals, 0 = off)"}
    )
    checkpoint_every: int = field(
        default=500, metadata={"help": "write last.pt every this many steps (steps, 0 = only at evals and the end)"}
    )
    seed: int = field(default=0, metadata={"help": "seed for parameters, dropout and data order (integer)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu or cuda"})
    # fp32 by default until bf16 is measured to learn as well on each task (the LM's is "auto": see LMTrainConfig);
    # "auto" makes one config give different numbers on machines with and without bf16 instructions
    precision: str = field(
        default="fp32",
        metadata={"help": "arithmetic of each forward and loss: fp32, bf16 (autocast; the weights, optimiser and "
                  "checkpoints stay fp32) or auto (bf16 on a CPU with avx512_bf16 or AMX, or a bf16 GPU)"},
    )  # fmt: skip
    log_every: int = field(default=20, metadata={"help": "report training loss every this many steps (steps)"})
    threads: int = field(
        default=0,
        metadata={"help": "CPU threads of the training steps: 0 = chosen while training from the cores that are free "
                  "(all of them on an idle machine; fewer beside other work), N = always N"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, 1, 2**24)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_float("lr", self.lr, 0.0, math.inf, low_open=True, high_open=True)
        check_float("weight_decay", self.weight_decay, 0.0, math.inf, high_open=True)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_float("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_float("clip", self.clip, 0.0, math.inf, high_open=True)
        check_int("max_steps", self.max_steps, 0)
        check_float("max_minutes", self.max_minutes, 0.0, math.inf, high_open=True)
        check_float("max_epochs", self.max_epochs, 0.0, 1e9)
        if self.max_steps == 0 and self.max_minutes == 0 and self.max_epochs == 0:
            raise ConfigError(
                "max_steps, max_epochs or max_minutes must be > 0 (a step, epoch or time budget), got all 0"
            )
        check_int("eval_every", self.eval_every, 1)
        check_float("eval_time_share", self.eval_time_share, 0.0, 1.0)
        check_int("patience", self.patience, 0)
        check_int("checkpoint_every", self.checkpoint_every, 0)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_choice("device", self.device, DEVICES)
        check_choice("precision", self.precision, PRECISIONS)
        check_int("log_every", self.log_every, 1)
        check_int("threads", self.threads, 0, 1024)

    def eval_seconds(self) -> float:
        """Training seconds between evaluations by time (0: by steps only): ``eval_time_share`` of the budget when time
        is the run's only budget, so that a run slower than its ``eval_every`` expected (a loaded machine, a large
        model) is still judged often enough for early stopping and ``best.pt``. A run with a step or epoch budget is
        judged by steps only and stays repeatable."""
        if self.max_steps or self.max_epochs:
            return 0.0
        return 60.0 * self.max_minutes * self.eval_time_share


@dataclass(frozen=True)
class RunConfig:
    """Base of a task's whole configuration: a frozen dataclass whose fields are its sections.

    A subclass declares its sections as fields with dataclass types (``model: LMModelConfig = field(...)``);
    ``to_dict``/``from_dict`` and the CLI read them from there.
    """

    _sections_cache: ClassVar[dict[type, dict[str, type]]] = {}

    @classmethod
    def sections(cls) -> dict[str, type]:
        """{section name: section dataclass}, in declaration order."""
        if cls not in RunConfig._sections_cache:
            hints = typing.get_type_hints(cls)
            RunConfig._sections_cache[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        return RunConfig._sections_cache[cls]

    def __post_init__(self) -> None:
        for name, section_cls in self.sections().items():
            value = getattr(self, name)
            if not isinstance(value, section_cls):
                raise ConfigError(f"{name} must be a {section_cls.__name__}, got {type(value).__name__}")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict {"model": {...}, "data": {...}, "train": {...}} (JSON- and TOML-ready but for None)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in self.sections()}

    @classmethod
    def check_keys(cls, d: object, where: str = "") -> None:
        """ConfigError naming the first unknown section or key of ``d`` (a config read from a file or a dict)."""
        prefix = f"{where}: " if where else ""
        if not isinstance(d, dict):
            raise ConfigError(f"{prefix}config must be a table/dict of sections, got {type(d).__name__}")
        sections = cls.sections()
        for name, values in d.items():
            if name not in sections:
                raise ConfigError(f"{prefix}unknown config section {name!r} (expected one of {', '.join(sections)})")
            if not isinstance(values, dict):
                raise ConfigError(f"{prefix}config section {name!r} must be a table/dict, got {type(values).__name__}")
            known = {f.name for f in dataclasses.fields(sections[name])}
            bad = sorted(set(values) - known)
            if bad:
                raise ConfigError(f"{prefix}unknown config key {bad[0]!r} in section {name!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Inverse of ``to_dict``; missing keys take their defaults, unknown sections or keys are a ConfigError."""
        cls.check_keys(d)
        return cls(**{name: section_cls(**d.get(name, {})) for name, section_cls in cls.sections().items()})

    # {(section, key): value} for fields added after runs were saved without them, where the new default would build
    # another model than the one saved: a saved config lacking the key takes this value, which is what the run had
    SAVED_BEFORE: ClassVar[dict[tuple[str, str], Any]] = {}

    @classmethod
    def with_saved_defaults(cls, d: dict[str, Any]) -> dict[str, Any]:
        """A config a run saved (a checkpoint's, config.json), each key it lacks that ``SAVED_BEFORE`` names filled
        in: the saved config holds every field of its day, so a key it lacks came later, and the run had the old
        behaviour, not today's default."""
        if not isinstance(d, dict):
            return d
        d = {name: dict(values) if isinstance(values, dict) else values for name, values in d.items()}
        for (section, key), value in cls.SAVED_BEFORE.items():
            if isinstance(d.get(section), dict):
                d[section].setdefault(key, value)
        return d

    @classmethod
    def from_saved(cls, d: dict[str, Any]):
        """``from_dict`` of a config a run saved (``with_saved_defaults``)."""
        return cls.from_dict(cls.with_saved_defaults(d))
