"""The estimators (rnnkit.Classifier, Forecaster, Seq2Seq, LanguageModel, rnnkit.load) against scikit-learn's own
suite and tools, and against the CLI's path through the same run folder (the oracle: an estimator gives what
``rnnkit predict``/``eval``/``sample`` give for its run)."""

from __future__ import annotations

import ast
import importlib.util
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.callbacks import Callback
from rnnkit.errors import ConfigError
from rnnkit.estimators import Classifier, Forecaster, LanguageModel, Seq2Seq
from rnnkit.train import TrainingInterrupted

# scikit-learn is imported by the tests that use it, not at collection: its import (with scipy and pandas) costs
# seconds in every pytest worker, and only the worker running these tests needs it
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn is not installed")

# tiny and fast: the sklearn suite fits about 50 of these; one evaluation, at the end; no PNGs
TINY = {"hidden_size": 4, "embedding_size": 4, "head_size": 0, "max_steps": 4, "eval_every": 1000,
        "checkpoint_every": 0, "verbose": 0, "plots": False}  # fmt: skip

SEQUENCE_AXIS = (
    "a 2-D X is N univariate sequences of length T (the issue's convention): its second axis is time, not features, "
    "and an RNN reads sequences of any length, so another T at predict is valid input, not an error; n_features_in_ "
    "is not set for the same reason"
)
EXPECTED_FAILURES = {
    "check_n_features_in": SEQUENCE_AXIS,
    "check_n_features_in_after_fitting": SEQUENCE_AXIS,
    # it asserts that predict on X.T (2 sequences of length 300) raises; its accuracy part runs in
    # test_blobs_accuracy below
    "check_classifiers_train": SEQUENCE_AXIS,
}


@needs_sklearn
def test_sklearn_suite():
    """scikit-learn's estimator checks, all of them, in one test: each check's name and error are in the message."""
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():  # "does not inherit from BaseEstimator": by design, scikit-learn stays optional
        warnings.simplefilter("ignore", UserWarning)
        results = check_estimator(Classifier(**TINY), expected_failed_checks=EXPECTED_FAILURES, on_fail=None)
    status = {r["check_name"]: r["status"] for r in results}
    failed = [f"{r['check_name']}: {r['exception']!r}" for r in results if r["status"] == "failed"]
    assert not failed, "\n".join(failed)
    assert len(status) > 40 and sum(s == "passed" for s in status.values()) > 30  # the suite ran, not skipped
    # each expected failure still fails for the reason given (a pass would mean the reason is out of date)
    assert {name for name, s in status.items() if s == "xfail"} == set(EXPECTED_FAILURES)


