"""``rnnkit tune``: a tiny study end to end, pruning, resume of a killed study, the best.toml round trip, the search
spaces of every task, and the command line's answers to bad input (including a missing optuna).

One study of three tiny trials (a few steps each, on a rule a GRU learns: does "ab" occur) is shared by the module;
the tests that change a study copy its folder first.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib
import io
import json
import random
import shutil
import sys
import time

import pytest

from conftest import one_error_line
from rnnkit.cli import main
from rnnkit.cliargs import build_config
from rnnkit.tasks import TASKS, ClassifyConfig, ClassifyTask
from rnnkit.tasks.base import SEARCH_SPACE, Param

optuna = pytest.importorskip("optuna")
tuning = importlib.import_module("rnnkit.tune")

pytestmark = pytest.mark.usefixtures("one_thread")

# a few steps per trial; the sizes and the batch pinned small (pinned settings are not searched)
FLAGS = ["--max-steps", "6", "--eval-every", "3", "--hidden-size", "16", "--batch-size", "32", "--warmup-steps", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = random.Random(0)
    rows = []
    for _ in range(240):
        s = "".join(rng.choice("abc") for _ in range(rng.randint(3, 12)))
        rows.append(f"{s}\t{'yes' if 'ab' in s else 'no'}\n")
    path = tmp_path_factory.mktemp("tune-data") / "train.tsv"
    path.write_text("text\tlabel\n" + "".join(rows))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory, data):
    """``rnnkit tune classify`` with 3 trials and no pruner: (folder, exit status, stdout)."""
    folder = tmp_path_factory.mktemp("tune") / "study"
    out = io.StringIO()  # a module fixture cannot take capsys
    with contextlib.redirect_stdout(out):
        status = main(["tune", "classify", "--data", str(data), "--out", str(folder), "--trials", "3",
                       "--pruner", "none", *FLAGS])  # fmt: skip
    return folder, status, out.getvalue()


def _rows(folder) -> list[dict[str, str]]:
    with open(folder / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_tiny_study_writes_its_trials_best_config_and_pictures(study):
    folder, status, out = study
    assert status == 0, out
    rows = _rows(folder)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    for r in rows:  # every trial is an ordinary run folder, trained for the steps asked
        run = folder / "trials" / f"{int(r['number']):04d}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 6 and int(r["steps"]) == 6
        assert float(r["accuracy"]) == pytest.approx(summary["best"]["accuracy"], abs=1e-6)
        assert (run / "best.pt").is_file()
    for name in ("study.db", "best.toml", "history.png", "importance.png"):
        assert (folder / name).is_file(), name
    searched = {p.name for p in ClassifyTask.search_space(ClassifyConfig())} - {"hidden_size", "batch_size"}
    assert searched <= set(rows[0]) and "hidden_size" not in rows[0]  # pinned by a flag: not searched
    assert len({tuple(r[name] for name in sorted(searched)) for r in rows}) == 3  # three different settings
    best = max(rows, key=lambda r: float(r["accuracy"]))
    assert f"best: trial {best['number']}, val accuracy {float(best['accuracy']):.4f}" in out
    assert out.count("\ntrial ") + out.startswith("trial ") == 3


def test_best_toml_is_the_best_trials_config_and_train_reproduces_it(study, tmp_path, capsys):
    folder, _, _ = study
    rows = _rows(folder)
    best = max(rows, key=lambda r: (float(r["accuracy"]), -int(r["number"])))
    run = folder / "trials" / f"{int(best['number']):04d}"
    trial_config = ClassifyConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert build_config(folder / "best.toml", {}, ClassifyConfig) == trial_config
    assert trial_config.model.hidden_size == 16 and trial_config.train.max_steps == 6
    assert trial_config.train.eval_time_share == 0.0  # trials are judged at equal steps, and best.toml keeps it
    # rnnkit train --config best.toml: the same run again (same seed, same data, CPU), so the same best accuracy
    assert main(["train", "classify", "--config", str(folder / "best.toml"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["best"]["accuracy"] == pytest.approx(float(best["accuracy"]), abs=1e-6)
    capsys.readouterr()


@pytest.mark.slow
def test_a_killed_trial_is_failed_and_retried_and_the_study_continues_to_n(study, tmp_path):
    folder = tmp_path / "study"
    shutil.copytree(study[0], folder)
    config = json.loads((folder / "trials" / "0000" / "config.json").read_text())  # the study's base settings
    config = ClassifyConfig.from_dict(config)
    pinned = {"hidden_size", "batch_size"}
    space = [p for p in ClassifyTask.search_space(config) if p.name not in pinned]
    # a process that died mid-trial: the trial is RUNNING, with settings drawn and a heartbeat that then stopped
    s = tuning.open_study(folder, ClassifyTask, "accuracy", grace_s=1)
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna's: heartbeats are meant for optimize, as tune runs
        killed = s.ask()
    tuning.trial_config(config, space, killed)
    s._storage.record_heartbeat(killed._trial_id)
    time.sleep(2.1)  # SQLite's clock counts whole seconds: the heartbeat is then more than grace_s=1 s old
    result = tuning.tune(ClassifyTask, config, folder, trials=4, pinned=pinned, pruner="none", grace_s=1)
    trials = {t.number: t for t in optuna.load_study(study_name="classify", storage=f"sqlite:///{folder / 'study.db'}")
              .get_trials()}  # fmt: skip
    assert trials[killed.number].state.name == "FAIL"
    retry = next(t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.state.name == "COMPLETE" and retry.params == killed.params  # the killed settings, run again
    assert result.finished == 4 and result.counts == {"COMPLETE": 4, "FAIL": 1}
    assert len(_rows(folder)) == 5


def _data_path(folder) -> str:
    return json.loads((folder / "trials" / "0000" / "config.json").read_text())["data"]["data"]


def test_a_study_of_n_finished_trials_runs_nothing_more(study, capsys):
    folder, _, _ = study
    before = (folder / "study.db").stat().st_mtime_ns
    assert main(["tune", "classify", "--data", _data_path(folder), "--out", str(folder), "--trials", "3",
                 "--pruner", "none", *FLAGS]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "3 of 3 trials finished (3 complete)" in out and "\ntrial " not in "\n" + out
    assert len(_rows(folder)) == 3 and (folder / "study.db").stat().st_mtime_ns >= before


def test_the_pruning_callback_reports_each_evaluation_and_stops_the_run(data, tmp_path):
    """A trial whose pruner says stop at its second report: the run stops at that evaluation's step."""
    from rnnkit.train import train

    class Trial:
        def __init__(self) -> None:
            self.reports: list[tuple[float, int]] = []

        def report(self, value: float, step: int) -> None:
            self.reports.append((value, step))

        def should_prune(self) -> bool:
            return len(self.reports) == 2

    config = ClassifyConfig.from_dict({"model": {"hidden_size": 8}, "data": {"data": str(data)},
                                       "train": {"max_steps": 20, "eval_every": 2, "warmup_steps": 0}})  # fmt: skip
    trial = Trial()
    pruning = tuning.Pruning(trial, "accuracy")
    result = train(ClassifyTask(config), tmp_path / "run", callbacks=[pruning])
    assert result.stopped_because == "pruned" and result.steps == 4 and pruning.pruned_at == 4
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert trial.reports == [(e["val_accuracy"], e["step"]) for e in evals if e["kind"] == "eval"]


