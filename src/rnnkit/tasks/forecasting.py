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
the median, or its mean with the Theta method's forecast where validation chooses that (``--combine``,
``rnnkit.tasks.forecast_combine``; the quantiles move with the median). Scaling each window by its own context (as
DeepAR does) makes forecasts equivariant to a series' units (a series times 1000 gets forecasts times 1000) and
lets a run forecast series it never saw.

A window's context may begin before its series does: those steps are zero-padded and marked unobserved (and the
loss skips them), so a series needs only ``horizon + 1`` points to train on, however long the context.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.data.series import Series, SeriesSet, TimeAxis, check_continues, read_series
from rnnkit.errors import ConfigError, DataError
from rnnkit.flags import int_flag
from rnnkit.io import atomic_write_json
from rnnkit.metrics import forecast_scores, plot_forecasts
from rnnkit.precision import at_least_fp32
from rnnkit.tasks.base import Command, Flag, Param, Table, Task
from rnnkit.tasks.forecast_combine import COMBINATIONS, Combination, NoCombination, theta_forecasts
from rnnkit.tasks.forecast_config import (
    ForecastConfig,
    ForecastDataConfig,
    ForecastModelConfig,
    ForecastTrainConfig,
    parse_lags,
    parse_quantiles,
)
from rnnkit.tasks.forecast_heads import HEADS, ForecastHead
from rnnkit.tasks.forecast_parts import Forecaster, ForecastGraph, WindowBatches, Windows, drop_last, window_pairs

__all__ = [
    "HEADS",  # re-exported from rnnkit.tasks.forecast_heads
    "ForecastConfig",  # the configs and parse_quantiles: re-exported from rnnkit.tasks.forecast_config
    "ForecastDataConfig",
    "ForecastModelConfig",
    "ForecastTask",
    "ForecastTrainConfig",
    "Forecaster",  # re-exported from rnnkit.tasks.forecast_parts
    "parse_quantiles",
]

log = logging.getLogger(__name__)


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


def calibrate(
    median: np.ndarray, lower: np.ndarray, upper: np.ndarray, actual: np.ndarray, coverage: float = 0.8
) -> float:
    """The factor c by which the quantiles' distances from the median stretch so that [m - c (m - l), m + c (u - m)]
    holds ``coverage`` of the actuals (split conformal, Romano et al. 2019, as a scale). Each point needs

        r = max((m - y) / (m - l), (y - m) / (u - m))      (c >= r puts y inside)

    and c is the ceil((n + 1) coverage)-th smallest r of the n points (the largest when n is too small)."""
    m, lo, hi, y = (np.asarray(a, np.float64).ravel() for a in (median, lower, upper, actual))
    tiny = 1e-9 * np.maximum(np.abs(m), 1.0)  # a band of width 0 needs a finite, large factor, not inf
    r = np.maximum((m - y) / np.maximum(m - lo, tiny), (y - m) / np.maximum(hi - m, tiny))
    k = min(len(r), math.ceil((len(r) + 1) * coverage))
    return float(max(np.sort(r)[k - 1], 1e-6)) if len(r) else 1.0


def stretch(quantiles: dict[float, np.ndarray], scale: float) -> dict[float, np.ndarray]:
    """Each quantile's distance from the median (``quantiles[0.5]``) times ``scale`` (the factor of ``calibrate``)."""
    m = quantiles[0.5]
    return {q: m + scale * (v - m) for q, v in quantiles.items()}


