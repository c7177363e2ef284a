"""Probabilistic time-series forecasting: one global RNN over every series (DeepAR-style, Salinas et al. 2020).

At step t of a window the network reads the scaled lagged values z_{t-l} / s (l in ``lags``: 1, 2, 3 and the
seasonal m, 2m), whether each was observed, the calendar (or season phase) of t, the series' age log10(2 + age),
the standardised covariates of t and, optionally, a learned embedding of the series id; ``rnnkit.RNN`` turns them
into h_t, a linear layer into raw outputs W h_t + b, and a head (``rnnkit.tasks.forecast_heads``: gaussian,
studentt, negbin for counts, or quantile) into a forecast of z_t. Every window is scaled by its own context:

    s = mean |z| over the observed context steps (1 when they are all 0)

Training windows (context C + horizon H steps) are drawn across all series; the distribution heads learn by
teacher forcing over the whole window and forecast by sampling ``num_samples`` paths autoregressively, each
sampled value fed back as the next step's lag; the quantile head forecasts in one step. The point forecast is
the median. Scaling each window by its own context (as DeepAR does) makes forecasts equivariant to a series'
units (a series times 1000 gets forecasts times 1000) and lets a run forecast series it never saw.

A window's context may begin before its series does: those steps are zero-padded and marked unobserved (and the
loss skips them), so a series needs only ``horizon + 1`` points to train on, however long the context.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.config import (
    RecurrentConfig,
    RunConfig,
    TrainConfig,
    check_bool,
    check_choice,
    check_int,
    recurrent_field,
)
from rnnkit.data.series import FILLS, Series, SeriesSet, TimeAxis, check_continues, read_series
from rnnkit.errors import ConfigError, DataError
from rnnkit.flags import int_flag
from rnnkit.init import initialise_
from rnnkit.io import atomic_write_json
from rnnkit.metrics import forecast_scores, plot_forecasts
from rnnkit.precision import at_least_fp32
from rnnkit.recurrent import RNN
from rnnkit.tasks.base import Command, Flag, Table, Task
from rnnkit.tasks.forecast_heads import HEADS, ForecastHead

__all__ = [
    "HEADS",  # re-exported from rnnkit.tasks.forecast_heads
    "ForecastConfig",
    "ForecastDataConfig",
    "ForecastModelConfig",
    "ForecastTask",
    "ForecastTrainConfig",
    "Forecaster",
    "parse_quantiles",
]

log = logging.getLogger(__name__)


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
    num_samples: int = field(default=100, metadata={"help": "sampled paths per series for the distribution heads"})

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
        check_int("eval_samples", self.eval_samples, 1, 100_000)
        check_choice("sampling", self.sampling, ("windows", "series"))


@dataclass(frozen=True)
class ForecastTrainConfig(TrainConfig):
    """The trainer's settings, with defaults for windows of a few dozen steps."""

    batch_size: int = field(default=64, metadata={"help": "windows per batch (count)"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (after warmup)"})
    max_minutes: float = field(default=3.0, metadata={"help": "stop after this much training time (minutes)"})


@dataclass(frozen=True)
class ForecastConfig(RunConfig):
    """The whole forecasting run: ``model``, ``data`` and ``train`` sections."""

    model: ForecastModelConfig = field(default_factory=ForecastModelConfig)
    data: ForecastDataConfig = field(default_factory=ForecastDataConfig)
    train: ForecastTrainConfig = field(default_factory=ForecastTrainConfig)


class Forecaster(nn.Module):
    """inputs (B, T, D) [+ series ids (B,)] -> rnnkit.RNN -> head outputs (B, T, P).

    P is the head's ``num_parameters``: 2 (gaussian, negbin), 3 (studentt) or H * Q (quantile: H steps ahead times
    Q levels).
    """

    def __init__(self, config: ForecastModelConfig, input_size: int, *, num_series: int = 0, horizon: int = 1,
                 levels: tuple[float, ...] = (0.5,)) -> None:  # fmt: skip
        super().__init__()
        self.config, self.horizon, self.levels = config, horizon, tuple(levels)
        self.embed = nn.Embedding(num_series, config.id_embedding) if config.id_embedding and num_series else None
        D = input_size + (config.id_embedding if self.embed is not None else 0)
        self.rnn = RNN(config.mode, D, config.hidden_size, config.num_layers, dropout=config.dropout,
                       backend=config.backend, **config.rnn_options())  # fmt: skip
        P = HEADS[config.head]().num_parameters(horizon, self.levels)
        self.head = nn.Linear(config.hidden_size, P)  # raw outputs; the task's ``head`` reads them
        initialise_(self.rnn, config.init)

    def forward(self, x: Tensor, ids: Tensor | None = None, state=None) -> tuple[Tensor, Any]:
        """x (B, T, D), ids (B,) long (-1 = a series the run never saw: the mean embedding) -> (B, T, P), state."""
        if self.embed is not None:
            if ids is None:
                raise ValueError("this model has series embeddings: pass ids (B,)")
            known = ids.clamp(min=0)
            e = torch.where((ids >= 0).unsqueeze(-1), self.embed(known), self.embed.weight.mean(0))  # (B, E)
            x = torch.cat([x, e.unsqueeze(1).expand(-1, x.size(1), -1)], dim=-1)
        y, state = self.rnn(x, state)  # (B, T, H)
        return self.head(y), state


class _ForecastGraph(nn.Module):
    """Export graph (``rnnkit export``): x (B, T, D) [, ids (B,) int64], h0 [c0] -> params (B, T, P), hn [cn]."""

    def __init__(self, model: Forecaster, ids: bool) -> None:
        super().__init__()
        self.model, self.ids = model, ids

    def forward(self, x: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        from rnnkit.export import flat_state, nested_state

        ids, state = (rest[0], rest[1:]) if self.ids else (None, rest)
        out, new_state = self.model(x, ids, nested_state(state))  # (B, T, P)
        return (out, *flat_state(new_state))


class _Windows:
    """Series laid end to end with ``pad`` unobserved steps before each, so any window is one fancy index."""

    def __init__(self, series: list[Series], features: list[np.ndarray], pad: int) -> None:
        F_ = features[0].shape[1] if features else 0
        chunks_v, chunks_o, chunks_f, chunks_a = [], [], [], []
        self.offsets, self.lengths = [], []
        at = 0
        for s, f in zip(series, features, strict=True):
            n = len(s)
            chunks_v += [np.zeros(pad), s.values]
            chunks_o += [np.zeros(pad), np.ones(n)]
            chunks_f += [np.zeros((pad, F_)), f]
            chunks_a += [np.zeros(pad), np.arange(n, dtype=np.float64)]
            self.offsets.append(at + pad)  # position of the series' first point
            self.lengths.append(n)
            at += pad + n
        self.values = np.concatenate(chunks_v) if chunks_v else np.zeros(0)
        self.observed = np.concatenate(chunks_o) if chunks_o else np.zeros(0)
        self.features = np.concatenate(chunks_f) if chunks_f else np.zeros((0, F_))
        self.age = np.concatenate(chunks_a) if chunks_a else np.zeros(0)

    def take(self, series: np.ndarray, ends: np.ndarray, width: int) -> dict[str, Tensor]:
        """Windows of ``width`` steps ending (exclusive) at point ``ends[b]`` of series ``series[b]``."""
        base = np.asarray(self.offsets)[series] + ends  # (B,)
        idx = base[:, None] - width + np.arange(width)[None, :]  # (B, width)
        return {
            "values": torch.from_numpy(self.values[idx]).float(),
            "observed": torch.from_numpy(self.observed[idx]).float(),
            "features": torch.from_numpy(self.features[idx]).float(),
            "age": torch.from_numpy(self.age[idx]).float(),
        }


class _Batches:
    """An epoch is ``len(pairs)`` windows: every window once in a shuffled order (``sampling="windows"``), or as
    many draws of a series chosen uniformly and then a window of it (``"series"``: short series weigh as much as
    long ones, as every series counts once in the accuracy)."""

    def __init__(self, task: ForecastTask, pairs: np.ndarray, rank: int, world_size: int) -> None:
        self.task, self.pairs, self.rank, self.world = task, pairs, rank, world_size
        self.size = task.config.train.batch_size
        self.per_rank = len(pairs) // world_size
        self.series = np.unique(pairs[:, 0])
        first = np.searchsorted(pairs[:, 0], self.series)  # pairs are grouped by series, ends ascending
        self.first, self.count = first, np.diff(np.append(first, len(pairs)))
        self.epoch, self.order = None, None

    def __len__(self) -> int:
        return max(1, math.ceil(self.per_rank / self.size))

    def _epoch(self, epoch: int) -> np.ndarray:
        """Indices into ``pairs`` of this epoch's windows, in order, for this rank."""
        if self.epoch != epoch:
            seed = self.task.config.train.seed * 1_000_003 + epoch
            if self.task.config.data.sampling == "windows":
                order = torch.randperm(len(self.pairs), generator=torch.Generator().manual_seed(seed)).numpy()
            else:
                rng = np.random.default_rng(seed)
                which = rng.integers(0, len(self.series), len(self.pairs))
                order = self.first[which] + (rng.random(len(self.pairs)) * self.count[which]).astype(np.int64)
            start = self.rank * self.per_rank if self.world > 1 else 0
            self.epoch, self.order = epoch, order[start : start + self.per_rank]
        return self.order

    def get(self, epoch: int, k: int):
        pick = self.pairs[self._epoch(epoch)[k * self.size : (k + 1) * self.size]]  # (B, 2): series index, end
        return self.task.window_batch(self.task.train_windows, pick[:, 0], pick[:, 1])

    def items(self, batch) -> int:
        return batch["values"].size(0)


_HISTORY = Flag("--data", "the history: id,time,value[,covariates] rows", required=True, metavar="FILE.csv")
_SAMPLING = (
    Flag("--quantiles", "quantile levels to write or score (default: the run's, e.g. 0.1,0.5,0.9)", metavar="Q,Q,..."),
    Flag("--num-samples", "sampled paths per series (default: the run's)", None, int_flag(1, 100_000), "N"),
    Flag("--seed", "sampling seed", 0, int_flag(0)),
    Flag("--plot", "draw a few series and their forecasts", metavar="FILE.png", output=".png"),
)
_FORECAST = (
    _HISTORY,
    Flag("--horizon", "steps to forecast (default: the run's horizon)", None, int_flag(1, 100_000), "N"),
    Flag("--future", "covariates over the forecast steps, when the run has covariates", metavar="FILE.csv"),
    *_SAMPLING,
)


class ForecastTask(Task):
    """``rnnkit train forecast``: one global model forecasting every series of a CSV file."""

    name = "forecast"
    title = "forecast"
    help = "global probabilistic forecaster of time series (DeepAR-style)"
    commands = (
        Command("forecast", "forecast_rows", "table", "forecasts of every series of a history CSV", _FORECAST),
        Command("predict", "forecast_rows", "table", "forecasts of every series of a history CSV", _FORECAST),
        Command("eval", "score", "scores", "sMAPE, MASE, quantile loss and coverage against the actuals", (
            _HISTORY,
            Flag("--actuals", "the values that followed --data (same CSV layout)", required=True, metavar="FILE.csv"),
            *_SAMPLING,
        )),
    )  # fmt: skip
    Config = ForecastConfig
    primary = "mase"
    higher_is_better = False
    unit = "windows"

    @property
    def head(self) -> ForecastHead:
        """The head strategy of ``model.head`` (the config's string, as an object: loss, sampling, quantiles)."""
        return HEADS[self.config.model.head]()

    # --- data -------------------------------------------------------------------------------------------------

    def read(self, path: str, *, wide: bool | None = None, fill: str | None = None) -> SeriesSet:
        """A CSV of series read as this run reads its history (its ``wide`` and ``fill`` unless given)."""
        d = self.config.data
        how = d.fill if fill is None else fill
        data = read_series(path, wide=d.wide if wide is None else wide, fill=None if how == "none" else how,
                           axis=getattr(self, "axis", None))  # fmt: skip
        self.check_compatible(data)
        return data

    def prepare(self, artefacts: dict[str, Any] | None) -> None:
        d = self.config.data
        if d.data is None:
            raise ConfigError("forecast needs --data FILE (a CSV of id,time,value rows, or --wide)")
        if d.horizon < 1:
            raise ConfigError(f"forecast needs --horizon H (the steps to forecast, >= 1), got {d.horizon}")
        if artefacts is not None:
            self.restore(artefacts)
        data = self.read(d.data)
        self.dropped = 0
        if d.min_length:
            kept = [s for s in data.series if len(s) >= d.min_length]
            self.dropped = len(data.series) - len(kept)
            if self.dropped:
                log.warning(
                    "dropped %d of %d series shorter than --min-length %d", self.dropped, len(data), d.min_length
                )
            if not kept:
                raise DataError(f"{data.source}: no series has --min-length {d.min_length} points")
            data.series = kept
        H = d.horizon
        need = H + 1 + (H if d.validation == "last" else 0)
        short = [s for s in data.series if len(s) < need]
        if short:
            how = "horizon + 1 points to train on" + (
                " after the held-out last horizon" if d.validation == "last" else ""
            )
            raise DataError(
                f"{data.source}: series {short[0].id!r} has {len(short[0])} points, fewer than {need} ({how}; "
                f"{len(short)} such series); drop them with --min-length {need}"
                + (" or validate in-sample with --validation none" if d.validation == "last" else "")
            )
        self.head.check_data(data)
        if artefacts is None:
            self._fit(data)
        self.history = data
        index = {sid: i for i, sid in enumerate(self.ids)}
        self.run_ids = np.array([index.get(s.id, -1) for s in data.series], np.int64)  # row -> embedding row
        self.train_series = [self._cut(s, H if d.validation == "last" else 0) for s in data.series]
        self.train_windows = self.windows(self.train_series)
        self.pairs = self._pairs()
        self.val_windows = self.windows(data.series)

    def _fit(self, data: SeriesSet) -> None:
        d = self.config.data
        self.axis = data.axis
        self.season = d.season_length or data.axis.season_length()
        self.horizon = d.horizon
        self.context = d.context_length or max(2 * d.horizon, 2 * self.season)
        self.lags = parse_lags(self.config.model.lags, self.season)
        self.ids = [s.id for s in data.series]
        self.covariates = list(data.covariates)
        if self.covariates:
            values = np.concatenate([s.covariates[: len(s) - (d.horizon if d.validation == "last" else 0)]
                                     for s in data.series])  # fmt: skip
            mean, std = values.mean(0), values.std(0)
            self.cov_mean, self.cov_std = mean.tolist(), np.where(std > 1e-12, std, 1.0).tolist()
        else:
            self.cov_mean, self.cov_std = [], []

    def check_compatible(self, data: SeriesSet) -> None:
        """A file read for a trained run has the run's covariate columns (its times are put on the run's grid)."""
        if getattr(self, "covariates", None) is not None and data.covariates != self.covariates:
            raise DataError(f"{data.source}: covariate columns {data.covariates} differ from the run's "
                            f"{self.covariates}")  # fmt: skip

    @staticmethod
    def _cut(s: Series, k: int) -> Series:
        return Series(s.id, s.start, s.values[: len(s) - k], s.covariates[: len(s) - k]) if k else s

    def _pairs(self) -> np.ndarray:
        """Every training window as (series index, end): the last H points before ``end`` are all observed and
        at least one context point is."""
        H = self.horizon
        pairs = [np.stack([np.full(len(s) - H, i), np.arange(H + 1, len(s) + 1)], 1)
                 for i, s in enumerate(self.train_series) if len(s) > H]  # fmt: skip
        return np.concatenate(pairs).astype(np.int64)

    def restore(self, artefacts: dict[str, Any]) -> None:
        self.axis = TimeAxis.from_dict(artefacts["axis"])
        self.season, self.horizon, self.context = (
            int(artefacts["season"]),
            int(artefacts["horizon"]),
            int(artefacts["context"]),
        )
        self.lags = tuple(int(x) for x in artefacts["lags"])
        self.ids = list(artefacts["ids"])
        self.covariates = list(artefacts["covariates"])
        self.cov_mean, self.cov_std = list(artefacts["cov_mean"]), list(artefacts["cov_std"])

    def artefacts(self) -> dict[str, Any]:
        return {
            "axis": self.axis.to_dict(), "season": self.season, "horizon": self.horizon, "context": self.context,
            "lags": list(self.lags), "ids": self.ids, "covariates": self.covariates, "cov_mean": self.cov_mean,
            "cov_std": self.cov_std,
        }  # fmt: skip

    def write_files(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / "series.json", {
            "frequency": self.axis.name, **self.artefacts(), "dropped_short_series": self.dropped,
            "filled_values": self.history.filled,
        })  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {
            "series": len(self.train_series), "train_windows": len(self.pairs), "frequency": self.axis.name,
            "season_length": self.season, "horizon": self.horizon, "context_length": self.context,
            "lags": list(self.lags), "covariates": len(self.covariates), "dropped_series": self.dropped,
        }  # fmt: skip

    # --- model inputs -----------------------------------------------------------------------------------------

    @property
    def num_features(self) -> int:
        """Calendar sin/cos pairs, the season phase (integer times), covariates."""
        return self.features(np.zeros(1, np.int64), np.zeros((1, len(self.covariates)))).shape[1]

    def features(self, ordinals: np.ndarray, covariates: np.ndarray) -> np.ndarray:
        """Known-in-advance features of each time (N, F): sin/cos of the calendar phases (or, for integer times
        with a season m > 1, of the phase within the season), then the standardised covariates."""
        phases = self.axis.calendar_phases(ordinals)  # (N, F0)
        if self.axis.kind == "int" and self.season > 1:
            phases = ((np.asarray(ordinals) // self.axis.step) % self.season / self.season)[:, None]
        angle = 2 * np.pi * phases
        cov = (np.asarray(covariates, np.float64) - np.asarray(self.cov_mean)) / np.asarray(self.cov_std)
        return np.concatenate([np.sin(angle), np.cos(angle), cov.reshape(len(angle), -1)], axis=1)

    def input_size(self) -> int:
        return 2 * len(self.lags) + 1 + self.num_features

    def windows(self, series: list[Series]) -> _Windows:
        feats = [self.features(s.start + self.axis.step * np.arange(len(s)), s.covariates) for s in series]
        return _Windows(series, feats, self.context + max(self.lags))

    def window_batch(self, windows: _Windows, series: np.ndarray, ends: np.ndarray) -> dict[str, Tensor]:
        """Training/validation windows: maxlag + C + H steps ending at ``ends``, and the series' run ids."""
        W = max(self.lags) + self.context + self.horizon
        batch = windows.take(series, ends, W)
        batch["ids"] = torch.as_tensor(self.run_ids[series], dtype=torch.long)
        return batch

    def inputs(self, values: Tensor, observed: Tensor, features: Tensor, age: Tensor, scale: Tensor,
               steps: Tensor) -> Tensor:  # fmt: skip
        """The network's input (B, len(steps), D) at window positions ``steps``: lagged scaled values, their
        observed flags, log10(2 + age), the features. values/observed/age (B, L), features (B, L, F), scale (B,)."""
        lag = torch.tensor(self.lags, device=values.device)
        idx = steps[:, None] - lag[None, :]  # (S, nlags)
        z = values[:, idx] * observed[:, idx] / scale[:, None, None]  # (B, S, nlags)
        o = observed[:, idx]
        a = torch.log10(2.0 + age[:, steps]).unsqueeze(-1)  # (B, S, 1)
        return torch.cat([z, o, a, features[:, steps]], dim=-1)

    def context_scale(self, values: Tensor, observed: Tensor, end: int | None = None) -> Tensor:
        """s (B,): the mean |z| over the observed steps of the context, the C steps before position ``end`` (default:
        before the window's last H, a training window's horizon); 1 where that mean is 0."""
        end = values.size(1) - self.horizon if end is None else end
        v, o = values[:, end - self.context : end], observed[:, end - self.context : end]
        s = (v.abs() * o).sum(1) / o.sum(1).clamp(min=1)
        return torch.where(s > 0, s, torch.ones_like(s))

    # --- training ---------------------------------------------------------------------------------------------

    def build_model(self) -> Forecaster:
        m = self.config.model
        return Forecaster(m, self.input_size(), num_series=len(self.ids), horizon=self.horizon, levels=m.levels())

    def export_graphs(self, model: Forecaster) -> list:
        """One graph, the network: inputs (``inputs``: scaled lags, flags, age, features) and state in, the head's
        parameters and state out. Scaling, lags and the sampled paths stay with the caller."""
        from rnnkit.export import Graph, batch_axes, flat_state, state_names, to_torch_modules

        x = torch.zeros(2, 3, self.input_size())
        state = flat_state(model.rnn.initial_state(2))  # (L, 2, H) each
        ids = (torch.tensor([0, -1]),) if model.embed is not None else ()  # -1: a series the run never saw
        ins, outs = state_names(len(state) == 2)
        names = ["x", *(["ids"] if ids else []), *ins]
        axes = {"x": {0: "batch", 1: "time"}, "ids": {0: "batch"}, "params": {0: "batch", 1: "time"}}
        axes = {k: v for k, v in axes.items() if k in names or k == "params"} | batch_axes(ins + outs)
        graph = _ForecastGraph(to_torch_modules(model).eval(), bool(ids))
        return [Graph(graph, (x, *ids, *state), names, ["params", *outs], axes)]

    def batches(self, rank: int, world_size: int) -> _Batches:
        if len(self.pairs) < world_size:
            raise DataError(f"{len(self.pairs)} training windows cannot be shared by {world_size} processes")
        return _Batches(self, self.pairs, rank, world_size)

    def _window_loss(self, model: Forecaster, batch: dict[str, Tensor], device) -> tuple[Tensor, Tensor]:
        """Summed loss and the count of scored values of a batch of windows (teacher forcing, whole window)."""
        b = {k: v.to(device) for k, v in batch.items()}
        values, observed = b["values"], b["observed"]
        scale = self.context_scale(values, observed)  # (B,)
        L = values.size(1)
        steps = torch.arange(max(self.lags), L, device=device)  # the model's C + H positions
        out, _ = model(self.inputs(values, observed, b["features"], b["age"], scale, steps), b["ids"])  # (B, S, P)
        out = at_least_fp32(out)  # the likelihood in fp32: CPU autocast leaves softplus, log, lgamma in bf16
        return self.head.loss(out, values, observed, steps, scale, horizon=self.horizon, levels=model.levels)

    def loss(self, model: nn.Module, batch, state, device: torch.device) -> tuple[Tensor, None]:
        total, count = self._window_loss(model, batch, device)
        return total / count.clamp(min=1), None

    # --- forecasting ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def forecast(self, model: Forecaster, series: list[Series], *, horizon: int | None = None,
                 levels: tuple[float, ...] | None = None, num_samples: int | None = None,
                 future: dict[str, np.ndarray] | None = None, seed: int = 0, device="cpu",
                 batch_size: int = 256, progress: Callable[[int], None] | None = None) -> dict[str, Any]:  # fmt: skip
        """Forecasts of the ``horizon`` steps after each series' last point.

        Returns {"median": (N, h), "quantiles": {level: (N, h)}, "times": (N, h) ordinals}. ``future`` maps a
        series id to its covariates (h, C) over the horizon (needed when the run has covariates). ``progress``
        is called with the number of series done after each batch of them.
        """
        h = self.horizon if horizon is None else horizon
        head = self.head
        levels = tuple(sorted(set(levels or self.config.model.levels()) | {0.5}))
        if h < 1:
            raise ValueError(f"horizon must be >= 1, got {h}")
        head.check_request(h, levels, self.horizon, model.levels)
        S = num_samples or self.config.model.num_samples
        was_training = model.training
        model.eval()
        quantiles, times = {q: [] for q in levels}, []
        index = {sid: i for i, sid in enumerate(self.ids)}
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for start in range(0, len(series), batch_size):
                    chunk = series[start : start + batch_size]
                    ids = np.array([index.get(s.id, -1) for s in chunk], np.int64)
                    b, t = self._forecast_inputs(chunk, h, future)
                    times.append(t)
                    b["ids"] = torch.as_tensor(ids)
                    if head.sampled:
                        q = self._sampled_forecast(model, b, h, levels, S, device)
                    else:
                        q = self._direct_forecast(model, b, h, levels, device)
                    for level in levels:
                        quantiles[level].append(q[level])
                    if progress is not None:
                        progress(len(chunk))
        finally:
            model.train(was_training)
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros((0, h))  # noqa: E731
        out = {q: cat(v) for q, v in quantiles.items()}
        return {"median": out[0.5], "quantiles": out, "times": cat(times).astype(np.int64)}

    def _forecast_inputs(self, chunk: list[Series], h: int, future) -> tuple[dict[str, Tensor], np.ndarray]:
        """maxlag + C steps of history (padded before a short series) and h future steps, per series."""
        P, C = max(self.lags), self.context
        L = P + C + h
        B = len(chunk)
        values, observed, age = np.zeros((B, L)), np.zeros((B, L)), np.zeros((B, L))
        feats = np.zeros((B, L, self.num_features))
        times = np.zeros((B, h), np.int64)
        step = self.axis.step
        for i, s in enumerate(chunk):
            n = min(len(s), P + C)
            values[i, P + C - n : P + C] = s.values[-n:]
            observed[i, P + C - n : P + C] = 1
            age[i, P + C - n :] = np.arange(len(s) - n, len(s) + h)
            t_hist = s.start + step * np.arange(len(s) - n, len(s))
            t_future = s.end(step) + step * np.arange(1, h + 1)
            times[i] = t_future
            cov_future = np.zeros((h, len(self.covariates)))
            if self.covariates:
                if future is None or s.id not in future:
                    raise DataError(f"series {s.id!r}: this run reads covariates {self.covariates}; give their "
                                    f"values over the {h} forecast steps (--future FILE)")  # fmt: skip
                cov_future = np.asarray(future[s.id], np.float64)
                if cov_future.shape != (h, len(self.covariates)):
                    raise DataError(f"series {s.id!r}: the future covariates hold {cov_future.shape[0]} steps, "
                                    f"expected {h}")  # fmt: skip
            ordinals = np.concatenate([t_hist, t_future])
            cov = np.concatenate([s.covariates[-n:], cov_future])
            feats[i, P + C - n :] = self.features(ordinals, cov)
        batch = {"values": torch.from_numpy(values).float(), "observed": torch.from_numpy(observed).float(),
                 "features": torch.from_numpy(feats).float(), "age": torch.from_numpy(age).float()}  # fmt: skip
        return batch, times

    def _direct_forecast(self, model, b, h, levels, device) -> dict[float, np.ndarray]:
        """Read the context and the first future step's inputs once; the head maps the last output to quantiles."""
        P, C = max(self.lags), self.context
        b = {k: v.to(device) for k, v in b.items()}
        scale = self.context_scale(b["values"], b["observed"], P + C)
        steps = torch.arange(P, P + C + 1, device=device)  # the context, then the first future step
        out, _ = model(self.inputs(b["values"], b["observed"], b["features"], b["age"], scale, steps), b["ids"])
        q = self.head.forecast(at_least_fp32(out[:, -1]), scale, h, levels, horizon=self.horizon, trained=model.levels)
        return {level: v.float().cpu().numpy().astype(np.float64) for level, v in q.items()}  # (B, h) each

    def _sampled_forecast(self, model, b, h, levels, S, device) -> dict[float, np.ndarray]:
        """Read the context once, then draw S paths per series a step at a time, each draw the next step's lag."""
        P, C = max(self.lags), self.context
        head = self.head
        b = {k: v.to(device) for k, v in b.items()}
        scale = self.context_scale(b["values"], b["observed"], P + C)
        B = scale.size(0)
        steps = torch.arange(P, P + C, device=device)
        x = self.inputs(b["values"], b["observed"], b["features"], b["age"], scale, steps)
        _, state = model(x, b["ids"])  # read the context once, then S paths per series
        rep = lambda t: t.repeat_interleave(S, dim=0)  # noqa: E731
        values, observed = rep(b["values"]).clone(), rep(b["observed"]).clone()
        features, age, ids, s = rep(b["features"]), rep(b["age"]), rep(b["ids"]), rep(scale)
        if isinstance(state, tuple):  # (h, c), each (L, B, H)
            state = type(state)(*(t.repeat_interleave(S, dim=1) for t in state))
        else:
            state = state.repeat_interleave(S, dim=1)
        for k in range(h):
            t = P + C + k
            x = self.inputs(values, observed, features, age, s, torch.tensor([t], device=device))
            out, state = model(x, ids, state)
            values[:, t] = head.sample(at_least_fp32(out[:, 0]), s)  # sampled in fp32 under bf16 autocast too
            observed[:, t] = 1
        paths = values[:, P + C :].view(B, S, h)
        est = head.quantiles(paths, levels)  # (Q, B, h)
        return {q: est[i].cpu().numpy().astype(np.float64) for i, q in enumerate(levels)}

    # --- evaluation -------------------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module, device: torch.device, dist_info) -> dict[str, float]:
        """Teacher-forced loss and forecast accuracy on each series' last horizon (held out, or in-sample)."""
        H = self.horizon
        n = np.arange(len(self.history.series))
        ends = np.array([len(s) for s in self.history.series], np.int64)
        total, count = 0.0, 0.0
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for start in range(0, len(n), 256):
                batch = self.window_batch(self.val_windows, n[start : start + 256], ends[start : start + 256])
                t, c = self._window_loss(model, batch, device)
                total, count = total + float(t), count + float(c)
        model.train(was_training)
        histories = [s.values[:-H] for s in self.history.series]
        cut = [self._cut(s, H) for s in self.history.series]
        future = {s.id: s.covariates[-H:] for s in self.history.series} if self.covariates else None
        f = self.forecast(model, cut, num_samples=self.config.data.eval_samples, seed=self.config.train.seed,
                          future=future, device=device)  # fmt: skip
        actuals = [s.values[-H:] for s in self.history.series]
        m = forecast_scores(histories, actuals, list(f["median"]), self.season,
                            {q: list(v) for q, v in f["quantiles"].items()})  # fmt: skip
        self.last_forecast = (cut, f)
        return {"loss": total / max(count, 1.0), "mase": m["mase"], "smape": m["smape"],
                "coverage_80": m["coverage_80"], "quantile_loss": m["quantile_loss"]}  # fmt: skip

    def plots(self, model: nn.Module, run_dir: Path, device: torch.device) -> None:
        from rnnkit.metrics import plot_forecasts

        if getattr(self, "last_forecast", None) is None:
            self.evaluate(model, device, None)
        cut, f = self.last_forecast
        H = self.horizon
        actuals = {s.id: s.values[-H:] for s in self.history.series}
        where = "held-out last horizon" if self.config.data.validation == "last" else "last horizon (in-sample)"
        plot_forecasts(cut, f, self.axis, run_dir / "forecast.png", actuals=actuals, title=f"validation: {where}")

    # --- inference commands -----------------------------------------------------------------------------------

    def _read_future(self, path: str | None, history: SeriesSet, horizon: int) -> dict | None:
        """Covariates over the forecast steps, {id: (h, C)}, from a CSV like the history (values may be empty)."""
        if not self.covariates:
            return None
        if path is None:
            raise ConfigError(
                f"this run reads covariates {', '.join(self.covariates)}: give their values over the forecast steps "
                "with --future FILE (id,time,value,covariates; value may be empty)"
            )
        future = read_series(path, values=False, axis=self.axis)  # only the covariates: value cells may be empty
        self.check_compatible(future)
        check_continues(history, future, horizon)
        return {s.id: s.covariates[:horizon] for s in future.series}

    def forecast_rows(self, model: Forecaster, *, data: str, horizon: int | None = None, future: str | None = None,
                      quantiles: str | None = None, num_samples: int | None = None, seed: int = 0,
                      plot: str | None = None) -> Table:  # fmt: skip
        """``rnnkit forecast`` (and ``predict``): ``id,time,forecast,q...`` rows, ``horizon`` per series, the times
        continuing each series; the forecast is the median."""
        history = self.read(data)
        h = horizon or self.horizon
        levels = parse_quantiles(quantiles, "--quantiles") if quantiles else None
        f = self.forecast(model, history.series, horizon=h, levels=levels, num_samples=num_samples,
                          future=self._read_future(future, history, h), seed=seed)  # fmt: skip
        shown = sorted(f["quantiles"]) if levels else list(self.config.model.levels())
        rows = ([s.id, history.axis.format(f["times"][i, k]), f"{f['median'][i, k]:.6g}",
                 *(f"{f['quantiles'][q][i, k]:.6g}" for q in shown)]
                for i, s in enumerate(history.series) for k in range(h))  # fmt: skip
        notes = [f"{len(history.series)} series x {h} steps"]
        if plot:
            plot_forecasts(history.series, f, history.axis, Path(plot), title=f"forecasts of {data}")
            notes.append(f"plot: {plot}")
        return Table(["id", "time", "forecast", *(f"q{q:g}" for q in shown)], rows, notes=notes)

    def score(self, model: Forecaster, *, data: str, actuals: str, quantiles: str | None = None,
              num_samples: int | None = None, seed: int = 0, plot: str | None = None) -> dict[str, Any]:  # fmt: skip
        """``rnnkit eval``: sMAPE, MASE (season m), MAE, RMSE, quantile loss and 80 % coverage of the forecasts of
        ``data``'s series against ``actuals``, the values that followed them (every series the same horizon)."""
        history, truth_set = self.read(data), self.read(actuals)
        check_continues(history, truth_set)
        lengths = {len(s) for s in truth_set.series}
        if len(lengths) > 1:
            raise DataError(f"{actuals}: the series hold different numbers of steps ({min(lengths)} to "
                            f"{max(lengths)}); give each series the same horizon")  # fmt: skip
        h = lengths.pop()
        future = {s.id: s.covariates for s in truth_set.series} if self.covariates else None
        levels = parse_quantiles(quantiles, "--quantiles") if quantiles else None
        f = self.forecast(model, history.series, horizon=h, levels=levels, num_samples=num_samples, future=future,
                          seed=seed)  # fmt: skip
        truth = truth_set.by_id()
        y = [truth[s.id].values for s in history.series]
        m = forecast_scores([s.values for s in history.series], y, list(f["median"]), self.season,
                            {q: list(v) for q, v in f["quantiles"].items()})  # fmt: skip
        files = []
        if plot:
            plot_forecasts(history.series, f, history.axis, Path(plot), title=f"forecasts of {data} and {actuals}",
                           actuals={s.id: truth[s.id].values for s in history.series})  # fmt: skip
            files.append(plot)
        return {**m, "horizon": h, "season_length": self.season, "files": files}
