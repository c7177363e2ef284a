"""``rnnkit tune``: search a task's settings with Optuna; every trial is an ordinary training run.

Optuna's define-by-run loop, over the task's declared search space (``Task.search_space``)::

    study = the study NAME in the storage (FOLDER/study.db by default), created or continued
    until N trials finished (complete or pruned), or the time budget is spent:
        trial = study.ask()                       # a queued retry first, else the sampler's (TPE) next point
        config = base config + trial.suggest(each setting of the search space the user did not set)
        train(Task(config), FOLDER/trials/NNNN, callbacks=[Pruning(trial, primary)])
            at each evaluation: trial.report(val primary, step); the pruner may stop the run there
        study.tell(trial, the run's best validation value of the primary metric)   (or: pruned, failed)
    FOLDER/best.toml, trials.csv, history.png, importance.png

Budgets: with ``total_minutes`` M each trial trains for M/N minutes and no trial starts after M minutes (a
continued study gets the share of M its remaining trials are owed); ``trial_minutes`` sets the per-trial budget
instead; a step or epoch budget in the config applies to every trial too.

Crashes and several processes: the storage keeps every trial as it goes, so running ``tune`` again on the same
storage continues to N finished trials. A process that dies (kill -9, a lost machine) leaves its trial RUNNING;
each trial's heartbeat says it is alive, and once it is ``GRACE_S`` seconds stale the next trial to start marks it
failed and queues its settings again (Optuna's heartbeat and ``RetryHeartbeatStaleTrialCallback``). Ctrl-C fails the
running trial and queues its settings at once. Any storage Optuna's RDB layer opens works (``postgresql://...``,
``mysql://...``): several machines running ``tune`` on one study share its trials, each writing its own FOLDER.

Validation data only: a trial reads what ``rnnkit train`` would (``--data``, ``--val`` or a split of ``--data``);
a built-in dataset's test split as ``--data`` or ``--val`` is refused.

Optuna is an optional dependency (``pip install 'rnnkit[tune]'``), imported only when a study runs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnkit.callbacks import Callback, Event
from rnnkit.cliargs import to_toml
from rnnkit.config import RunConfig
from rnnkit.errors import ConfigError, DataError, DependencyError
from rnnkit.io import atomic_write
from rnnkit.tasks.base import Param, Task

__all__ = ["GRACE_S", "HEARTBEAT_S", "PRUNERS", "Pruning", "TuneResult", "open_study", "require_optuna", "tune"]

log = logging.getLogger(__name__)

PRUNERS = ("median", "hyperband", "none")
HEARTBEAT_S = 10  # a running trial writes its heartbeat this often (seconds)
GRACE_S = 60  # ... and is taken for dead when its heartbeat is this old (seconds)
INSTALL = "pip install 'rnnkit[tune]'"
FINISHED = ("COMPLETE", "PRUNED")  # the trial states that count toward N


def require_optuna():
    """The optuna module, or a DependencyError naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise DependencyError(f"rnnkit tune needs optuna, which is not installed: {INSTALL}") from None
    return optuna


class Pruning(Callback):
    """Reports the primary validation metric of each evaluation to an Optuna trial, and stops the run where the
    study's pruner says the trial will not catch up (Optuna's ``trial.report`` / ``trial.should_prune``).

    The run then ends as any stopped run does (``stopped_because == "pruned"``: summary, plots, last.pt); the
    objective turns that into ``optuna.TrialPruned``.
    """

    def __init__(self, trial: Any, primary: str) -> None:
        self.trial, self.primary, self.pruned_at = trial, primary, None

    def on_eval(self, trainer: Any, event: Event, improved: bool) -> None:
        step = trainer.state.step
        self.trial.report(event[f"val_{self.primary}"], step)
        if self.trial.should_prune():
            self.pruned_at = step
            trainer.stop("pruned")


@dataclass
class TuneResult:
    """What a study holds after this session: its trials by state, the best one, and the files written."""

    folder: Path
    study: str
    primary: str
    higher_is_better: bool
    counts: dict[str, int]  # trials by state: COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was not written, and why

    @property
    def finished(self) -> int:
        return sum(self.counts.get(state, 0) for state in FINISHED)