def refit(run_dir: str | Path) -> dict[str, Any]:
    """Train a run's model afresh on every point of its history, the held-out last horizons too, for the number of
    steps of its best evaluation (``--refit``); the new model becomes ``best.pt``, keeping the interval scale that
    validation calibrated, and the validated model moves to ``validated.pt``. Returns what ``summary.json``'s
    ``refit`` entry records: {"steps", "elapsed_s", "validated_step"}."""
    from dataclasses import replace

    from rnnkit.checkpoint import load_checkpoint, save_checkpoint
    from rnnkit.train import train

    run_dir = Path(run_dir)
    best = load_checkpoint(run_dir / "best.pt", kind=ForecastTask.name)
    config = ForecastConfig.from_dict(best["config"])
    if config.data.validation != "last":
        raise ConfigError("refit needs a run validated on a held-out horizon (--validation last)")
    steps = max(int(best["step"]), 1)
    t = replace(config.train, max_steps=steps, max_minutes=0.0, max_epochs=0.0, patience=0, eval_every=steps,
                refit=False)  # fmt: skip
    task = ForecastTask(replace(config, data=replace(config.data, validation="none"), train=t))
    log.info("refit: %d steps on every point (the step of the best evaluation)", steps)
    result = train(task, run_dir / "refit", plots=False)
    payload = load_checkpoint(run_dir / "refit" / "last.pt", kind=ForecastTask.name)
    for key, default in (("interval_scale", 1.0), ("combine", "none")):  # what validation chose
        payload["artefacts"][key] = best["artefacts"].get(key, default)
    payload["metrics"] = best["metrics"]  # the validated model's scores: the refit's are in-sample
    if not (run_dir / "validated.pt").exists():
        os.replace(run_dir / "best.pt", run_dir / "validated.pt")
    save_checkpoint(run_dir / "best.pt", payload)
    record = {"steps": result.steps, "elapsed_s": result.elapsed_s, "validated_step": int(best["step"])}
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        atomic_write_json(summary_path, {**summary, "refit": record})
    return record


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
    tuned = (  # the heads for real-valued series: MASE scores their medians alike
        Param("model", "hidden_size", choices=(16, 32, 64, 128)),
        Param("model", "num_layers", low=1, high=3),
        Param("model", "head", choices=("gaussian", "studentt")),
        Param("model", "id_embedding", choices=(0, 8)),
        Param("train", "batch_size", choices=(32, 64, 128)),
    )

    @property
    def head(self) -> ForecastHead:
        """The head strategy of ``model.head`` (the config's string, as an object: loss, sampling, quantiles)."""
        return HEADS[self.config.model.head]()

    @property
    def combination(self) -> Combination:
        """The strategy of ``model.combine``; for ``auto``, the one the held-out horizon chose (``chosen``)."""
        name = self.config.model.combine
        return COMBINATIONS[getattr(self, "chosen", "none") if name == "auto" else name]()

    @property
    def auto_tries_theta(self) -> bool:
        """Whether ``auto`` weighs Theta at each evaluation: there is a held-out horizon to judge it on, no
        covariates (Theta cannot read them) and real values (Theta's forecasts are not counts: negbin)."""
        real = self.config.model.head != "negbin"
        return self.held_out and real and not getattr(self, "covariates", None)

    @property
    def held_out(self) -> bool:
        """Whether each series' last horizon is held out for validation (``--validation last``), not trained on."""
        return self.config.data.validation == "last"

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
        need = H + 1 + (H if self.held_out else 0)  # points to validate on: a training window before the last H
        short = [s for s in data.series if len(s) < need]
        if short and d.too_short == "error":
            how = "horizon + 1 points to train on" + (" after the held-out last horizon" if self.held_out else "")
            raise DataError(
                f"{data.source}: series {short[0].id!r} has {len(short[0])} points, fewer than {need} ({how}; "
                f"{len(short)} such series); drop them with --min-length {need}"
                + (" or validate in-sample with --validation none" if self.held_out else "")
                + " (--too-short keep trains on them without validating)"
            )
        if short and d.too_short == "drop":
            log.warning("dropped %d of %d series shorter than %d points (2H + 1 with a held-out last horizon)",
                        len(short), len(data), need)  # fmt: skip
            self.dropped += len(short)
            data.series = [s for s in data.series if len(s) >= need]
            short = []
        untrained = sum(len(s) <= H for s in data.series)  # no window of H observed steps after a context point
        self.too_short = {"unvalidated_series": len(short), "untrained_series": untrained}
        if not any(len(s) > H for s in data.series):
            raise DataError(f"{data.source}: no series has the {H + 1} points of one training window (H = {H})")
        if short and self.held_out:
            log.warning("%d of %d series have fewer than %d points: trained on every window they hold (%d of them "
                        "hold none: H + 1 = %d points) and forecast, but not validated on",
                        len(short), len(data), need, untrained, H + 1)  # fmt: skip
        elif short:
            log.warning("%d of %d series have fewer than H + 1 = %d points: forecast, but no window of them is "
                        "trained or validated on", len(short), len(data), need)  # fmt: skip
        self.validated = np.array([i for i, s in enumerate(data.series) if len(s) >= need], np.int64)
        if not len(self.validated):
            raise DataError(f"{data.source}: no series has the {need} points to validate on (horizon + 1 to train on"
                            + (" and the held-out last horizon" if self.held_out else "") + f", H = {H})"
                            + ("; validate in-sample with --validation none" if self.held_out else ""))  # fmt: skip
        cut = H if self.held_out else 0
        train_series = [drop_last(s, cut) if len(s) >= need else s for s in data.series]
        self.head.check_data(data)
        if artefacts is None:
            self._fit(data, train_series)
        self.history = data
        index = {sid: i for i, sid in enumerate(self.ids)}
        self.run_ids = np.array([index.get(s.id, -1) for s in data.series], np.int64)  # row -> embedding row
        self.train_series = train_series
        self.train_windows = self.windows(self.train_series)
        self.pairs = window_pairs(self.train_series, H)
        self.val_windows = self.windows(data.series)

    def _fit(self, data: SeriesSet, train_series: list[Series]) -> None:
        d = self.config.data
        self.axis = data.axis
        self.season = d.season_length or data.axis.season_length()
        self.horizon = d.horizon
        self.context = d.context_length or max(2 * d.horizon, 2 * self.season)
        self.lags = parse_lags(self.config.model.lags, self.season)
        self.ids = [s.id for s in data.series]
        self.interval_scale = 1.0  # set from the validation residuals at each evaluation (``calibrate``)
        self.chosen = "none"  # --combine auto: set at each evaluation from the held-out MASE (``evaluate``)
        self.covariates = list(data.covariates)
        if self.covariates:
            values = np.concatenate([s.covariates for s in train_series])
            mean, std = values.mean(0), values.std(0)
            self.cov_mean, self.cov_std = mean.tolist(), np.where(std > 1e-12, std, 1.0).tolist()
        else:
            self.cov_mean, self.cov_std = [], []

    def check_compatible(self, data: SeriesSet) -> None:
        """A file read for a trained run has the run's covariate columns (its times are put on the run's grid)."""
        if getattr(self, "covariates", None) is not None and data.covariates != self.covariates:
            raise DataError(f"{data.source}: covariate columns {data.covariates} differ from the run's "
                            f"{self.covariates}")  # fmt: skip

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
        self.interval_scale = float(artefacts.get("interval_scale", 1.0))  # runs from before calibration: 1
        self.chosen = str(artefacts.get("combine", "none"))  # runs from before combinations: the network alone

    def artefacts(self) -> dict[str, Any]:
        return {
            "axis": self.axis.to_dict(), "season": self.season, "horizon": self.horizon, "context": self.context,
            "lags": list(self.lags), "ids": self.ids, "covariates": self.covariates, "cov_mean": self.cov_mean,
            "cov_std": self.cov_std, "interval_scale": self.interval_scale, "combine": self.chosen,
        }  # fmt: skip

    def write_files(self, run_dir: Path, artefacts: dict[str, Any] | None = None) -> None:
        atomic_write_json(run_dir / "series.json", {
            "frequency": self.axis.name, **(artefacts or self.artefacts()), "dropped_short_series": self.dropped,
            **self.too_short, "filled_values": self.history.filled,
        })  # fmt: skip

    def finish_files(self, run_dir: Path) -> None:
        """series.json with best.pt's interval scale and combination: the ones its forecasts use."""
        from rnnkit.checkpoint import load_checkpoint

        if (run_dir / "best.pt").is_file():
            self.write_files(run_dir, load_checkpoint(run_dir / "best.pt", kind=self.name)["artefacts"])

    def describe(self) -> dict[str, Any]:
        return {
            "series": len(self.train_series), "train_windows": len(self.pairs), "frequency": self.axis.name,
            "season_length": self.season, "horizon": self.horizon, "context_length": self.context,
            "lags": list(self.lags), "covariates": len(self.covariates), "dropped_series": self.dropped,
            "validated_series": len(self.validated), **self.too_short, "combine": self.config.model.combine,
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

    def windows(self, series: list[Series]) -> Windows:
        feats = [self.features(s.start + self.axis.step * np.arange(len(s)), s.covariates) for s in series]
        return Windows(series, feats, self.context + max(self.lags))

    def window_batch(self, windows: Windows, series: np.ndarray, ends: np.ndarray) -> dict[str, Tensor]:
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
        names = ["inputs", *(["ids"] if ids else []), *ins]
        axes = {"inputs": {0: "batch", 1: "time"}, "ids": {0: "batch"}, "params": {0: "batch", 1: "time"}}
        axes = {k: v for k, v in axes.items() if k in names or k == "params"} | batch_axes(ins + outs)
        graph = ForecastGraph(to_torch_modules(model).eval(), bool(ids))
        return [Graph(graph, (x, *ids, *state), names, ["params", *outs], axes)]

    def batches(self, rank: int, world_size: int) -> WindowBatches:
        if len(self.pairs) < world_size:
            raise DataError(f"{len(self.pairs)} training windows cannot be shared by {world_size} processes")
        t = self.config.train
        take = partial(self.window_batch, self.train_windows)  # (series, ends) -> a batch of training windows
        return WindowBatches(self.pairs, rank, world_size, batch_size=t.batch_size, seed=t.seed,
                             sampling=self.config.data.sampling, take=take)  # fmt: skip

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

    def validation_batch(self) -> dict[str, Tensor]:
        """The windows ``evaluate`` scores first: each series' last horizon (up to a training batch of series)."""
        n = self.validated[: self.config.train.batch_size]
        ends = np.array([len(self.history.series[i]) for i in n], np.int64)
        return self.window_batch(self.val_windows, n, ends)

    def loss(self, model: nn.Module, batch, state, device: torch.device) -> tuple[Tensor, None]:
        total, count = self._window_loss(model, batch, device)
        return total / count.clamp(min=1), None

    # --- forecasting ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def forecast(self, model: Forecaster, series: list[Series], *, horizon: int | None = None,
                 levels: tuple[float, ...] | None = None, num_samples: int | None = None,
                 future: dict[str, np.ndarray] | None = None, seed: int = 0, device="cpu",
                 batch_size: int = 256, progress: Callable[[int], None] | None = None,
                 calibrated: bool = True, combined: bool = True) -> dict[str, Any]:  # fmt: skip
        """Forecasts of the ``horizon`` steps after each series' last point.

        Returns {"median": (N, h), "quantiles": {level: (N, h)}, "times": (N, h) ordinals}. ``future`` maps a
        series id to its covariates (h, C) over the horizon (needed when the run has covariates). ``progress``
        is called with the number of series done after each batch of them. ``calibrated``: each quantile's
        distance from the median times the run's ``interval_scale`` (see ``calibrate``); False: the head's own.
        ``combined``: mixed with Theta's forecast as the run's ``combination`` says; False: the network's alone.
        """
        h = self.horizon if horizon is None else horizon
        head = self.head
        levels = tuple(sorted(set(levels or self.config.model.levels()) | {0.5}))
        if h < 1:
            raise ValueError(f"horizon must be >= 1, got {h}")
        head.check_request(h, levels, self.horizon, model.levels)
        S = num_samples or self.config.model.num_samples
        combination = self.combination if combined else NoCombination()
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
                    q = combination.combine([s.values for s in chunk], q, self.season)
                    for level in levels:
                        quantiles[level].append(q[level])
                    if progress is not None:
                        progress(len(chunk))
        finally:
            model.train(was_training)
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros((0, h))  # noqa: E731
        out = {q: cat(v) for q, v in quantiles.items()}
        if calibrated and self.interval_scale != 1.0:
            out = stretch(out, self.interval_scale)
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
        """Teacher-forced loss and forecast accuracy on the last horizon of each series long enough to validate on
        (held out, or in-sample); with a held-out horizon, the intervals are calibrated on it (``calibrate``)."""
        H = self.horizon
        series = [self.history.series[i] for i in self.validated]
        n = self.validated
        ends = np.array([len(s) for s in series], np.int64)
        total, count = 0.0, 0.0
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for start in range(0, len(n), 256):
                batch = self.window_batch(self.val_windows, n[start : start + 256], ends[start : start + 256])
                t, c = self._window_loss(model, batch, device)
                total, count = total + float(t), count + float(c)
        model.train(was_training)
        histories = [s.values[:-H] for s in series]
        cut = [drop_last(s, H) for s in series]
        future = {s.id: s.covariates[-H:] for s in series} if self.covariates else None
        f = self.forecast(model, cut, num_samples=self.config.data.eval_samples, seed=self.config.train.seed,
                          future=future, device=device, calibrated=False, combined=False)  # fmt: skip
        actuals = [s.values[-H:] for s in series]
        f = self._combine_validated(histories, actuals, f)
        m = forecast_scores(histories, actuals, list(f["median"]), self.season,
                            {q: list(v) for q, v in f["quantiles"].items()})  # fmt: skip
        if self.held_out and self.config.model.calibration == "conformal":
            self.interval_scale = calibrate(f["median"], f["quantiles"][0.1], f["quantiles"][0.9], np.stack(actuals))
            f = {**f, "quantiles": stretch(f["quantiles"], self.interval_scale)}
        self.last_forecast = (cut, f)
        return {"loss": total / max(count, 1.0), "mase": m["mase"], "smape": m["smape"],
                "coverage_80": m["coverage_80"], "quantile_loss": m["quantile_loss"],
                "interval_scale": self.interval_scale,
                "theta_weight": 0.5 if self.combination.name == "theta" else 0.0}  # fmt: skip

    def _combine_validated(self, histories: list[np.ndarray], actuals: list[np.ndarray],
                           f: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """The network's validation forecast ``f`` combined as the run says. ``--combine auto`` first chooses, by
        the held-out MASE, between the network alone and its mean with Theta (``chosen``, saved with the run):
        validation is where a run's settings are chosen, and on series where Theta errs the mean gains nothing."""
        combine = self.config.model.combine
        tries = combine == "theta" or (combine == "auto" and self.auto_tries_theta)
        if tries and getattr(self, "_val_theta", None) is None:  # the held-out histories never change
            self._val_theta = theta_forecasts(histories, self.horizon, self.season)
        names = ("none", "theta") if tries else ("none",)
        mixed = {name: COMBINATIONS[name]().combine(histories, f["quantiles"], self.season,
                                                    point=getattr(self, "_val_theta", None))
                 for name in names}  # fmt: skip
        if combine == "auto":
            mase = {name: forecast_scores(histories, actuals, list(q[0.5]), self.season)["mase"]
                    for name, q in mixed.items()}  # fmt: skip
            self.chosen = "theta" if "theta" in mase and mase["theta"] < mase["none"] else "none"  # nan: none
        q = mixed[self.combination.name]
        return {**f, "quantiles": q, "median": q[0.5]}

    def plots(self, model: nn.Module, run_dir: Path, device: torch.device) -> None:
        from rnnkit.metrics import plot_forecasts

        if getattr(self, "last_forecast", None) is None:
            self.evaluate(model, device, None)
        cut, f = self.last_forecast
        H = self.horizon
        actuals = {s.id: s.values[-H:] for s in (self.history.series[i] for i in self.validated)}
        where = "held-out last horizon" if self.held_out else "last horizon (in-sample)"
        plot_forecasts(cut, f, self.axis, run_dir / "forecast.png", actuals=actuals, title=f"validation: {where}")

    def after_training(self, run_dir: Path) -> list[str]:
        """``--refit``: retrain on every point for the steps validation chose (``refit``)."""
        if not self.config.train.refit:
            return []
        r = refit(run_dir)
        return [f"refit on every point for {r['steps']} steps (the best evaluation's), {r['elapsed_s']:.1f} s: "
                f"best.pt (the validated model: validated.pt)"]  # fmt: skip

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
        notes, files = [f"{len(history.series)} series x {h} steps"], {}
        if plot:  # drawn into memory: the CLI writes it with the rows, both or neither
            png = io.BytesIO()
            plot_forecasts(history.series, f, history.axis, png, title=f"forecasts of {data}")
            files[plot] = png.getvalue()
            notes.append(f"plot: {plot}")
        return Table(["id", "time", "forecast", *(f"q{q:g}" for q in shown)], rows, notes=notes, files=files)

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
