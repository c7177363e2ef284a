"""Shared pieces of the forecasting benchmarks: the long CSV, the rnnkit CLI round trip, the classical baselines.

rnnkit is driven through its command line, ``python -m rnnkit train forecast ...`` then ``python -m rnnkit
forecast ...``, in a child process, so a benchmark measures exactly what a user would run. The child's progress goes
to our stderr; the tables go to stdout.

The baselines are functions ``(y, h, m) -> (h,) point forecasts`` on one series' history ``y`` with season length
``m``. Each is the fixed textbook model, not an automatic model search:

* ``seasonal_naive``: the last season repeated (m = 1: the last value);
* ``theta``: statsmodels ``ThetaModel`` (Assimakopoulos & Nikolopoulos 2000, in Hyndman & Billah's SES-with-drift
  form). Deseasonalisation is tried only when m > 1 and the history holds two full seasons; the model then applies
  its classical decomposition (multiplicative for a positive series, else additive) only where its 90% test for
  seasonality at lag m passes, as in the M3 Theta method;
* ``ets_damped``: statsmodels ``ETSModel`` (the state-space ETS of Hyndman et al. 2008, fitted by maximum
  likelihood): additive errors, additive damped trend, and *multiplicative* seasonality when m > 1, the history
  holds two full seasons and is positive (*additive* seasonality when it holds two seasons but touches 0 or
  below; no seasonal term otherwise): ETS(A,Ad,M), ETS(A,Ad,A) or ETS(A,Ad,N).

A constant history, a fit that raises, or a forecast that is not finite falls back to the naive forecast (the last
value), counted in the ``fallbacks`` Counter the caller passes, so the table can say how often it happened.
statsmodels' ConvergenceWarning and the optimisers' RuntimeWarnings (overflow on a trial step) are silenced inside
the fits; every fit is still checked for a finite forecast.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from _classify_common import rnnkit_command, run_command, train_run

RNNKIT_OPTIONS_HELP = 'extra `rnnkit train forecast` options as one string, e.g. "--hidden-size 64 --seed 1"'


def provenance(script: str, argv: list[str] | None) -> str:
    """Two lines for beneath a table: the command that produced it, and the machine it ran on."""
    args = sys.argv[1:] if argv is None else argv
    cpu = platform.processor() or platform.machine()
    try:
        torch = f"torch {metadata.version('torch')}"
    except metadata.PackageNotFoundError:
        torch = "no torch"
    return (
        f"Reproduce: .venv/bin/python benchmarks/{script} {shlex.join(args)}\n"
        f"Machine: {cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {torch}"
    )


# --- the rnnkit round trip -----------------------------------------------------------------------------------------


def write_long_csv(path: Path, series: dict[str, np.ndarray]) -> None:
    """Write ``series`` ({id: values}) as the long CSV rnnkit reads: header ``id,time,value``, time = 1..n."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "time", "value"])
        for sid, values in series.items():
            writer.writerows((sid, t, repr(float(v))) for t, v in enumerate(np.asarray(values, np.float64), start=1))


def combination_of(run_dir: Path) -> str:
    """What a trained run forecasts with: "theta" (the mean of its network's and Theta's) or "none"."""
    try:
        return str(json.loads((run_dir / "series.json").read_text(encoding="utf-8")).get("combine", "none"))
    except (OSError, ValueError):
        return "unknown"


def train_forecaster(
    csv_path: Path, out_dir: Path, horizon: int, season_length: int, options: list[str]
) -> tuple[dict, float]:
    """``rnnkit train forecast --data CSV --horizon H --season-length M --out OUT_DIR OPTIONS`` (see ``train_run``)."""
    args = ["--data", str(csv_path), "--horizon", str(horizon), "--season-length", str(season_length), *options]
    return train_run("forecast", out_dir, args)


def _time_key(text: str) -> tuple[int, float | str]:
    """Sort key of a time cell: numbers in numeric order, anything else (dates) as text after them."""
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


def read_forecast_csv(path: Path) -> dict[str, dict[str | float, np.ndarray]]:
    """``id,time,forecast,q0.1,...`` -> {id: {"forecast": (H,), 0.1: (H,), ...}}, rows in time order.

    Every column whose name starts with ``q`` is a quantile, keyed by its level as a float (``q0.1`` -> 0.1).
    """
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = {"id", "time", "forecast"} - set(fields)
        if missing:
            raise RuntimeError(f"{path} lacks the column(s) {sorted(missing)}; its header is {fields}")
        levels = {name: float(name[1:]) for name in fields if name.startswith("q")}
        rows: dict[str, list[dict[str, str]]] = {}
        for row in reader:
            rows.setdefault(row["id"], []).append(row)
    out: dict[str, dict[str | float, np.ndarray]] = {}
    for sid, items in rows.items():
        items.sort(key=lambda r: _time_key(r["time"]))
        columns: dict[str | float, np.ndarray] = {"forecast": np.array([float(r["forecast"]) for r in items])}
        for name, level in levels.items():
            columns[level] = np.array([float(r[name]) for r in items])
        out[sid] = columns
    return out