@pytest.mark.slow
def test_a_study_prunes_the_trials_its_pruner_rejects(data, tmp_path):
    """A threshold no trial reaches after 3 steps: every trial is pruned at its first evaluation, none completes,
    and the outputs say so instead of failing (no best.toml, no importance plot)."""
    config = ClassifyConfig.from_dict({"model": {"hidden_size": 8}, "data": {"data": str(data)},
                                       "train": {"max_steps": 30, "eval_every": 3, "batch_size": 32}})  # fmt: skip
    seen = []
    result = tuning.tune(ClassifyTask, config, tmp_path / "s", trials=2, pinned={"hidden_size", "batch_size"},
                         pruner=optuna.pruners.ThresholdPruner(lower=1.01), on_trial=seen.append)  # fmt: skip
    assert result.counts == {"PRUNED": 2} and [t["state"] for t in seen] == ["PRUNED", "PRUNED"]
    assert [int(r["steps"]) for r in _rows(tmp_path / "s")] == [3, 3]
    assert result.best_number is None and not (tmp_path / "s" / "best.toml").exists()
    assert (tmp_path / "s" / "history.png").is_file() and not (tmp_path / "s" / "importance.png").exists()
    assert any("no best.toml" in n for n in result.notes) and any("2 completed trials" in n for n in result.notes)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_tasks_search_space_names_its_config_fields_and_every_value_is_valid(name):
    task_cls = TASKS[name]
    base = task_cls.Config()
    space = task_cls.search_space(base)
    assert {"mode", "hidden_size", "num_layers", "dropout", "lr", "batch_size"} <= {p.name for p in space}
    sections = task_cls.Config.sections()
    for param in space:
        assert param.name in {f.name for f in dataclasses.fields(sections[param.section])}, (name, param)
        values = param.choices or (param.low, param.high)
        for value in values:  # each value alone, the rest at the defaults, makes a valid config
            d = base.to_dict()
            d[param.section][param.name] = value
            task_cls.Config.from_dict(d)


