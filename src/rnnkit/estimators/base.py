"""What every estimator shares: keywords from the task's config, a run folder per fit, save, load, pickling.

An estimator is a task (``rnnkit.tasks``) driven from data in memory, in scikit-learn's contract:

- ``__init__`` only stores its keywords. They are every field of the task's config sections (``hidden_size``,
  ``max_steps``, ``lr``, ...; the file paths ``data`` and ``val`` excepted: ``fit`` sets those), plus ``verbose``,
  ``callbacks`` and ``plots``. Each class's ``__init__`` gets an explicit signature generated from the config
  dataclasses, so ``get_params``, ``set_params``, ``sklearn.base.clone`` and ``GridSearchCV`` see real named
  parameters and a new config field is a new keyword without an edit here. Values are checked by the config
  classes when ``fit`` builds the config (scikit-learn asks that ``__init__`` and ``set_params`` never raise).
- ``fit`` writes the data into the run folder in the format the task's reader takes (``RUN/data/train.npz``,
  ``.csv`` or ``.tsv``), then runs ``rnnkit.train.train``, the CLI's trainer, on it: the folder is a complete
  run, the same as ``rnnkit train`` writes, so ``rnnkit predict --run``, ``--resume`` and ``rnnkit.load`` all work
  on it. Without ``out=`` the folder is a temporary directory, removed when the estimator is.
- The fitted model is the run's ``best.pt`` (``rnnkit.checkpoint.load_run``), as the CLI's commands use it.
  Learned attributes end in ``_``: ``run_dir_``, ``task_``, ``model_``, ``result_``.
- ``save(path)`` copies the run folder; ``rnnkit.load(path)`` gives back the estimator of the run's task, fitted.
  Pickling carries the run folder's files, so a pickled estimator is whole on its own.

scikit-learn is not imported here: the estimators only follow its conventions (``__sklearn_tags__`` imports it
when scikit-learn itself asks).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, ClassVar

from rnnkit.callbacks import Callback
from rnnkit.checkpoint import load_run
from rnnkit.config import RunConfig
from rnnkit.errors import CheckpointError, ConfigError
from rnnkit.io import atomic_write_json
from rnnkit.tasks.base import Task

__all__ = ["ESTIMATOR_FILE", "Estimator", "NotFittedError", "Progress"]

log = logging.getLogger(__name__)

ESTIMATOR_FILE = "estimator.json"  # in the run folder: the estimator's class and what it keeps beside the task
PATH_FIELDS = ("data", "val")  # the config's files: fit writes them from the data in memory


class NotFittedError(ValueError, AttributeError):
    """An estimator used before ``fit`` (both a ValueError and an AttributeError, as scikit-learn's is); where
    scikit-learn is installed, its own ``NotFittedError`` is raised instead, which its tools catch."""


def not_fitted(estimator: object) -> Exception:
    """The error for ``estimator`` used before ``fit``."""
    message = (f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with appropriate arguments "
               "before using this estimator.")  # fmt: skip
    try:
        from sklearn.exceptions import NotFittedError as SklearnNotFitted
    except ImportError:
        return NotFittedError(message)
    return SklearnNotFitted(message)


def config_fields(config_cls: type[RunConfig]) -> dict[str, tuple[str, dataclasses.Field]]:
    """{field name: (section, field)} of every field of a task's config but the file paths ``fit`` sets."""
    out = {}
    for section, cls in config_cls.sections().items():
        for f in dataclasses.fields(cls):
            if f.name not in PATH_FIELDS:
                out[f.name] = (section, f)
    return out


class Estimator:
    """Base class of ``Classifier``, ``Forecaster``, ``Seq2Seq`` and ``LanguageModel`` (see the module docstring)."""

    Task: ClassVar[type[Task]]
    own: ClassVar[dict[str, Any]] = {"verbose": 1, "callbacks": None, "plots": False}
    excluded: ClassVar[tuple[str, ...]] = ()  # config fields that make no sense in memory (the forecaster's wide)
    _fields: ClassVar[dict[str, tuple[str, dataclasses.Field]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Task" not in cls.__dict__:
            return
        cls._fields = {k: v for k, v in config_fields(cls.Task.Config).items() if k not in cls.excluded}

        def init(self, **params: Any) -> None:
            Estimator._store(self, params)

        names = [*cls._fields, *cls.own]
        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=cls._default(n)) for n in names]
        init.__signature__ = inspect.Signature(params)  # what inspect.signature, help() and scikit-learn read
        init.__name__, init.__qualname__ = "__init__", f"{cls.__name__}.__init__"
        init.__doc__ = cls._keyword_doc()
        cls.__init__ = init

    @classmethod
    def _default(cls, name: str) -> Any:
        if name in cls.own:
            return cls.own[name]
        f = cls._fields[name][1]
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()

    @classmethod
    def _keyword_doc(cls) -> str:
        lines = [f"The keywords: every flag of ``rnnkit train {cls.Task.name}``, by section, with its default:", ""]
        for name, (section, f) in cls._fields.items():
            lines.append(f"    {name} = {f.default!r}  [{section}] {f.metadata.get('help', '')}")
        lines += [
            "    verbose = 1  a progress bar (tqdm.auto: terminal or notebook); 0 = silent",
            "    callbacks = None  rnnkit.callbacks.Callback objects on the trainer's events, for every fit",
            "    plots = False  draw loss.png and the task's plots into the run folder after a fit (the CLI does)",
        ]
        return "\n".join(lines)

    def _store(self, params: dict[str, Any]) -> None:
        names = self._param_names()
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {unknown[0]!r}")
        for name in names:
            setattr(self, name, params.get(name, self._default(name)))

    # --- scikit-learn's parameter protocol -------------------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        return [*cls._fields, *cls.own]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's keywords and their values (``deep`` is accepted for scikit-learn: nothing is nested)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any):
        """Set keywords (checked when ``fit`` builds the config); returns the estimator."""
        names = set(self._param_names())
        for name, value in params.items():
            if name not in names:
                raise ValueError(
                    f"invalid parameter {name!r} for estimator {type(self).__name__}; valid parameters: "
                    f"{', '.join(sorted(names))}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        changed = [
            f"{n}={getattr(self, n)!r}" for n in self._param_names() if not _same(getattr(self, n), self._default(n))
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self):
        from sklearn.utils import Tags, TargetTags

        tags = Tags(estimator_type=None, target_tags=TargetTags(required=True))
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = True
        tags.non_deterministic = False
        return tags

    # --- the run behind a fit -------------------------------------------------------------------------------------

    def config(self, paths: dict[str, str | None]) -> RunConfig:
        """The task's config for these keywords and data files (ConfigError for a bad value, naming it)."""
        d: dict[str, dict[str, Any]] = {name: {} for name in self.Task.Config.sections()}
        for name, (section, _) in self._fields.items():
            d[section][name] = getattr(self, name)
        d["data"].update(paths)
        return self.Task.Config.from_dict(d)

    def _fit_run(self, write_data, *, out, resume: bool, callbacks, extra: dict[str, Any] | None = None):
        """Write the data (``write_data(folder) -> {"data": path, "val": path or None}``), train, load best.pt."""
        from rnnkit.train import train

        self._check_own()
        owned = out is None
        run_dir = Path(tempfile.mkdtemp(prefix=f"rnnkit-{self.Task.name}-")) if owned else Path(out)
        try:
            config = self.config({})  # bad keywords fail before anything is written
            if resume and not (run_dir / "last.pt").is_file():
                raise ConfigError(f"cannot resume: {run_dir} holds no last.pt checkpoint")
            if not resume and ((run_dir / "last.pt").exists() or (run_dir / "best.pt").exists()):
                raise ConfigError(f"{run_dir} already holds a trained run; pass resume=True or choose another out")
            paths = write_data(run_dir / "data")
            config = self.config(paths)
            progress = Progress() if self.verbose else None
            try:
                result = train(self.Task(config), run_dir, resume=resume, on_event=progress,
                               callbacks=[*(self.callbacks or []), *(callbacks or [])], plots=self.plots)  # fmt: skip
            finally:
                if progress is not None:
                    progress.close()
            own = {"verbose": self.verbose, "plots": self.plots}  # callbacks are code: not saved
            atomic_write_json(run_dir / ESTIMATOR_FILE, {"class": type(self).__name__, "own": own, **(extra or {})})
        except BaseException:
            if owned:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        result.model = None  # the fitted model is best.pt's (model_), not the last step's
        self._adopt(run_dir, owned)
        self.result_ = result
        return self

    def _check_own(self) -> None:
        if self.verbose not in (0, 1, True, False):
            raise ValueError(f"verbose must be 0 or 1, got {self.verbose!r}")
        if not isinstance(self.plots, bool):
            raise ValueError(f"plots must be True or False, got {self.plots!r}")
        cbs = self.callbacks or []
        if not isinstance(cbs, list | tuple) or not all(isinstance(c, Callback) for c in cbs):
            raise TypeError(f"callbacks must be a list of rnnkit.callbacks.Callback, got {self.callbacks!r}")

    def _adopt(self, run_dir: Path, owned: bool) -> None:
        """Become the estimator fitted in ``run_dir`` (removed with the estimator when ``owned``)."""
        old = self.__dict__.pop("_cleanup", None)
        if old is not None:
            old()  # the previous fit's temporary folder
        run = load_run(run_dir, "best")
        if not isinstance(run.task, self.Task):
            raise CheckpointError(f"{run_dir} is a {run.task.title} run, not a {self.Task.title} run")
        self.run_dir_, self.task_, self.model_ = run_dir, run.task, run.model
        self._extra = self._read_extra(run_dir)
        if owned:
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(run_dir), ignore_errors=True)

    @staticmethod
    def _read_extra(run_dir: Path) -> dict[str, Any]:
        path = run_dir / ESTIMATOR_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def _check_fitted(self) -> None:
        if "model_" not in self.__dict__:
            raise not_fitted(self)

    # --- save, load, pickle ---------------------------------------------------------------------------------------

    def save(self, path) -> Path:
        """Copy the run folder to ``path`` (a new or empty folder) and point its config at the data copied with it;
        ``rnnkit.load(path)`` reads it back. Returns the folder."""
        self._check_fitted()
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ValueError(f"path must be a new or empty folder, got {path}, which holds files")
        shutil.copytree(self.run_dir_, path, dirs_exist_ok=True)
        _rebase(path, self.run_dir_)
        return path

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_cleanup", "task_", "model_")}
        if "run_dir_" in state:
            root = Path(state.pop("run_dir_"))
            state["_files"] = {
                str(p.relative_to(root)): p.read_bytes()
                for p in sorted(root.rglob("*"))
                if p.is_file() and "tensorboard" not in p.relative_to(root).parts
            }
            state["_root"] = str(root)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        files, root = state.pop("_files", None), state.pop("_root", None)
        self.__dict__.update(state)
        if files is not None:
            run_dir = Path(tempfile.mkdtemp(prefix=f"rnnkit-{self.Task.name}-"))
            for rel, data in files.items():
                (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                (run_dir / rel).write_bytes(data)
            _rebase(run_dir, Path(root))
            self._adopt(run_dir, owned=True)

    @classmethod
    def from_run(cls, run_dir) -> Estimator:
        """The estimator fitted in ``run_dir`` (a folder ``fit``, ``save`` or ``rnnkit train`` wrote), its keywords
        those of the run's config."""
        run_dir = Path(run_dir)
        run = load_run(run_dir, "best", task=cls.Task.name, purpose=cls.__name__)
        params = {name: getattr(getattr(run.config, section), name) for name, (section, _) in cls._fields.items()}
        est = cls(**params, **cls._read_extra(run_dir).get("own", {}))
        est._adopt(run_dir, owned=False)
        return est


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # an array compared elementwise
        return a is b


def _rebase(run_dir: Path, old_root: Path) -> None:
    """Point config.json's data files (written by ``fit`` under ``old_root/data``) at the copies in ``run_dir``."""
    path = run_dir / "config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    data = config.get("data", {})
    for key in PATH_FIELDS:
        value = data.get(key)
        if isinstance(value, str) and Path(value).parent == old_root / "data":
            data[key] = str((run_dir / "data" / Path(value).name).resolve())
    atomic_write_json(path, config)


class Progress:
    """The trainer's events as a tqdm.auto bar (a widget in a notebook, a text bar in a terminal): steps, the
    training loss, and the last validation metrics."""

    def __init__(self) -> None:
        self.bar = None
        self.post: dict[str, str] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "start":
            from tqdm.auto import tqdm

            self.close()
            self.bar = tqdm(total=event.get("max_steps") or None, initial=event.get("step") or 0, unit="step",
                            desc=event.get("task"), leave=True)  # fmt: skip
        elif self.bar is None:
            return
        elif kind == "step":
            self.bar.update((event.get("step") or 0) - self.bar.n)
            self.post["loss"] = f"{event['loss']:.3f}"
            self.bar.set_postfix(self.post, refresh=False)
        elif kind == "eval":
            for key, value in event.items():
                if key.startswith("val_") and isinstance(value, float):
                    self.post[key] = f"{value:.3f}"
            self.bar.set_postfix(self.post)
        elif kind == "end":
            self.bar.update((event.get("step") or 0) - self.bar.n)
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
