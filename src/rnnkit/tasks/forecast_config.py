"""The forecaster's configuration: the ``model``, ``data`` and ``train`` sections, and the parsers of their lists.

``parse_quantiles`` and ``parse_lags`` turn the config's strings (``"0.1,0.5,0.9"``, ``"auto"``) into the levels and
lags a run uses; the dataclasses check every field when built. ``rnnkit.tasks.forecasting`` re-exports them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from rnnkit.config import (
    RecurrentConfig,
    RunConfig,
    TrainConfig,
    check_bool,
    check_choice,
    check_int,
    recurrent_field,
)
from rnnkit.data.series import FILLS
from rnnkit.errors import ConfigError
from rnnkit.tasks.forecast_combine import COMBINATIONS
from rnnkit.tasks.forecast_heads import HEADS

__all__ = [
    "ForecastConfig",
    "ForecastDataConfig",
    "ForecastModelConfig",
    "ForecastTrainConfig",
    "parse_lags",
    "parse_quantiles",
]


def parse_quantiles(text: str, name: str = "quantiles") -> tuple[float, ...]:
    """ "0.1,0.5,0.9" -> (0.1, 0.5, 0.9): distinct levels in (0, 1), sorted; ConfigError otherwise."""
    try:
        levels = sorted({float(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated numbers in (0, 1), got {text!r}") from None
    if not levels or not all(0 < q < 1 for q in levels):
        raise ConfigError(f"{name} must be comma-separated numbers in (0, 1), got {text!r}")
    return tuple(levels)


def parse_lags(text: str, season_length: int) -> tuple[int, ...]:
    """ "auto" -> 1, 2, 3 and, for a season m > 1, m and 2m; else a comma list of positive integers."""
    if text == "auto":
        lags = {1, 2, 3} | ({season_length, 2 * season_length} if season_length > 1 else set())
        return tuple(sorted(lags))
    try:
        lags = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"lags must be 'auto' or comma-separated integers >= 1, got {text!r}") from None
    if not lags or lags[0] < 1 or lags[-1] > 100_000:
        raise ConfigError(f"lags must be 'auto' or comma-separated integers in [1, 100000], got {text!r}")
    return tuple(lags)


@dataclass(frozen=True)
class ForecastModelConfig(RecurrentConfig):
    """Inputs -> rnnkit.RNN -> a distribution head (sampled) or a direct multi-horizon quantile head."""

    hidden_size: int = recurrent_field("hidden_size", 64)
    num_layers: int = recurrent_field("num_layers", 2)
    dropout: float = recurrent_field("dropout", 0.1)
    head: str = field(
        default="studentt",
        metadata={"help": "output: gaussian, studentt, negbin (counts; sampled paths) or quantile (direct)"},
    )
    id_embedding: int = field(default=0, metadata={"help": "width of a learned per-series vector (units, 0 = off)"})
    lags: str = field(default="auto", metadata={"help": "lagged inputs: auto (1,2,3,m,2m) or a list like 1,2,12"})
    quantiles: str = field(default="0.1,0.5,0.9", metadata={"help": "forecast quantile levels, comma-separated"})
    calibration: str = field(
        default="conformal",
        metadata={"help": "intervals: conformal (each quantile's distance from the median scaled so that [q0.1, q0.9] "
                  "holds 8 in 10 of the held-out validation actuals) or none (the head's own)"},
    )  # fmt: skip
    num_samples: int = field(default=100, metadata={"help": "sampled paths per series for the distribution heads"})
    combine: str = field(
        default="auto",
        metadata={"help": "forecasts: theta (the mean of the network's median and the Theta method's, every quantile "
                  "moved with the median), none (the network's alone) or auto (of the two, the one with the lower "
                  "held-out MASE, chosen at each evaluation; none with covariates, the negbin head or "
                  "--validation none)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("head", self.head, tuple(HEADS))
        check_int("id_embedding", self.id_embedding, 0, 2**16)
        if not isinstance(self.lags, str):
            raise ConfigError(f"lags must be a string ('auto' or like '1,2,12'), got {self.lags!r}")
        if self.lags != "auto":
            parse_lags(self.lags, 1)
        parse_quantiles(self.quantiles)
        check_int("num_samples", self.num_samples, 1, 100_000)
        check_choice("calibration", self.calibration, ("conformal", "none"))
        check_choice("combine", self.combine, ("auto", *COMBINATIONS))

    def levels(self) -> tuple[float, ...]:
        """The levels a run forecasts: ``quantiles`` plus the median and the 80 % interval's ends."""
        return tuple(sorted(set(parse_quantiles(self.quantiles)) | {0.1, 0.5, 0.9}))