def test_the_lm_with_tied_weights_searches_neither_width():
    from rnnkit.tasks import LMConfig

    tied = LMConfig.from_dict({"model": {"tie_weights": True, "embedding_size": 64, "hidden_size": 64}})
    names = {p.name for p in TASKS["lm"].search_space(tied)}
    assert "hidden_size" not in names and "embedding_size" not in names and "bptt" in names


def test_a_param_is_choices_or_a_range():
    assert {p.name for p in SEARCH_SPACE} >= {"mode", "lr"}
    for bad in ({}, {"choices": (1, 2), "low": 1, "high": 2}, {"low": 1}, {"low": 2, "high": 1},
                {"low": 0.0, "high": 1.0, "log": True}):  # fmt: skip
        with pytest.raises(ValueError, match="Param x"):
            Param("model", "x", **bad)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["tune", "nosuch", "--out", "X", "--trials", "3"], "invalid choice: 'nosuch'"),
        (["tune", "classify", "--out", "X", "--trials", "0"], "--trials"),
        (["tune", "classify", "--out", "X", "--trials", "2", "--pruner", "best"], "--pruner"),
        (["tune", "classify", "--out", "X", "--trials", "2", "--max-minutes", "0"], "--max-minutes"),
        (["tune", "classify", "--data", "gunpoint:test", "--out", "{tmp}/s", "--trials", "2"], "never reads a test"),
        (
            ["tune", "classify", "--data", "gunpoint", "--out", "{tmp}/s", "--trials", "2", "--storage", "nosuch://x"],
            "--storage nosuch://x: cannot open it",
        ),
    ],
)
def test_bad_input_is_one_error_line(argv, expected, tmp_path, capsys):
    status = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert expected in one_error_line(capsys, status)


def test_a_study_of_another_task_is_refused(study, tmp_path, capsys):
    folder = tmp_path / "study"
    shutil.copytree(study[0], folder)
    status = main(["tune", "seq2seq", "--data", "dates", "--out", str(folder), "--trials", "1", "--study", "classify"])
    assert "tunes classify runs on accuracy, not seq2seq on wer" in one_error_line(capsys, status)


def test_without_optuna_rnnkit_imports_and_tune_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    monkeypatch.delitem(sys.modules, "rnnkit.tune")
    importlib.import_module("rnnkit.tune")  # the module imports without optuna ...
    status = main(["tune", "classify", "--data", "gunpoint", "--out", str(tmp_path / "s"), "--trials", "2"])
    assert "pip install 'rnnkit[tune]'" in one_error_line(capsys, status)  # ... and the command says what to install
    assert not (tmp_path / "s").exists()