# --- the study --------------------------------------------------------------------------------------------------


def _storage_url(folder: Path, storage: str | None) -> str:
    return storage if storage else f"sqlite:///{(folder / 'study.db').resolve()}"


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, user = head.partition("://")
    return f"{scheme}://{user.split(':')[0]}:***@{tail}"


def open_study(
    folder: str | os.PathLike,
    task_cls: type[Task],
    primary: str,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str | Any = "median",
    eval_every: int = 1,
    grace_s: int = GRACE_S,
):
    """The Optuna study ``study_name`` (default: the task's name) in ``storage`` (default: FOLDER/study.db), created
    or loaded, with its heartbeat (stale trials are failed and queued again) and pruner. ConfigError when the
    storage cannot be opened or the study was made for another task or metric."""
    optuna = require_optuna()
    if isinstance(pruner, str) and pruner not in PRUNERS:
        raise ConfigError(f"pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    folder = Path(folder)
    if storage is None:
        folder.mkdir(parents=True, exist_ok=True)
    url = _storage_url(folder, storage)
    retry_name = "RetryHeartbeatStaleTrialCallback"  # Optuna >= 4.9 (RetryFailedTrialCallback before)
    retry_cls = getattr(optuna.storages, retry_name, None) or optuna.storages.RetryFailedTrialCallback
    retry_kw = "heartbeat_stale_trial_callback" if hasattr(optuna.storages, retry_name) else "failed_trial_callback"
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # two processes share a file
    for attempt in range(3):  # two processes starting on a new database race to create its tables: the loser retries
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=grace_s,
                    **{retry_kw: retry_cls(max_retry=2)},
                )  # fmt: skip
            break
        except Exception as e:  # sqlalchemy's URL, driver and connection errors: the user's storage, in one line
            if attempt == 2 or "IntegrityError" not in type(e).__name__:
                reason = (str(e).strip().splitlines() or [""])[0]
                raise ConfigError(
                    f"--storage {_safe_url(url)}: cannot open it ({type(e).__name__}: {reason})"
                ) from None
            time.sleep(1.0 + attempt)
    direction = "maximize" if task_cls.higher_is_better else "minimize"
    name = study_name or task_cls.name
    study = optuna.create_study(
        storage=rdb,
        study_name=name,
        direction=direction,
        load_if_exists=True,
        pruner=_pruner(optuna, pruner, eval_every) if isinstance(pruner, str) else pruner,
    )
    attrs = study.user_attrs
    if not attrs:
        study.set_user_attr("task", task_cls.name)
        study.set_user_attr("primary", primary)
    elif (attrs.get("task"), attrs.get("primary")) != (task_cls.name, primary):
        raise ConfigError(
            f"study {name!r} in {_safe_url(url)} tunes {attrs.get('task')} runs on {attrs.get('primary')}, "
            f"not {task_cls.name} on {primary}; choose another --study"
        )
    return study


def _pruner(optuna, name: str, eval_every: int):
    if name == "median":  # from the third trial on, stop one whose value is below the median of the earlier ones'
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":  # successive halving over the steps, the first rung at the first evaluation
        return optuna.pruners.HyperbandPruner(min_resource=eval_every, max_resource="auto", reduction_factor=3)
    return optuna.pruners.NopPruner()


# --- trials -----------------------------------------------------------------------------------------------------


def _refuse_test_data(config: RunConfig) -> None:
    """Tuning reads validation data only: a built-in dataset's test split as the data is a ConfigError."""
    from rnnkit.datasets import DATASETS

    for section in config.to_dict().values():
        for key in ("data", "val"):
            value = section.get(key)
            if not isinstance(value, str) or Path(value).exists():
                continue
            dataset, _, split = value.partition(":")
            if dataset.lower() in DATASETS and split.lower() == "test":
                raise ConfigError(
                    f"--{key} {value}: tuning chooses settings on validation data and never reads a test split; "
                    f"use the training split ({dataset}) and --val, or a split of it"
                )


def trial_config(base: RunConfig, space: Iterable[Param], trial: Any) -> RunConfig:
    """``base`` with the trial's value of each setting of ``space`` (ConfigError when they do not go together)."""
    d = base.to_dict()
    for param in space:
        d[param.section][param.name] = param.suggest(trial)
    return type(base).from_dict(d)


