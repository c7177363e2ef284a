"""Forecasting: the metrics by hand, the model's inputs and heads, learning a noisy season to its noise floor,
calibrated intervals, scale equivariance, times that continue each series, and the command line on bad input."""

from __future__ import annotations

import calendar
import json
import math

import numpy as np
import pytest
import torch

from conftest import one_error_line
from rnnkit.checkpoint import load_run
from rnnkit.cli import main
from rnnkit.data.series import Series, read_series
from rnnkit.errors import ConfigError, DataError
from rnnkit.metrics import forecast_scores, mase_scale, pinball, smape
from rnnkit.tasks.forecasting import ForecastConfig, ForecastTask, calibrate, parse_lags, parse_quantiles, refit
from rnnkit.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

LEVEL, AMPLITUDE, SIGMA, PERIOD = 10.0, 3.0, 0.5, 12


def _season(t, phase):
    return LEVEL + AMPLITUDE * np.sin(2 * np.pi * (t + phase) / PERIOD)


def _write(path, series: dict[str, tuple[int, np.ndarray]]):
    rows = ["id,time,value"] + [f"{sid},{start + k},{v:.6f}" for sid, (start, y) in series.items()
                                for k, v in enumerate(y)]  # fmt: skip
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def seasonal(tmp_path_factory):
    """40 series, a 12-step season (a phase each) plus N(0, 0.5) noise; history 120 steps, then 12 fresh ones."""
    d = tmp_path_factory.mktemp("seasonal")
    rng = np.random.default_rng(0)
    history, future = {}, {}
    for i in range(40):
        t = np.arange(132)
        y = _season(t, i) + rng.normal(0, SIGMA, t.size)
        history[f"s{i}"], future[f"s{i}"] = (0, y[:120]), (120, y[120:])
    return _write(d / "history.csv", history), _write(d / "future.csv", future)


def _config(path, **sections) -> ForecastConfig:
    m = {"hidden_size": 32, "num_layers": 1, "dropout": 0.0, "head": "gaussian"}
    d = {"data": str(path), "horizon": 12, "season_length": PERIOD}
    t = {"batch_size": 64, "max_steps": 500, "max_minutes": 0, "eval_every": 250, "log_every": 50, "lr": 1e-2}
    return ForecastConfig.from_dict({"model": m | sections.get("model", {}), "data": d | sections.get("data", {}),
                                     "train": t | sections.get("train", {})})  # fmt: skip


