"""The trainer's callbacks: what happens around the loop (Lightning's and Keras' shape, kept to what rnnkit needs).

The trainer (``rnnkit.train.Trainer``) owns the loop and the ``RunState``; everything else it does is a callback
on one of its events, each called with the trainer and the event (a dict with ``kind``, ``step``, ``lr``,
``items_per_s``, ``elapsed_s``, ``eta_s`` and the event's own fields)::

    on_start(trainer, event)            before the first step of this session
    on_log(trainer, event)              every log_every steps: the mean training loss since the last log
    on_eval(trainer, event, improved)   after each evaluation; trainer.state holds its metrics
    on_batch_end(trainer)               after every optimiser step (and its evaluation, if one was due)
    on_checkpoint(trainer, event)       after last.pt (and best.pt) were written
    on_end(trainer, event)              after the last evaluation

A callback runs on the main process only, unless it sets ``every_rank = True`` (checkpoints do: every rank joins
the gather of the random-number states). Built in, in the order they run: ``Checkpoints`` (last.pt, best.pt),
``EarlyStopping`` (patience), ``MetricsFile`` (metrics.jsonl), ``TensorBoard`` and ``EventHandler`` (the
``on_event`` function the CLI's progress bar is).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rnnkit.metrics import MetricsLog, tensorboard_writer

__all__ = ["Callback", "Checkpoints", "EarlyStopping", "Event", "EventHandler", "MetricsFile", "TensorBoard"]

Event = dict[str, Any]


class Trainer(Protocol):
    """What a callback may use of ``rnnkit.train.Trainer`` (a protocol, so this module does not import it)."""

    state: Any  # the RunState: step, epoch, best and last metrics, evaluations without improvement, ...

    def save(self, *names: str) -> None: ...

    def stop(self, reason: str) -> None: ...


class Callback:
    """Base class: every hook does nothing."""

    every_rank = False

    def on_start(self, trainer: Trainer, event: Event) -> None:
        pass

    def on_log(self, trainer: Trainer, event: Event) -> None:
        pass

    def on_eval(self, trainer: Trainer, event: Event, improved: bool) -> None:
        pass

    def on_batch_end(self, trainer: Trainer) -> None:
        pass

    def on_checkpoint(self, trainer: Trainer, event: Event) -> None:
        pass

    def on_end(self, trainer: Trainer, event: Event) -> None:
        pass


class Checkpoints(Callback):
    """``last.pt`` after every evaluation and every ``checkpoint_every`` steps; ``best.pt`` when the evaluation
    improved. last.pt is written first: a kill between the two writes leaves a run that resumes."""

    every_rank = True

    def __init__(self, every: int) -> None:
        self.every, self.saved_at = every, -1

    def on_eval(self, trainer: Trainer, event: Event, improved: bool) -> None:
        trainer.save(*(("last.pt", "best.pt") if improved else ("last.pt",)))
        self.saved_at = trainer.state.step

    def on_batch_end(self, trainer: Trainer) -> None:
        step = trainer.state.step
        if self.every and step % self.every == 0 and self.saved_at != step:
            trainer.save("last.pt")
            self.saved_at = step


class EarlyStopping(Callback):
    """Stop after ``patience`` evaluations in a row without improvement of the task's primary metric (0: never)."""

    every_rank = True  # every rank must stop at the same step

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_eval(self, trainer: Trainer, event: Event, improved: bool) -> None:
        if self.patience and trainer.state.evals_without_improvement >= self.patience:
            trainer.stop("patience")


class MetricsFile(Callback):
    """``metrics.jsonl``: one JSON object per training log and per evaluation; on resume, what was logged after the
    checkpoint the run continues from is dropped, so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, *, resumed_at: int | None) -> None:
        self.log = MetricsLog(path, keep_up_to_step=resumed_at)

    @property
    def records(self) -> list[Event]:
        return self.log.records

    def on_log(self, trainer: Trainer, event: Event) -> None:
        self.log.write(event)

    def on_eval(self, trainer: Trainer, event: Event, improved: bool) -> None:
        self.log.write(event)


class TensorBoard(Callback):
    """Every number of the step and eval events as a scalar, when tensorboard is installed (else nothing)."""

    def __init__(self, log_dir: Path) -> None:
        self.writer = tensorboard_writer(log_dir)

    def _scalars(self, event: Event) -> None:
        if self.writer is None:
            return
        for key, value in event.items():
            if key not in ("kind", "step", "max_steps", "unit") and isinstance(value, float | int):
                self.writer.add_scalar(key, value, event["step"])

    def on_log(self, trainer: Trainer, event: Event) -> None:
        self._scalars(event)

    def on_eval(self, trainer: Trainer, event: Event, improved: bool) -> None:
        self._scalars(event)

    def on_end(self, trainer: Trainer, event: Event) -> None:
        if self.writer is not None:
            self.writer.close()


class EventHandler(Callback):
    """Every event to one function (``train(..., on_event=f)``): the CLI's progress bar, a test's list."""

    def __init__(self, handler: Callable[[Event], None]) -> None:
        self.handler = handler

    def on_start(self, trainer: Trainer, event: Event) -> None:
        self.handler(event)

    def on_log(self, trainer: Trainer, event: Event) -> None:
        self.handler(event)

    def on_eval(self, trainer: Trainer, event: Event, improved: bool) -> None:
        self.handler(event)

    def on_checkpoint(self, trainer: Trainer, event: Event) -> None:
        self.handler(event)

    def on_end(self, trainer: Trainer, event: Event) -> None:
        self.handler(event)
