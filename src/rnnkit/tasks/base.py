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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from rnnkit.config import RunConfig

__all__ = ["Batches", "Task"]


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
    primary: ClassVar[str]  # the metric early stopping and best.pt follow
    higher_is_better: ClassVar[bool]
    unit: ClassVar[str] = "examples"  # what items_per_s counts

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
