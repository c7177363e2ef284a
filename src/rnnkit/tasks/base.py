"""The task contract: what an application says, so that one trainer can run them all.

A task (fairseq's ``FairseqTask``, kept to what our tasks need) says how to read its data, build its model,
compute one batch's loss, evaluate (one primary metric and its direction), predict, and what a run must keep
to use the model later (a vocabulary, a label set, scalers). The trainer (``rnnkit.train``) owns the rest:
optimiser, schedule, clipping, budgets, early stopping, checkpoints, exact resume, DDP, progress, metrics and
plots. Adding an application is one module in ``rnnkit/tasks`` plus its data module, registered in ``TASKS``.

Life of a task object::

    task = ClassifyTask(config)          # a RunConfig subclass: model, data and train sections
    task.prepare(artefacts)              # read + check the data (DataError before any file is written);
                                         # ``artefacts`` from a checkpoint (resume) or None (a fresh run)
    model = task.build_model()           # the same model for the same config + artefacts
    batches = task.batches(rank, world)  # len(batches) per epoch; batches.get(epoch, k) is deterministic
    loss, state = task.loss(model, batch, state)
    metrics = task.evaluate(model, device, dist_info)   # {"loss": ..., task.primary: ..., ...}

For inference only (``load_run``), ``task.restore(artefacts)`` replaces ``prepare``: no training data is read.

A task also owns its inference commands (fairseq's ``inference_step``, ``fairseq-generate`` knowing no task by
name): ``commands`` lists each one the task answers (``eval``, ``predict``, ``sample``, ``forecast``) with its
flags, and the method it calls on a restored task::

    rnnkit eval --run DIR --data F --beam 5   ->   run.task.score(run.model, data="F", beam=5)      -> dict
    rnnkit predict --run DIR --data F         ->   run.task.predict_table(run.model, data="F", ...) -> Table
    rnnkit sample --run DIR --length 200      ->   run.task.sample(run.model, length=200, ...)      -> Iterator[str]
    rnnkit sample --run DIR --out song.mid    ->   run.task.sample(run.model, out="song.mid", ...)  -> Files

``rnnkit.cli`` builds every parser from these declarations and prints every result the same way (a scores dict
as one line or ``--json``; a table as CSV or TSV to ``--out`` or standard output; text streamed; the files a
command wrote, one ``wrote PATH`` line each), so a new task is its module, its data module and one line in
``rnnkit.tasks.TASKS``. One command name may be of another kind for each task (``sample`` streams an LM's text and
writes a music run's MIDI file): the run's task decides.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import Tensor, nn

from rnnkit.config import RunConfig

__all__ = ["SEARCH_SPACE", "Batches", "Command", "Files", "Flag", "Param", "Table", "Task"]


@dataclass(frozen=True)
class Flag:
    """A flag of one of a task's commands: what argparse needs, and the value the method gets when it is not given.

    ``output``: the flag names a file the command writes (``--plot FILE.png``), checked before any work is done
    (it must not exist unless ``--force``, and must end in ``output``).
    """

    name: str  # "--beam"
    help: str
    default: Any = None
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    action: str | None = None  # "store_true" for a switch
    required: bool = False
    output: str | None = None  # the suffix of a file this flag names and the command writes (".png")

    @property
    def dest(self) -> str:
        """The keyword argument the task's method receives: ``--n-best`` -> ``n_best``."""
        return self.name.removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class Command:
    """An inference command a task answers: ``rnnkit NAME --run DIR [flags]`` calls ``task.METHOD(model, **flags)``.

    ``kind`` says what the method returns and how the CLI shows it: ``"scores"`` a dict of metrics (one line, or
    one JSON object with ``--json``); ``"table"`` a ``Table`` (CSV or TSV, to ``--out`` or standard output);
    ``"text"`` an iterator of strings, streamed to standard output as they come; ``"files"`` a ``Files``, the
    files the method wrote (each named by a flag with ``output``, checked before the method runs).
    """

    name: str  # "eval"
    method: str  # "score"
    kind: Literal["scores", "table", "text", "files"]
    help: str
    flags: tuple[Flag, ...] = ()