@pytest.fixture(scope="module")
def trained(seasonal, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    torch.set_num_threads(1)
    train(ForecastTask(_config(seasonal[0])), run)
    return run


# --- metrics, by hand -----------------------------------------------------------------------------------------


def test_smape_mase_and_pinball_by_hand():
    assert smape([100, 200], [110, 180]) == pytest.approx(100 * (10 / 210 + 20 / 380))
    assert smape([0, 1], [0, 1]) == 0.0  # 0/0 counts as a perfect forecast
    # in-sample seasonal naive at lag 2: |3-1|, |4-2|, |9-3| -> mean 10/3
    assert mase_scale([1, 2, 3, 4, 9], 2) == pytest.approx(10 / 3)
    assert mase_scale([1, 2], 12) == 1.0  # shorter than a season: lag 1
    assert math.isnan(mase_scale([5], 1))
    assert pinball([10, 10], [8, 12], 0.9).tolist() == pytest.approx([1.8, 0.2])


def test_forecast_scores_by_hand():
    m = forecast_scores(
        histories=[[1, 2, 3, 4], [5, 5, 5]],
        actuals=[[5, 6], [5, 5]],
        medians=[[4, 7], [6, 5]],
        season_length=1,
        quantiles={0.1: [[3, 5], [4, 4]], 0.5: [[4, 7], [6, 5]], 0.9: [[6, 8], [7, 6]]},
    )
    assert m["smape"] == pytest.approx((100 * (1 / 9 + 1 / 13) + 100 * (1 / 11)) / 2)
    assert m["mase"] == pytest.approx(1.0) and m["mase_skipped"] == 1  # the constant history has no MASE scale
    assert m["mae"] == pytest.approx(3 / 4) and m["rmse"] == pytest.approx(math.sqrt(3 / 4))
    assert m["coverage_80"] == 1.0 and (m["series"], m["points"]) == (2, 4)
    ql = np.mean([np.mean([0.2, 0.1, 0.1, 0.1]), np.mean([0.5, 0.5, 0.5, 0.0]), np.mean([0.1, 0.2, 0.2, 0.1])])
    assert m["quantile_loss"] == pytest.approx(ql)
    with pytest.raises(ValueError, match="one entry per series"):
        forecast_scores([[1]], [[1], [2]], [[1]], 1)


def test_quantile_and_lag_parsing():
    assert parse_quantiles("0.9, 0.1,0.5") == (0.1, 0.5, 0.9)
    for bad in ("", "0", "1", "a", "0.5,1.5"):
        with pytest.raises(ConfigError, match="numbers in"):
            parse_quantiles(bad)
    assert parse_lags("auto", 12) == (1, 2, 3, 12, 24) and parse_lags("auto", 1) == (1, 2, 3)
    assert parse_lags("24,1", 1) == (1, 24)
    with pytest.raises(ConfigError, match="lags"):
        parse_lags("0,1", 1)


# --- the model's inputs ---------------------------------------------------------------------------------------


def test_windows_scale_by_their_context_and_pad_before_the_series(seasonal):
    task = ForecastTask(_config(seasonal[0], data={"context_length": 6}, model={"lags": "1,2"}))
    task.prepare(None)
    assert task.context == 6 and task.lags == (1, 2)
    # a window whose horizon starts at point 3 of series 0: 3 context points observed, 3 padded
    batch = task.window_batch(task.train_windows, np.array([0]), np.array([3 + 12]))
    v, o = batch["values"][0], batch["observed"][0]  # maxlag 2 + C 6 + H 12 = 20 steps
    assert v.shape == (20,) and o[:5].sum() == 0 and o[5:].sum() == 15
    y = task.history.series[0].values
    assert torch.allclose(v[5:].double(), torch.from_numpy(y[:15]), atol=1e-5)
    s = task.context_scale(batch["values"], batch["observed"])
    assert s.item() == pytest.approx(np.abs(y[:3]).mean(), rel=1e-6)  # only the observed context points
    x = task.inputs(batch["values"], batch["observed"], batch["features"], batch["age"], s, torch.arange(2, 20))
    assert x.shape == (1, 18, task.input_size())
    # step 3 of the window (padded) reads lags 1 and 2 as 0 and unobserved; step 7 reads points 1 and 0, scaled
    assert x[0, 1, :4].tolist() == [0, 0, 0, 0]
    assert x[0, 5, :2].tolist() == pytest.approx([y[1] / s.item(), y[0] / s.item()], rel=1e-5)
    assert x[0, 5, 2:4].tolist() == [1, 1]


def test_validation_holds_out_the_last_horizon(seasonal):
    task = ForecastTask(_config(seasonal[0]))
    task.prepare(None)
    assert all(len(s) == 108 for s in task.train_series)
    assert task.pairs[:, 1].max() == 108 and len(task.pairs) == 40 * (108 - 12)
    none = ForecastTask(_config(seasonal[0], data={"validation": "none"}))
    none.prepare(None)
    assert none.pairs[:, 1].max() == 120


# --- learning ---------------------------------------------------------------------------------------------------


def test_learns_a_noisy_season_to_its_noise_floor_with_calibrated_intervals(trained, seasonal, capsys):
    status = main(["eval", "--run", str(trained), "--data", str(seasonal[0]), "--actuals", str(seasonal[1]), "--json"])
    m = json.loads(capsys.readouterr().out)
    assert status == 0 and m["series"] == 40 and m["points"] == 480
    floor = SIGMA * math.sqrt(2 / math.pi)  # E|e| of N(0, 0.5): the MAE of the true seasonal curve
    naive = forecast_scores(
        [s.values for s in read_series(seasonal[0]).series],
        [s.values for s in read_series(seasonal[1]).series],
        [s.values[-12:] for s in read_series(seasonal[0]).series],
        PERIOD,
    )
    assert m["mae"] < 1.15 * floor < naive["mae"], (m, floor, naive)
    assert 0.75 <= m["coverage_80"] <= 0.85, m


def test_a_series_times_1000_gets_forecasts_times_1000(trained, seasonal):
    run = load_run(trained)
    series = read_series(seasonal[0]).series[:5]
    big = [Series(s.id, s.start, s.values * 1000, s.covariates) for s in series]
    f, g = (run.task.forecast(run.model, x, seed=3) for x in (series, big))
    np.testing.assert_allclose(g["median"], 1000 * f["median"], rtol=1e-4)
    for q in (0.1, 0.9):
        np.testing.assert_allclose(g["quantiles"][q], 1000 * f["quantiles"][q], rtol=1e-4)


def test_forecasts_are_reproducible_by_seed_and_leave_the_global_rng_alone(trained, seasonal):
    run = load_run(trained)
    series = read_series(seasonal[0]).series[:3]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = run.task.forecast(run.model, series, seed=1)
    assert torch.equal(torch.rand(1), before)
    b = run.task.forecast(run.model, series, seed=1)
    c = run.task.forecast(run.model, series, seed=2)
    assert np.array_equal(a["median"], b["median"]) and not np.array_equal(a["median"], c["median"])


@pytest.mark.parametrize("head", ["studentt", "negbin", "quantile"])
def test_every_head_trains_and_forecasts(head, tmp_path):
    rng = np.random.default_rng(1)
    series = {f"c{i}": (0, rng.poisson(5 + 3 * np.sin(np.arange(60) * 2 * np.pi / 12 + i)).astype(float))
              for i in range(6)}  # fmt: skip
    data = _write(tmp_path / "counts.csv", series)
    cfg = _config(data, model={"head": head, "id_embedding": 3},
                  train={"max_steps": 30, "eval_every": 30}, data={"horizon": 6})  # fmt: skip
    result = train(ForecastTask(cfg), tmp_path / "run")
    assert math.isfinite(result.last["mase"]) and math.isfinite(result.last["loss"])
    run = load_run(tmp_path / "run")
    f = run.task.forecast(run.model, read_series(data).series, num_samples=50)
    assert f["median"].shape == (6, 6) and np.isfinite(f["median"]).all()
    assert (f["quantiles"][0.1] <= f["median"] + 1e-9).all() and (f["median"] <= f["quantiles"][0.9] + 1e-9).all()
    if head == "negbin":
        assert (f["median"] == np.round(f["median"])).all() and (f["median"] >= 0).all()
    assert (tmp_path / "run" / "forecast.png").stat().st_size > 0


def test_covariates_are_read_and_needed_for_the_future(tmp_path, capsys):
    rows = ["id,time,value,promo"]
    for i in range(3):
        for t in range(40):
            promo = (t + i) % 5 == 0
            rows.append(f"p{i},{t},{10 + 5 * promo},{int(promo)}")
    data = tmp_path / "promo.csv"
    data.write_text("\n".join(rows) + "\n")
    cfg = _config(data, data={"horizon": 5, "season_length": 1}, train={"max_steps": 20, "eval_every": 20})
    train(ForecastTask(cfg), tmp_path / "run")
    status = main(["forecast", "--run", str(tmp_path / "run"), "--data", str(data)])
    assert "--future FILE" in one_error_line(capsys, status)
    future = tmp_path / "future.csv"
    future.write_text("id,time,value,promo\n" + "".join(f"p{i},{t},,{(t + i) % 5 == 0:d}\n" for i in range(3)
                                                          for t in range(40, 45)))  # fmt: skip
    out = tmp_path / "f.csv"
    status = main(["forecast", "--run", str(tmp_path / "run"), "--data", str(data), "--future", str(future),
                   "--out", str(out)])  # fmt: skip
    assert status == 0 and len(out.read_text().splitlines()) == 1 + 3 * 5


# --- the command line ---------------------------------------------------------------------------------------------


def test_forecast_csv_continues_each_series_in_time(trained, seasonal, tmp_path, capsys):
    out = tmp_path / "f.csv"
    status = main(["forecast", "--run", str(trained), "--data", str(seasonal[0]), "--out", str(out),
                   "--quantiles", "0.05,0.5,0.95", "--plot", str(tmp_path / "f.png")])  # fmt: skip
    assert status == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "id,time,forecast,q0.05,q0.5,q0.95"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 40 * 12 and [r[1] for r in rows[:12]] == [str(t) for t in range(120, 132)]
    assert all(float(r[2]) == float(r[4]) for r in rows)  # the forecast is the median
    assert all(float(r[3]) <= float(r[4]) <= float(r[5]) for r in rows)
    assert (tmp_path / "f.png").stat().st_size > 0
    capsys.readouterr()
    status = main(["forecast", "--run", str(trained), "--data", str(seasonal[0]), "--out", str(out)])
    assert "exists; pass --force" in one_error_line(capsys, status)
    before = out.read_text()
    assert main(["predict", "--run", str(trained), "--data", str(seasonal[0]), "--out", str(out), "--force"]) == 0
    assert out.read_text().splitlines()[0] == "id,time,forecast,q0.1,q0.5,q0.9"  # predict = forecast for this task
    medians = [[line.split(",")[2] for line in text.splitlines()[1:]] for text in (before, out.read_text())]
    assert medians[0] == medians[1]  # the same seed gives the same forecasts


def test_forecast_times_continue_dated_series(tmp_path, capsys):
    rng = np.random.default_rng(2)
    rows = ["id,time,value"]
    for i, start in enumerate((2001, 2003)):
        for k in range(36):
            year, month = start + k // 12, k % 12 + 1
            rows.append(f"m{i},{year}-{month:02d}-{calendar.monthrange(year, month)[1]},{100 + rng.normal():.3f}")
    data = tmp_path / "monthly.csv"
    data.write_text("\n".join(rows) + "\n")
    cfg = _config(data, data={"horizon": 3, "season_length": 0}, train={"max_steps": 5, "eval_every": 5})
    train(ForecastTask(cfg), tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.task.season == 12 and run.task.axis.name == "monthly"  # inferred from the dates
    history = read_series(data)
    f = run.task.forecast(run.model, history.series)
    times = [[history.axis.format(t) for t in row] for row in f["times"]]
    assert times == [["2004-01-31", "2004-02-29", "2004-03-31"], ["2006-01-31", "2006-02-28", "2006-03-31"]]
    # one actual per series has no frequency of its own: it is read on the run's monthly grid
    actuals = tmp_path / "actuals.csv"
    actuals.write_text("id,time,value\nm0,2004-01-31,100\nm1,2006-01-31,101\n")
    assert main(["eval", "--run", str(tmp_path / "run"), "--data", str(data), "--actuals", str(actuals)]) == 0
    actuals.write_text("id,time,value\nm0,2004-02-29,100\nm1,2006-01-31,101\n")
    status = main(["eval", "--run", str(tmp_path / "run"), "--data", str(data), "--actuals", str(actuals)])
    assert "series 'm0' starts at 2004-02-29, but its history ends at 2003-12-31 (expected 2004-01-31)" in (
        one_error_line(capsys, status)
    )


def test_eval_and_forecast_refuse_bad_input_in_one_line(trained, seasonal, tmp_path, capsys):
    run, history, future = str(trained), str(seasonal[0]), str(seasonal[1])
    stranger = _write(tmp_path / "stranger.csv", {"zz": (120, np.ones(12))})
    late = _write(tmp_path / "late.csv", {f"s{i}": (121, np.ones(12)) for i in range(40)})
    cases = [
        (["eval", "--run", run, "--data", history], "needs --actuals FILE"),
        (["eval", "--run", run, "--data", history, "--actuals", str(stranger)], "series 'zz' is not in the history"),
        (["eval", "--run", run, "--data", history, "--actuals", str(late)],
         "series 's0' starts at 121, but its history ends at 119 (expected 120)"),
        (["eval", "--run", run, "--data", future, "--actuals", future], "starts at 120, but its history ends at 131"),
        (["forecast", "--run", run, "--data", history, "--quantiles", "0.5,2"], "--quantiles must be"),
        (["forecast", "--run", run, "--data", history, "--horizon", "0"], "must be >= 1"),
        (["forecast", "--run", run, "--data", str(tmp_path / "none.csv")], "no such file"),
        (["forecast", "--run", str(tmp_path), "--data", history], "not an rnnkit run folder"),
    ]  # fmt: skip
    for argv, match in cases:
        status = main(argv)
        assert match in one_error_line(capsys, status), argv


def test_train_refuses_bad_settings_and_short_series_before_writing(seasonal, tmp_path, capsys):
    history = str(seasonal[0])
    out = tmp_path / "run"
    short = _write(tmp_path / "short.csv", {"long": (0, np.arange(40.0)), "tiny": (0, np.arange(20.0))})
    cases = [
        (["--data", history], "needs --horizon H"),
        (["--horizon", "3"], "needs --data FILE"),
        (["--data", history, "--horizon", "-1"], "horizon must be an integer in [0, 100000]"),
        (["--data", str(short), "--horizon", "12", "--too-short", "error"],
         "series 'tiny' has 20 points, fewer than 25 (horizon + 1 points to train on after the held-out last "
         "horizon; 1 such series); drop them with --min-length 25"),
        (["--data", history, "--horizon", "3", "--head", "negbin"], "is not counts"),
        (["--data", history, "--horizon", "3", "--fill", "mean"], "fill must be one of"),
    ]  # fmt: skip
    for argv, match in cases:
        status = main(["train", "forecast", "--out", str(out), *argv])
        assert match in one_error_line(capsys, status), argv
        assert not out.exists()


def test_min_length_drops_short_series_with_a_count(tmp_path, caplog):
    short = _write(tmp_path / "short.csv", {"long": (0, np.arange(40.0)), "tiny": (0, np.arange(20.0))})
    cfg = _config(short, data={"horizon": 12, "min_length": 25}, train={"max_steps": 2, "eval_every": 2})
    task = ForecastTask(cfg)
    with caplog.at_level("WARNING", logger="rnnkit.tasks.forecasting"):
        task.prepare(None)
    assert [s.id for s in task.history.series] == ["long"] and task.describe()["dropped_series"] == 1
    assert any("dropped 1 of 2 series shorter than --min-length 25" in r.getMessage() for r in caplog.records)


def test_short_series_are_trained_on_and_forecast_but_not_validated_with_counts(tmp_path, caplog, capsys):
    rng = np.random.default_rng(1)
    lengths = {"long": 40, "mid": 20, "tiny": 8}  # H = 12: 2H + 1 = 25 points validate, H + 1 = 13 train
    short = _write(tmp_path / "mixed.csv", {sid: (0, _season(np.arange(n), 0) + rng.normal(0, SIGMA, n))
                                            for sid, n in lengths.items()})  # fmt: skip
    cfg = _config(short, train={"max_steps": 4, "eval_every": 4})
    task = ForecastTask(cfg)
    with caplog.at_level("WARNING", logger="rnnkit.tasks.forecasting"):
        task.prepare(None)
    said = [r.getMessage() for r in caplog.records]
    assert any("2 of 3 series have fewer than 25 points" in m and "1 of them hold none" in m for m in said), said
    assert [len(s) for s in task.train_series] == [28, 20, 8]  # mid is trained on whole: it is not validated
    assert task.validated.tolist() == [0]
    ends = {i: task.pairs[task.pairs[:, 0] == i, 1].tolist() for i in range(3)}
    assert ends[0] == list(range(13, 29)) and ends[1] == list(range(13, 21)) and ends[2] == []
    info = task.describe()
    assert (info["validated_series"], info["unvalidated_series"], info["untrained_series"]) == (1, 2, 1)
    run = tmp_path / "run"
    train(ForecastTask(cfg), run, plots=False)
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["unvalidated_series"], summary["untrained_series"]) == (2, 1)
    assert main(["forecast", "--run", str(run), "--data", str(short)]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert sorted({r.split(",")[0] for r in rows}) == ["long", "mid", "tiny"] and len(rows) == 36

    record = refit(run)  # --refit: every point, for the best evaluation's steps; the calibration is kept
    validated, refitted = (torch.load(run / f, weights_only=True) for f in ("validated.pt", "best.pt"))
    assert record["steps"] == validated["step"] == 4 and refitted["config"]["data"]["validation"] == "none"
    assert refitted["artefacts"]["interval_scale"] == validated["artefacts"]["interval_scale"]
    assert json.loads((run / "summary.json").read_text())["refit"]["steps"] == 4
    assert not torch.equal(refitted["model"]["head.weight"], validated["model"]["head.weight"])

    for how, match in [("error", "series 'mid' has 20 points, fewer than 25"), ("keep", None), ("drop", None)]:
        t = ForecastTask(_config(short, data={"too_short": how}))
        if match:
            with pytest.raises(DataError, match=match):
                t.prepare(None)
        else:
            t.prepare(None)
            assert len(t.history.series) == (1 if how == "drop" else 3) and len(t.validated) == 1
    with pytest.raises(DataError, match="no series has the 25 points to validate on"):
        ForecastTask(_config(_write(tmp_path / "all_short.csv", {"a": (0, np.arange(20.0))}))).prepare(None)
    with pytest.raises(DataError, match="no series has the 13 points of one training window"):
        ForecastTask(_config(_write(tmp_path / "tiny.csv", {"a": (0, np.arange(8.0))}),
                             data={"validation": "none"})).prepare(None)  # fmt: skip


def test_conformal_scale_by_hand():
    # median 0, band [-1, 1]: the factor each actual needs is |y|; 80 % of n = 9 points -> the 8th smallest
    y = np.array([0.5, -0.1, 2.0, -3.0, 0.2, 0.9, -1.5, 0.3, 4.0])
    zeros, ones = np.zeros(9), np.ones(9)
    assert calibrate(zeros, -ones, ones, y) == pytest.approx(3.0)
    assert calibrate(zeros, -2 * ones, 2 * ones, y) == pytest.approx(1.5)  # twice as wide: half the factor
    # asymmetric: below the median the lower half-width scales, above it the upper one
    assert calibrate(np.zeros(1), -np.ones(1), 4 * np.ones(1), np.array([2.0])) == pytest.approx(0.5)
    r = np.abs(np.random.default_rng(0).normal(size=10_000))
    assert calibrate(np.zeros(10_000), -np.ones(10_000), np.ones(10_000), r) == pytest.approx(1.2816, abs=0.05)


def test_a_run_of_another_task_is_refused(trained, tmp_path, capsys):
    status = main(["sample", "--run", str(trained)])
    assert "is a forecast run; sample needs a char LM or music run" in one_error_line(capsys, status)


def test_a_quantile_run_forecasts_only_its_trained_levels_and_horizon(tmp_path, seasonal):
    cfg = _config(seasonal[0], model={"head": "quantile"}, train={"max_steps": 3, "eval_every": 3})
    train(ForecastTask(cfg), tmp_path / "q")
    run = load_run(tmp_path / "q")
    series = read_series(seasonal[0]).series[:2]
    with pytest.raises(DataError, match="at most its trained horizon 12"):
        run.task.forecast(run.model, series, horizon=13)
    with pytest.raises(DataError, match=r"only its trained levels 0\.1, 0\.5, 0\.9; asked for 0\.05"):
        run.task.forecast(run.model, series, levels=(0.05, 0.5))


def test_series_sampling_weighs_short_and_long_series_alike(tmp_path):
    data = _write(tmp_path / "two.csv", {"long": (0, np.arange(400.0)), "short": (0, np.arange(30.0))})
    counts = {}
    for sampling in ("windows", "series"):
        task = ForecastTask(_config(data, data={"horizon": 5, "sampling": sampling, "validation": "none"}))
        task.prepare(None)
        batches = task.batches(0, 1)
        drawn = np.concatenate([task.pairs[batches._epoch(e)] for e in range(3)])
        assert ((drawn[:, 1] >= 6) & (drawn[:, 1] <= np.array([400, 30])[drawn[:, 0]])).all()  # valid windows
        counts[sampling] = np.bincount(drawn[:, 0], minlength=2) / len(drawn)
        again = task.batches(0, 1)
        assert np.array_equal(again.get(2, 1)["values"], batches.get(2, 1)["values"])  # (epoch, k) -> one batch
    assert counts["windows"][1] == pytest.approx(25 / 420, abs=1e-9)  # each window once: by length
    assert counts["series"][1] == pytest.approx(0.5, abs=0.04)