def _objective(task_cls: type[Task], base: RunConfig, space: tuple[Param, ...], folder: Path, primary: str):
    optuna = require_optuna()
    from rnnkit.train import DivergenceError, train

    def objective(trial) -> float:
        try:
            config = trial_config(base, space, trial)
        except ConfigError as e:  # settings that do not go together: this trial fails, the study goes on
            trial.set_user_attr("error", str(e))
            raise
        trial.set_user_attr("config", config.to_dict())
        run_dir = folder / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run", str(run_dir))
        pruning = Pruning(trial, primary)
        try:
            result = train(task_cls(config), run_dir, callbacks=[pruning])
        except (ConfigError, DataError, DivergenceError) as e:  # these settings on this data: the trial fails
            trial.set_user_attr("error", str(e))
            raise
        except KeyboardInterrupt:  # the user stopped the study: this trial runs again first when it continues
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        trial.set_user_attr("steps", result.steps)
        trial.set_user_attr("stopped", result.stopped_because)
        trial.set_user_attr("minutes", result.elapsed_s / 60)
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"at step {pruning.pruned_at}")
        return result.best[primary]

    return objective


# --- the whole study --------------------------------------------------------------------------------------------


def tune(
    task_cls: type[Task],
    base: RunConfig,
    folder: str | os.PathLike,
    *,
    trials: int,
    pinned: Iterable[str] = (),
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str | Any = "median",
    total_minutes: float | None = None,
    trial_minutes: float | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    grace_s: int = GRACE_S,
) -> TuneResult:
    """Run (or continue) the study of ``task_cls`` around ``base`` until ``trials`` trials finished; write FOLDER's
    ``best.toml``, ``trials.csv`` and plots. See the module docstring.

    ``pinned``: field names the user set (flags, a config file), left out of the search. ``pruner``: one of
    ``PRUNERS``, or an Optuna pruner object (``optuna.pruners.ThresholdPruner(...)``). ``on_trial`` gets a dict
    per trial that ends (number, state, value, params, best_number, best_value). The sampler (TPE) is seeded with
    ``base.train.seed`` plus the trials already in the study, and every trial trains with ``base.train.seed``.
    """
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got {trials!r}")
    for name, value in (("total_minutes", total_minutes), ("trial_minutes", trial_minutes)):
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a number > 0 or None, got {value!r}")
    optuna = require_optuna()
    folder = Path(folder)
    _refuse_test_data(base)
    if trial_minutes is None and total_minutes is not None:
        trial_minutes = total_minutes / trials
    if trial_minutes is not None:
        base = dataclasses.replace(base, train=dataclasses.replace(base.train, max_minutes=trial_minutes))
    # the pruner compares trials at equal steps: evaluations by time would not line up, so trials go by steps only
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, eval_time_share=0.0))
    task = task_cls(base)
    primary = task.primary  # the classifier's follows its config (accuracy or macro_f1)
    task.prepare(None)  # the data is read and checked once before anything is written (a DataError stops here)
    del task
    pinned = set(pinned)
    space = tuple(p for p in task_cls.search_space(base) if p.name not in pinned)
    study = open_study(folder, task_cls, primary, storage=storage, study_name=study_name, pruner=pruner,
                       eval_every=base.train.eval_every, grace_s=grace_s)  # fmt: skip
    before = study.get_trials(deepcopy=False)
    done = sum(t.state.name in FINISHED for t in before)
    study.sampler = optuna.samplers.TPESampler(seed=base.train.seed + len(before), n_startup_trials=max(3, trials // 4))
    remaining = trials - done
    log.info("study %s: %d of %d trials finished; searching %s", study.study_name, done, trials,
             ", ".join(p.name for p in space) or "nothing")  # fmt: skip
    if remaining > 0:
        stop = optuna.study.MaxTrialsCallback(
            trials, states=tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)
        )
        callbacks = [stop, _Outputs(folder, task_cls, primary, on_trial), _FailureLimit(max(3, trials))]
        timeout = None if total_minutes is None else 60 * total_minutes * remaining / trials
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(
                    _objective(task_cls, base, space, folder, primary), timeout=timeout, callbacks=callbacks,
                    catch=(ConfigError, DataError, _divergence()), gc_after_trial=False,
                )  # fmt: skip
        finally:
            write_outputs(study, folder, task_cls, primary, plots=False)  # what an interruption leaves is current
    return write_outputs(study, folder, task_cls, primary)


def _divergence() -> type[Exception]:
    from rnnkit.train import DivergenceError

    return DivergenceError


class _Outputs:
    """After each trial: trials.csv and best.toml rewritten, and the CLI told (``on_trial``)."""

    def __init__(self, folder: Path, task_cls: type[Task], primary: str, on_trial) -> None:
        self.folder, self.task_cls, self.primary, self.on_trial = folder, task_cls, primary, on_trial

    def __call__(self, study, trial) -> None:
        write_outputs(study, self.folder, self.task_cls, self.primary, plots=False)
        if self.on_trial is not None:
            best = _best(study)
            self.on_trial({
                "number": trial.number, "state": trial.state.name, "value": trial.value,
                "last": _last_value(trial), "params": trial.params, "error": trial.user_attrs.get("error"),
                "steps": trial.user_attrs.get("steps"), "minutes": trial.user_attrs.get("minutes"),
                "best_number": best and best.number, "best_value": best and best.value,
            })  # fmt: skip


class _FailureLimit:
    """Stop the session after ``limit`` failed trials: settings that never go together, or a broken setup."""

    def __init__(self, limit: int) -> None:
        self.limit, self.failed = limit, 0

    def __call__(self, study, trial) -> None:
        if trial.state.name == "FAIL":
            self.failed += 1
            if self.failed >= self.limit:
                log.warning("%d trials failed in this session: stopping the study", self.failed)
                study.stop()


def _best(study):
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return None
    return study.best_trial


def _last_value(trial) -> float | None:
    values = trial.intermediate_values
    return values[max(values)] if values else None


# --- outputs ----------------------------------------------------------------------------------------------------


def write_outputs(study, folder: Path, task_cls: type[Task], primary: str, *, plots: bool = True) -> TuneResult:
    """FOLDER's trials.csv, best.toml (once a trial completed) and, with ``plots``, history.png and importance.png."""
    folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    result = TuneResult(folder, study.study_name, primary, task_cls.higher_is_better, counts)
    atomic_write(folder / "trials.csv", trials_csv(trials, primary))
    result.files.append(folder / "trials.csv")
    best = _best(study)
    if best is None:
        result.notes.append("no trial completed yet: no best.toml")
    else:
        result.best_number, result.best_value, result.best_params = best.number, best.value, dict(best.params)
        config = task_cls.Config.from_dict(best.user_attrs["config"])
        header = (
            f"# rnnkit tune {task_cls.name}: the best of {result.finished} finished trials of study "
            f"{study.study_name!r}: trial {best.number}, validation {primary} {best.value:.6g}\n"
            f"# reproduce: rnnkit train {task_cls.name} --config best.toml (flags override these values)\n\n"
        )
        atomic_write(folder / "best.toml", header + to_toml(config))
        result.files.append(folder / "best.toml")
    if plots:
        from rnnkit.tune_plots import plot_history, plot_importance

        if plot_history(trials, folder / "history.png", primary, task_cls.higher_is_better):
            result.files.append(folder / "history.png")
        note = plot_importance(study, folder / "importance.png")
        if note is None:
            result.files.append(folder / "importance.png")
        else:
            result.notes.append(f"no importance.png: {note}")
    return result


def trials_csv(trials: list[Any], primary: str) -> str:
    """One row per trial: number, state, the value (the run's best validation ``primary``), the last value it
    reported, steps, minutes, each setting, and the run folder."""
    names: list[str] = []
    for t in trials:
        names += [name for name in t.params if name not in names]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["number", "state", primary, f"last_reported_{primary}", "steps", "minutes", *names, "run"])
    for t in trials:
        minutes = t.user_attrs.get("minutes")
        writer.writerow([
            t.number, t.state.name, _cell(t.value), _cell(_last_value(t)), t.user_attrs.get("steps", ""),
            _cell(minutes), *(_cell(t.params.get(name)) for name in names), t.user_attrs.get("run", ""),
        ])  # fmt: skip
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