@dataclass
class Table:
    """Rows a command produced, in input order, for the CLI to write (``header`` None: no header line)."""

    header: Sequence[str] | None
    rows: Iterable[Sequence[Any]]
    format: Literal["csv", "tsv"] = "csv"  # when the output file's suffix does not say
    notes: list[str] = field(default_factory=list)  # for the user, on standard error: unknown tokens, files written
    files: dict[str, bytes] = field(default_factory=dict)  # written with the rows, all or none (forecast's --plot)


@dataclass
class Files:
    """The files a command wrote, in order, and lines for the user about them (what was sampled, notes dropped)."""

    paths: list[Path]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Param:
    """One setting ``rnnkit tune`` searches: a field of a config section, and the values a trial may give it.

    Either ``choices`` (tried as listed: cells, poolings, sizes in powers of two) or a range ``low`` .. ``high``,
    drawn as integers when both bounds are ints, on a log scale with ``log`` (learning rates). The trial is
    Optuna's (``optuna.Trial``), used only through its ``suggest_*`` methods: this module does not import Optuna.
    """

    section: str  # "model", "data" or "train"
    name: str  # the field, which is also the parameter's name in the study: field names are unique across sections
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        ranged = self.low is not None and self.high is not None
        if bool(self.choices) == ranged or (not ranged and (self.low is not None or self.high is not None)):
            raise ValueError(f"Param {self.name}: give choices or both low and high, got {self!r}")
        if ranged and not self.low < self.high:
            raise ValueError(f"Param {self.name}: low must be below high, got {self.low} and {self.high}")
        if self.log and not (ranged and self.low > 0):
            raise ValueError(f"Param {self.name}: a log scale needs a range with low > 0, got {self!r}")

    def suggest(self, trial: Any) -> Any:
        """The value ``trial`` draws for this setting."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


# What every task's search space starts from (``Task.search_space``): the cell, the sizes, dropout, the learning rate,
# the batch size and the weight decay; a task's ``tuned`` adds its own settings and replaces these by name.
SEARCH_SPACE: tuple[Param, ...] = (
    Param("model", "mode", choices=("lstm", "gru")),
    Param("model", "hidden_size", choices=(32, 64, 128, 256)),
    Param("model", "num_layers", low=1, high=2),
    Param("model", "dropout", low=0.0, high=0.5),
    Param("train", "lr", low=3e-4, high=1e-2, log=True),
    Param("train", "batch_size", choices=(16, 32, 64, 128)),
    Param("train", "weight_decay", choices=(0.0, 0.01, 0.1)),
)


DATA = Flag("--data", "the file to read (or a built-in dataset: rnnkit datasets)", required=True, metavar="FILE")


class Batches(Protocol):
    """One epoch of training batches on this rank, addressable so that a checkpoint can resume mid-epoch."""

    def __len__(self) -> int:
        """Batches per epoch on this rank."""

    def get(self, epoch: int, k: int) -> Any:
        """Batch ``k`` of epoch ``epoch``: the same batch for the same (epoch, k), whatever ran before."""

    def items(self, batch: Any) -> int:
        """What the throughput counts in one batch (characters for the LM, examples for a classifier)."""


class Task(ABC):
    """Base class of rnnkit's applications; see the module docstring for the life of one."""

    name: ClassVar[str]  # CLI name and checkpoint kind: "lm", "classify"
    title: ClassVar[str]  # in messages: "runs/x is a char LM run"
    Config: ClassVar[type[RunConfig]]
    help: ClassVar[str] = ""  # one line for ``rnnkit train --help``: "character language model"
    commands: ClassVar[tuple[Command, ...]] = ()  # the inference commands this task answers
    primary: ClassVar[str]  # the metric early stopping and best.pt follow
    higher_is_better: ClassVar[bool]
    unit: ClassVar[str] = "examples"  # what items_per_s counts
    tuned: ClassVar[tuple[Param, ...]] = ()  # rnnkit tune: this task's own settings, and its ranges of the shared ones

    def __init__(self, config: RunConfig) -> None:
        if not isinstance(config, self.Config):
            raise TypeError(f"config must be a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config

    # --- data and model ---------------------------------------------------------------------------------------

    @abstractmethod
    def prepare(self, artefacts: dict[str, Any] | None) -> None:
        """Read and check the training and validation data; with ``artefacts`` (a resume), reuse them."""

    @abstractmethod
    def restore(self, artefacts: dict[str, Any]) -> None:
        """Take what a run saved (``artefacts()``), without reading any data: enough to build and use the model."""

    @abstractmethod
    def artefacts(self) -> dict[str, Any]:
        """What the run keeps to use the model later, as checkpoint-safe data (lists, strings, numbers, tensors)."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model for this config and these artefacts (draws from torch's global RNG)."""

    def describe(self) -> dict[str, Any]:
        """Facts about the prepared data for the start event (sizes, vocabulary, classes)."""
        return {}

    def write_files(self, run_dir: Path) -> None:
        """Human-readable artefacts in the run folder (vocab.json, labels.json), written atomically."""
        return None

    def finish_files(self, run_dir: Path) -> None:
        """After training (rank 0): bring what ``write_files`` wrote up to date with ``best.pt``, where evaluations
        change the artefacts (the forecaster's interval scale and combination). Default: nothing to do."""
        return None

    def export_graphs(self, model: nn.Module) -> list[Any]:
        """The graphs ``rnnkit export`` writes of ``model``: ``rnnkit.export.Graph``s of plain torch.nn modules."""
        from rnnkit.errors import ExportError

        raise ExportError(f"export of a {self.title} run is not supported")

    # --- training ---------------------------------------------------------------------------------------------

    @abstractmethod
    def batches(self, rank: int, world_size: int) -> Batches:
        """This rank's training batches."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, state: Any, device: torch.device) -> tuple[Tensor, Any]:
        """The mean loss of one batch and the state to carry into the next (None for a task without carried state)."""

    def validation_batch(self) -> Any:
        """One batch of validation data in the form ``loss`` takes, after ``prepare`` (``rnnkit gradflow --run``
        computes its loss). Default: the first training batch, for a task without validation batches of that form."""
        return self.batches(0, 1).get(0, 0)

    def train_metrics(self, loss: float) -> dict[str, float]:
        """Metrics derived from a mean training loss, reported beside it (the LM's bits per character)."""
        return {}

    @abstractmethod
    def evaluate(self, model: nn.Module, device: torch.device, dist_info) -> dict[str, float]:
        """Validation metrics: at least ``loss`` and ``self.primary``; the same on every rank."""

    def plots(self, model: nn.Module, run_dir: Path, device: torch.device) -> None:
        """Task plots written into the run folder at the end of training, after the last step's evaluation."""
        return None

    def is_better(self, new: dict[str, float], best: dict[str, float]) -> bool:
        """Whether evaluation ``new`` beats ``best`` (empty before the first): the primary metric, ties by loss."""
        if not best:
            return True
        a, b = new[self.primary], best[self.primary]
        if a != b:
            return a > b if self.higher_is_better else a < b
        return new["loss"] < best["loss"]

    @classmethod
    def search_space(cls, config: RunConfig) -> tuple[Param, ...]:
        """What ``rnnkit tune`` searches for a run configured like ``config``: ``SEARCH_SPACE`` (cell, sizes,
        dropout, learning rate, batch size, weight decay) with the task's ``tuned`` settings added, each replacing
        the shared setting of its name. A task overrides this where a setting depends on another (tied weights)."""
        space = {p.name: p for p in SEARCH_SPACE}
        space.update({p.name: p for p in cls.tuned})
        return tuple(space.values())

    # --- inference commands -----------------------------------------------------------------------------------

    @classmethod
    def command(cls, name: str) -> Command | None:
        """The declaration of command ``name``, or None when this task does not answer it."""
        return next((c for c in cls.commands if c.name == name), None)

    def after_training(self, run_dir: Path) -> list[str]:
        """Lines ``rnnkit train`` prints after the run's summary (the LM's sample from best.pt)."""
        return []
