"""The Theta method and the forecasts combined with it: by hand, against statsmodels' ThetaModel, and in a run."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest

from conftest import one_error_line
from rnnkit.checkpoint import load_run
from rnnkit.cli import main
from rnnkit.data.series import read_series
from rnnkit.tasks.forecast_combine import ThetaCombination, _ses, is_seasonal, seasonal_indices, theta_forecasts
from rnnkit.tasks.forecasting import ForecastConfig, ForecastTask

# --- Theta by hand --------------------------------------------------------------------------------------------


def test_theta_continues_a_straight_line_at_half_its_slope():
    y = 5 + 2 * np.arange(20.0)
    # SES lags a line unless alpha = 1 (one-step errors of 2, the least squares); drift (1 - 0^n) / 1 = 1
    f = theta_forecasts([y], 4, 1)[0]
    np.testing.assert_allclose(f, y[-1] + 2 / 2 * (np.arange(4) + 1))


def test_theta_repeats_a_pure_season_on_a_flat_level():
    s = np.array([0.8, 1.0, 1.2, 1.0])
    y = 50 * np.tile(s, 6)  # 24 points, m = 4: the 2x4 moving average is 50 throughout
    assert is_seasonal(y, 4)
    np.testing.assert_allclose(seasonal_indices(y, 4, True), s)
    np.testing.assert_allclose(seasonal_indices(y - 60, 4, False), 50 * (s - 1), atol=1e-12)
    np.testing.assert_allclose(theta_forecasts([y], 6, 4)[0], 50 * s[np.arange(6) % 4])
    # the same season around a negative level: additive indices, forecast alike
    np.testing.assert_allclose(theta_forecasts([y - 60], 6, 4)[0], 50 * s[np.arange(6) % 4] - 60)


def test_theta_of_constant_short_and_seasonless_series():
    f = theta_forecasts([np.full(10, 7.0), np.array([3.0]), np.array([3.0, 5.0]), np.arange(5.0)], 3, 12)
    assert np.all(np.isfinite(f))
    np.testing.assert_allclose(f[0], 7.0)  # no trend, no season, no division by a zero variance
    np.testing.assert_allclose(f[1], 3.0)  # one point: the naive forecast
    assert not is_seasonal(np.arange(20.0), 12)  # fewer than two seasons: not tested
    assert theta_forecasts([], 3, 1).shape == (0, 3)


def test_ses_alpha_one_is_the_naive_level_and_zero_the_first_point():
    x = np.array([[1.0, 4.0, 2.0, 8.0]])
    sse, level = _ses(x, np.array([4]), np.array([0.0, 1.0]))
    np.testing.assert_allclose(level, [[1.0, 8.0]])
    np.testing.assert_allclose(sse, [[9 + 1 + 49, 9 + 4 + 36]])


# --- against statsmodels ----------------------------------------------------------------------------------------


def _series(seed: int) -> tuple[np.ndarray, int]:
    """A level walk with a trend, a season of 1, 4 or 12 (multiplicative, or additive below zero), and noise."""
    rng = np.random.default_rng(seed)
    m = (1, 4, 12)[seed % 3]
    n = int(rng.integers(2 * m + 3, 6 * m + 20))
    t = np.arange(n)
    level = 100 + np.cumsum(rng.normal(0.5, 2.0, n))
    season = 1 + 0.2 * np.sin(2 * np.pi * t / m) if m > 1 else np.ones(n)
    y = level * season + rng.normal(0, 1.0, n)
    return (y - 150 if seed % 4 == 3 else y), m


def test_theta_matches_statsmodels_theta_model():
    """Every seasonality decision, index and slope as statsmodels computes them, and the forecasts within 1e-3
    wherever statsmodels' optimiser reached the least one-step squared error (elsewhere ours is lower)."""
    pytest.importorskip("statsmodels")
    from statsmodels.tsa.forecasting.theta import ThetaModel

    matched = 0
    for seed in range(30):
        y, m = _series(seed)
        model = ThetaModel(y, period=m, deseasonalize=m > 1 and len(y) >= 2 * m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = model.fit()
            theirs = np.asarray(fit.forecast(8))
        ours = theta_forecasts([y], 8, m)[0]
        assert is_seasonal(y, m) == model._has_seasonality, seed
        x = y
        if model._has_seasonality:
            mul = model.method.startswith("mul")
            np.testing.assert_allclose(seasonal_indices(y, m, mul), fit._seasonal, rtol=1e-10)
            x = y / fit._seasonal[np.arange(len(y)) % m] if mul else y - fit._seasonal[np.arange(len(y)) % m]
        slope = np.polyfit(np.arange(len(x)), x, 1)[0]
        assert slope == pytest.approx(fit.params["b0"], rel=1e-8)
        sse_theirs = _ses(x[None], np.array([len(x)]), np.array([fit.params["alpha"]]))[0][0, 0]
        sse_ours = _ses(x[None], np.array([len(x)]), np.linspace(0, 1, 2001))[0].min()
        assert sse_ours <= sse_theirs * (1 + 1e-6), seed
        if sse_theirs <= sse_ours * (1 + 1e-6):
            np.testing.assert_allclose(ours, theirs, rtol=1e-3, err_msg=str(seed))
            matched += 1
    assert matched >= 20


# --- the combination --------------------------------------------------------------------------------------------


def test_the_combination_moves_every_quantile_with_the_median():
    hist = [np.arange(1.0, 13.0), 50 + np.zeros(12)]
    median = np.array([[10.0, 12.0], [40.0, 40.0]])
    q = {0.1: median - 3, 0.5: median, 0.9: median + 5}
    out = ThetaCombination().combine(hist, q, 1)
    theta = theta_forecasts(hist, 2, 1)
    np.testing.assert_allclose(out[0.5], (median + theta) / 2)
    for level in (0.1, 0.9):
        np.testing.assert_allclose(out[level] - out[0.5], q[level] - median)


def _write_series(path, rows_of):
    path.write_text("id,time,value\n" + "\n".join(rows_of) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run at the default ``combine`` (auto) on a noisy season."""
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("combine")
    data = _write_series(d / "h.csv", [f"s{i},{t},{10 + 3 * np.sin(2 * np.pi * (t + i) / 12) + rng.normal(0, 0.5):.5f}"
                                       for i in range(6) for t in range(72)])  # fmt: skip
    status = main(["train", "forecast", "--data", str(data), "--horizon", "6", "--season-length", "12",
                   "--head", "gaussian", "--hidden-size", "8", "--max-steps", "20", "--eval-every", "10",
                   "--num-samples", "8", "--eval-samples", "8", "--out", str(d / "run")])  # fmt: skip
    assert status == 0
    return d / "run", data


def test_theta_forecasts_the_mean_of_the_network_and_theta(run):
    path, data = run
    loaded = load_run(path)
    task, model = loaded.task, loaded.model
    assert task.config.model.combine == "auto" and task.chosen in ("none", "theta")
    saved = json.loads((path / "series.json").read_text())  # rewritten from best.pt at the end of training
    assert saved["combine"] == task.chosen and saved["interval_scale"] == task.interval_scale
    series = read_series(str(data)).series
    forecasts = {}
    for name in ("theta", "none"):
        task.config = replace(task.config, model=replace(task.config.model, combine=name))
        forecasts[name] = task.forecast(model, series, seed=4)
    combined, alone = forecasts["theta"], forecasts["none"]
    theta = theta_forecasts([s.values for s in series], 6, 12)
    np.testing.assert_allclose(combined["median"], (alone["median"] + theta) / 2, rtol=1e-6)
    for q in (0.1, 0.9):
        np.testing.assert_allclose(combined["quantiles"][q] - combined["median"],
                                   alone["quantiles"][q] - alone["median"], atol=1e-6)  # fmt: skip


def _prepared(path, **model) -> ForecastTask:
    task = ForecastTask(ForecastConfig.from_dict({"model": {"head": "gaussian", **model},
                                                  "data": {"data": str(path), "horizon": 4}}))  # fmt: skip
    task.prepare(None)
    return task


def test_auto_chooses_theta_only_where_it_lowers_the_held_out_mase(tmp_path):
    """Theta continues a line at half its slope (a few units low here): its mean with a forecast 30 too high is
    closer, so auto takes it; its mean with a perfect forecast only adds Theta's error, so auto keeps the network's."""
    data = _write_series(tmp_path / "lines.csv", [f"s{i},{t},{10 + (i + 1) * t}" for i in range(3) for t in range(30)])
    task = _prepared(data)
    histories = [s.values[:-4] for s in task.history.series]
    actuals = [s.values[-4:] for s in task.history.series]
    truth = np.stack(actuals)
    for offset, chosen in ((30.0, "theta"), (0.0, "none")):
        median = truth + offset
        f = {"median": median, "quantiles": {0.1: median - 1, 0.5: median, 0.9: median + 1}}
        out = task._combine_validated(histories, actuals, f)
        assert task.chosen == chosen and task.combination.name == chosen
        expected = (median + theta_forecasts(histories, 4, 1)) / 2 if chosen == "theta" else median
        np.testing.assert_allclose(out["median"], expected)
        np.testing.assert_allclose(out["quantiles"][0.9] - out["median"], 1.0)
    assert task.artefacts()["combine"] == "none"
    assert not _prepared(data, head="negbin").auto_tries_theta  # counts: the network's alone
    assert _prepared(data, combine="none").combination.name == "none"


def test_runs_saved_before_combinations_load_without_them(run):
    path, _ = run
    saved = load_run(path).task.config.to_dict()
    del saved["model"]["combine"]
    assert ForecastConfig.from_saved(saved).model.combine == "none"
    assert ForecastConfig.from_dict(saved).model.combine == "auto"


def test_an_unknown_combination_is_one_error_line(run, capsys):
    _, data = run
    status = main(["train", "forecast", "--data", str(data), "--horizon", "6", "--combine", "ets"])
    assert "combine" in one_error_line(capsys, status)