@dataclass(frozen=True)
class ForecastDataConfig:
    """The history file, how to read it, and the forecasting problem: horizon, context, season, validation."""

    data: str | None = field(default=None, metadata={"help": "history CSV: id,time,value[,covariates] (path)"})
    wide: bool = field(default=False, metadata={"help": "the CSV has a time column plus one column per series"})
    fill: str = field(
        default="none", metadata={"help": "gaps and missing values: none (an error), " + ", ".join(FILLS)}
    )
    horizon: int = field(default=0, metadata={"help": "steps to forecast (required, >= 1)"})
    context_length: int = field(default=0, metadata={"help": "steps the network reads first (0 = max(2H, 2m))"})
    season_length: int = field(
        default=0, metadata={"help": "seasonal period m (steps; 0 = from the dates' frequency, 1 for integer times)"}
    )
    min_length: int = field(
        default=0, metadata={"help": "drop series shorter than this (points, with a count; 0 = keep all)"}
    )
    validation: str = field(
        default="last",
        metadata={"help": "last (hold out each series' last horizon) or none (score the last window in-sample)"},
    )
    too_short: str = field(
        default="keep",
        metadata={"help": "series too short to validate on (fewer than 2H + 1 points with --validation last): keep "
                  "(trained on every window they hold and forecast, not validated; counted), drop (counted) or "
                  "error"},
    )  # fmt: skip
    eval_samples: int = field(default=32, metadata={"help": "sampled paths per series in validation (count)"})
    sampling: str = field(
        default="windows",
        metadata={"help": "training windows: windows (each once per epoch) or series (a series uniformly, then "
                  "one of its windows)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.data is not None and (not isinstance(self.data, str) or not self.data):
            raise ConfigError(f"data must be a non-empty file path or unset, got {self.data!r}")
        check_bool("wide", self.wide)
        check_choice("fill", self.fill, ("none", *FILLS))
        check_int("horizon", self.horizon, 0, 100_000)
        check_int("context_length", self.context_length, 0, 1_000_000)
        check_int("season_length", self.season_length, 0, 100_000)
        check_int("min_length", self.min_length, 0)
        check_choice("validation", self.validation, ("last", "none"))
        check_choice("too_short", self.too_short, ("keep", "drop", "error"))
        check_int("eval_samples", self.eval_samples, 1, 100_000)
        check_choice("sampling", self.sampling, ("windows", "series"))


@dataclass(frozen=True)
class ForecastTrainConfig(TrainConfig):
    """The trainer's settings, with defaults for windows of a few dozen steps: validated every 250 steps, and
    best.pt the best validation MASE, so a long time budget cannot overfit. Early stopping is off by default: the
    held-out MASE jumps between evaluations while the learning rate is high, and stopping on it ended M3 monthly
    runs before the schedule had annealed (the patience ablation in docs/results.md)."""

    batch_size: int = field(default=64, metadata={"help": "windows per batch (count)"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (after warmup)"})
    max_minutes: float = field(default=3.0, metadata={"help": "stop after this much training time (minutes)"})
    eval_every: int = field(default=250, metadata={"help": "validate every this many steps (steps)"})
    patience: int = field(
        default=0, metadata={"help": "stop after this many evaluations without improvement (evals, 0 = off)"}
    )
    refit: bool = field(
        default=False,
        metadata={"help": "then train a fresh model on every point (the held-out horizon too) for the steps of the "
                  "best evaluation; it becomes best.pt (the validated model stays as validated.pt)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("refit", self.refit)


@dataclass(frozen=True)
class ForecastConfig(RunConfig):
    """The whole forecasting run: ``model``, ``data`` and ``train`` sections."""

    SAVED_BEFORE: ClassVar[dict[tuple[str, str], Any]] = {("model", "combine"): "none"}  # runs from before Theta

    model: ForecastModelConfig = field(default_factory=ForecastModelConfig)
    data: ForecastDataConfig = field(default_factory=ForecastDataConfig)
    train: ForecastTrainConfig = field(default_factory=ForecastTrainConfig)