def _sequences(n: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Variable-length univariate sequences; the class is the sign of their mean (an RNN learns it in a few steps)."""
    rng = np.random.default_rng(seed)
    X = [rng.normal(0.8 * (1 if i % 2 else -1), 1.0, size=rng.integers(5, 15)) for i in range(n)]
    y = np.array(["up" if i % 2 else "down" for i in range(n)])
    return X, y


@pytest.fixture(scope="module")
def fitted():
    X, y = _sequences(80)
    clf = Classifier(**(TINY | {"hidden_size": 8, "max_steps": 40, "batch_size": 16, "lr": 1e-2})).fit(X, y)
    return clf, X, y


def test_classifier_learns_and_answers_like_sklearn(fitted):
    clf, X, y = fitted
    assert list(clf.classes_) == ["down", "up"]
    proba = clf.predict_proba(X)
    assert proba.shape == (80, 2) and np.allclose(proba.sum(1), 1.0)
    assert list(clf.predict(X)) == list(clf.classes_[proba.argmax(1)])
    assert clf.score(X, y) > 0.85
    assert clf.score(X, y) == np.mean(clf.predict(X) == y)


def test_predict_equals_the_cli_on_the_run_folder(fitted, tmp_path):
    """The run folder is the CLI's: rnnkit predict on the data file fit wrote gives the estimator's probabilities."""
    clf, X, _ = fitted
    run = rnnkit.checkpoint.load_run(clf.run_dir_)
    table = run.task.predict_rows(run.model, data=str(clf.run_dir_ / "data" / "train.npz"))
    cli = np.array([[float(p) for p in row[1:]] for row in table.rows])
    np.testing.assert_allclose(clf.predict_proba(X)[:, [run.task.labels.index(c) for c in clf.classes_]], cli,
                               atol=1e-6)  # fmt: skip


def test_save_load_pickle_round_trip(fitted, tmp_path):
    clf, X, _ = fitted
    clf.save(tmp_path / "run")
    loaded = rnnkit.load(tmp_path / "run")
    assert type(loaded) is Classifier and loaded.get_params() == clf.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert (tmp_path / "run" / "data" / "train.npz").is_file()
    copy = pickle.loads(pickle.dumps(clf))
    assert copy.run_dir_ != clf.run_dir_ and copy.run_dir_.is_dir()
    np.testing.assert_array_equal(copy.predict_proba(X), clf.predict_proba(X))
    with pytest.raises(ValueError, match="new or empty folder"):
        clf.save(tmp_path / "run")


def test_temporary_run_folder_is_removed_with_the_estimator():
    X, y = _sequences(20)
    clf = Classifier(**TINY).fit(X, y)
    folder = clf.run_dir_
    assert folder.is_dir()
    clf.fit(X, y)  # a refit drops the previous fit's folder
    assert not folder.exists() and clf.run_dir_.is_dir()
    folder = clf.run_dir_
    del clf
    assert not folder.exists()


@needs_sklearn
def test_params_clone_and_errors():
    from sklearn.base import clone

    clf = Classifier(hidden_size=8, max_steps=3)
    params = clf.get_params()
    assert params["hidden_size"] == 8 and params["mode"] == "gru" and "data" not in params and "val" not in params
    assert {"lr", "monitor", "tokens", "zoneout", "verbose", "callbacks"} <= set(params)
    assert clone(clf).get_params() == params
    assert clf.set_params(mode="lstm") is clf and clf.mode == "lstm"
    with pytest.raises(ValueError, match="invalid parameter 'hiden_size'"):
        clf.set_params(hiden_size=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'hiden_size'"):
        Classifier(hiden_size=3)
    X, y = _sequences(10)
    with pytest.raises(ConfigError, match="hidden_size must be an integer"):
        Classifier(hidden_size=0, max_steps=1).fit(X, y)  # values are checked by fit, not __init__
    with pytest.raises(ValueError, match="same number of channels"):
        Classifier().fit([np.zeros((3, 1)), np.zeros((3, 2))], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        Classifier().fit([np.array([1.0, np.nan])] * 2, [0, 1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        Classifier().fit(X, ["a"] * 10)


@needs_sklearn
def test_pipeline_cross_validation_and_grid_search_on_variable_lengths():
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = _sequences(40, seed=1)
    settings = TINY | {"max_steps": 12, "hidden_size": 8, "lr": 2e-2, "batch_size": 8}
    pipe = make_pipeline(FunctionTransformer(lambda xs: [x * 2.0 for x in xs]), Classifier(**settings))
    scores = cross_val_score(pipe, X, y, cv=2)
    assert scores.shape == (2,) and scores.mean() > 0.7
    grid = GridSearchCV(Classifier(**settings), {"mode": ["gru", "lstm"]}, cv=2).fit(X, y)
    assert grid.best_params_["mode"] in ("gru", "lstm") and len(grid.cv_results_["mean_test_score"]) == 2
    assert grid.best_estimator_.score(X, y) > 0.7


@needs_sklearn
def test_blobs_accuracy():
    """check_classifiers_train's own bar (training accuracy > 0.83 on its blobs), the part of it that applies."""
    from sklearn.datasets import make_blobs
    from sklearn.preprocessing import StandardScaler

    X, y = make_blobs(n_samples=300, random_state=0)
    X = StandardScaler().fit_transform(X)
    clf = Classifier(**(TINY | {"hidden_size": 16, "max_steps": 60, "batch_size": 32, "lr": 3e-2}))
    assert clf.fit(X, y).score(X, y) > 0.83
    assert clf.predict(X).dtype == y.dtype


def test_text_validation_data_callbacks_and_progress(tmp_path, capsys):
    texts = ["good fun", "great joy", "nice day", "bad pain", "awful loss", "sad day"] * 6
    y = [1, 1, 1, 0, 0, 0] * 6

    class Record(Callback):
        def __init__(self):
            self.kinds = []

        def on_eval(self, trainer, event, improved):
            self.kinds.append(("eval", event["val_accuracy"]))

        def on_end(self, trainer, event):
            self.kinds.append(("end", event["step"]))

    mine, yours = Record(), Record()
    clf = Classifier(**(TINY | {"verbose": 1, "max_steps": 6}), callbacks=[mine])
    clf.fit(texts, y, validation_data=(["good joy", "sad pain"], [1, 0]), callbacks=[yours], out=tmp_path / "run")
    assert mine.kinds == yours.kinds and mine.kinds[-1] == ("end", 6) and mine.kinds[0][0] == "eval"
    assert clf.result_.info["val_examples"] == 2 and clf.result_.info["validates_on_training_set"] is False
    assert "6/6" in capsys.readouterr().err  # the tqdm bar
    assert list(clf.classes_) == [0, 1] and clf.classes_.dtype == np.array(y).dtype
    assert set(clf.predict(["good fun", "sad day"])) <= {0, 1}
    Classifier(**TINY).fit(texts, y)
    assert capsys.readouterr().err == ""  # verbose=0: silent


def test_resume_after_an_interrupt_equals_an_uninterrupted_fit(tmp_path):
    X, y = _sequences(40, seed=2)
    settings = TINY | {"max_steps": 6, "batch_size": 8}

    class Interrupt(Callback):
        def on_batch_end(self, trainer):
            if trainer.state.step == 3:
                raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        Classifier(**settings).fit(X, y, out=tmp_path / "run", callbacks=[Interrupt()])
    resumed = Classifier(**settings).fit(X, y, out=tmp_path / "run", resume=True)
    straight = Classifier(**settings).fit(X, y)
    assert resumed.result_.steps == 6
    np.testing.assert_array_equal(resumed.predict_proba(X), straight.predict_proba(X))
    with pytest.raises(ConfigError, match="already holds a trained run"):
        Classifier(**settings).fit(X, y, out=tmp_path / "run")


def test_forecaster_dataframe_series_and_load(tmp_path):
    pd = pytest.importorskip("pandas")
    t = np.arange(48)
    df = pd.concat([pd.DataFrame({"id": k, "time": pd.date_range("2001-01-01", periods=48, freq="MS"),
                                  "value": 10.0 + k + 3 * np.sin(2 * np.pi * t / 12)}) for k in (7, 8)])  # fmt: skip
    small = {"hidden_size": 4, "num_layers": 1, "max_steps": 4, "eval_every": 1000, "checkpoint_every": 0,
             "num_samples": 8, "eval_samples": 4, "verbose": 0, "plots": False}  # fmt: skip
    fc = Forecaster(horizon=6, **small).fit(df)
    out = fc.predict()
    assert list(out.columns) == ["id", "time", "forecast", "q0.1", "q0.5", "q0.9"]
    assert out["id"].tolist() == [7] * 6 + [8] * 6
    assert out["time"].iloc[0] == pd.Timestamp("2005-01-01") and out["time"].iloc[5] == pd.Timestamp("2005-06-01")
    assert (out["q0.1"] <= out["forecast"]).all() and (out["forecast"] <= out["q0.9"]).all()
    np.testing.assert_array_equal(out["forecast"], out["q0.5"])
    # the CLI's rnnkit forecast on the same run folder writes the same numbers
    run = rnnkit.checkpoint.load_run(fc.run_dir_)
    table = run.task.forecast_rows(run.model, data=str(fc.run_dir_ / "data" / "train.csv"))
    np.testing.assert_allclose(out["forecast"], [float(r[2]) for r in table.rows])
    fc.save(tmp_path / "fc")
    assert rnnkit.load(tmp_path / "fc").predict().equals(out)
    series = pd.Series(10.0 + 3 * np.sin(2 * np.pi * t / 12), name="s")
    one = Forecaster(horizon=3, **small).fit(series).predict()
    assert one["id"].tolist() == ["s"] * 3 and one["time"].tolist() == [48, 49, 50]
    with pytest.raises(ValueError, match="columns id, time, value"):
        Forecaster(horizon=3).fit(pd.DataFrame({"x": [1.0]}))


def test_seq2seq_predict_equals_the_cli(tmp_path):
    words = ["cat", "dog", "bird", "fish", "lion", "bear", "wolf", "frog"] * 3
    s2s = Seq2Seq(hidden_size=8, embedding_size=4, max_steps=4, eval_every=1000, checkpoint_every=0, verbose=0,
                  plots=False).fit(words, [w[::-1] for w in words], validation_data=(["owl"], ["lwo"]))  # fmt: skip
    assert s2s.result_.info["val_sources"] == 1
    sources = ["cat", "frog", "emu"]
    (tmp_path / "src.txt").write_text("".join(s + "\n" for s in sources))
    for beam in (1, 3):
        rows = s2s.task_.predict_rows(s2s.model_, data=str(tmp_path / "src.txt"), beam=beam).rows
        assert s2s.predict(sources, beam=beam) == [r[1] for r in rows]
    best = s2s.predict(sources, beam=3, n_best=2)
    assert [b[0] for b in best] == s2s.predict(sources, beam=3) and all(len(b) == 2 for b in best)
    assert 0.0 <= s2s.score(words, [w[::-1] for w in words]) <= 1.0
    with pytest.raises(ValueError, match="tab or a line break"):
        s2s.predict(["a\tb"])


def test_language_model_sample_and_score_equal_the_cli(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 40
    lm = LanguageModel(hidden_size=16, embedding_size=8, batch_size=4, bptt=16, max_steps=5, eval_every=1000,
                       checkpoint_every=0, precision="fp32", verbose=0, plots=False)  # fmt: skip
    lm.fit(text, validation_data="a lazy fox. " * 10)
    assert lm.result_.info["val_chars"] == len("a lazy fox. " * 10) - 1  # exactly the validation text
    assert lm.val_fraction == 0.05  # fit did not change the keyword
    cli = "".join(lm.task_.sample(lm.model_, prompt="the ", length=30, seed=3)).rstrip("\n")
    assert lm.sample("the ", length=30, seed=3) == cli and len(cli) == 30
    (tmp_path / "t.txt").write_text("the lazy dog")
    assert lm.score("the lazy dog") == pytest.approx(lm.task_.score(lm.model_, data=str(tmp_path / "t.txt"),
                                                                    batch_size=1)["bpc"])  # fmt: skip
    lm.save(tmp_path / "lm")
    assert rnnkit.load(tmp_path / "lm").sample("the ", length=30, seed=3) == cli


def test_no_optional_dependency_at_import():
    """scikit-learn, sktime and pandas are optional: no estimator module imports them at import time."""
    root = Path(rnnkit.__file__).parent / "estimators"
    for path in set(root.glob("*.py")) - {root / "sktime.py"}:  # the sktime adapters are for sktime users
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] in ("sklearn", "sktime", "pandas") for n in names), (path, names)


def test_lazy_attributes_on_the_package():
    assert rnnkit.Classifier is Classifier and rnnkit.load is rnnkit.estimators.load
    assert rnnkit.tasks.Forecaster is not rnnkit.Forecaster  # the nn.Module stays in rnnkit.tasks
    assert issubclass(rnnkit.tasks.Forecaster, torch.nn.Module)
    with pytest.raises(AttributeError):
        rnnkit.NoSuchThing  # noqa: B018