def forecast(run_dir: Path, csv_path: Path, out_csv: Path, options: list[str]) -> dict[str, dict]:
    """``rnnkit forecast --run RUN --data CSV --out OUT_CSV --force OPTIONS`` -> ``read_forecast_csv(OUT_CSV)``."""
    cmd = rnnkit_command("forecast", "--run", str(run_dir), "--data", str(csv_path), "--out", str(out_csv), "--force",
                         *options)  # fmt: skip
    run_command(cmd, "rnnkit forecast")
    if not out_csv.is_file():
        raise RuntimeError(f"rnnkit forecast finished but wrote no {out_csv}")
    return read_forecast_csv(out_csv)


# --- classical baselines -------------------------------------------------------------------------------------------


def naive(y: np.ndarray, h: int) -> np.ndarray:
    """The last value, h times."""
    return np.full(h, float(y[-1]))


def seasonal_naive(y: np.ndarray, h: int, m: int, *, fallbacks: Counter | None = None) -> np.ndarray:
    """The last full season repeated: f[i] = y[n - m + (i mod m)]; the naive forecast when m = 1 or n < m.

    ``fallbacks`` is accepted for a uniform signature; this method never falls back.
    """
    y = np.asarray(y, np.float64)
    if m <= 1 or len(y) < m:
        return naive(y, h)
    return y[len(y) - m + np.arange(h) % m]


def _seasonal(y: np.ndarray, m: int) -> bool:
    """Whether a seasonal term is tried: m > 1 and two full seasons of history."""
    return m > 1 and len(y) >= 2 * m


def _or_naive(name: str, fit: Callable[[np.ndarray, int, int], np.ndarray], y, h: int, m: int,
              fallbacks: Counter | None) -> np.ndarray:  # fmt: skip
    """``fit(y, h, m)``, or the naive forecast (counted under ``name``) on a constant history, an exception or a
    forecast that is not h finite numbers."""
    y = np.asarray(y, np.float64)
    if np.ptp(y) > 0:
        try:
            with warnings.catch_warnings():
                from statsmodels.tools.sm_exceptions import ConvergenceWarning

                warnings.simplefilter("ignore", ConvergenceWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                f = np.asarray(fit(y, h, m), np.float64)
            if f.shape == (h,) and np.all(np.isfinite(f)):
                return f
        except Exception:  # any fitting failure: the point is a forecast for every series
            pass
    if fallbacks is not None:
        fallbacks[name] += 1
    return naive(y, h)


def _theta(y: np.ndarray, h: int, m: int) -> np.ndarray:
    from statsmodels.tsa.forecasting.theta import ThetaModel

    return ThetaModel(y, period=m, deseasonalize=_seasonal(y, m)).fit().forecast(h)


def theta(y: np.ndarray, h: int, m: int, *, fallbacks: Counter | None = None) -> np.ndarray:
    """The Theta method (statsmodels ``ThetaModel``, theta = 2); see the module docstring."""
    return _or_naive("Theta", _theta, y, h, m, fallbacks)


def ets_damped_model(y: np.ndarray, m: int):
    """The unfitted statsmodels ``ETSModel``: ETS(A,Ad,M), (A,Ad,A) or (A,Ad,N) as the module docstring says."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    seasonal = ("mul" if np.min(y) > 0 else "add") if _seasonal(y, m) else None
    return ETSModel(y, error="add", trend="add", damped_trend=True, seasonal=seasonal,
                    seasonal_periods=m if seasonal else None)  # fmt: skip


def _ets(y: np.ndarray, h: int, m: int) -> np.ndarray:
    return ets_damped_model(y, m).fit(disp=False).forecast(h)


def ets_damped(y: np.ndarray, h: int, m: int, *, fallbacks: Counter | None = None) -> np.ndarray:
    """Exponential smoothing with an additive damped trend (statsmodels ``ETSModel``); see the module docstring."""
    return _or_naive("ETS", _ets, y, h, m, fallbacks)


def warm_up() -> None:
    """Fit each baseline once on a small seasonal series, untimed, so the first timed series does not pay for
    importing statsmodels."""
    y = 10 + np.sin(np.arange(36) * np.pi / 2) + np.arange(36) / 10  # (36,), season 4
    for method in (seasonal_naive, theta, ets_damped):
        method(y, 4, 4)
