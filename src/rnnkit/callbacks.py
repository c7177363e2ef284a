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
the gather of the random-number states). Built in, in the order they run: ``DivergenceGuard`` (stops a run whose
loss is non-finite or exploding, before anything is saved), ``Checkpoints`` (last.pt, best.pt),
``EarlyStopping`` (patience), ``MetricsFile`` (metrics.jsonl), ``TensorBoard`` and ``EventHandler`` (the
``on_event`` function the CLI's progress bar is).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rnnkit.errors import DivergenceError
from rnnkit.metrics import MetricsLog, tensorboard_writer

__all__ = [
    "Callback", "Checkpoints", "DivergenceGuard", "EarlyStopping", "Event", "EventHandler", "MetricsFile",
    "TensorBoard", "explosion_threshold",
]  # fmt: skip

DIVERGENCE_FACTOR = 100.0  # "exploding": a loss this many times the untrained model's scale above its loss
DIVERGENCE_STEPS = 20  # consecutive training steps above the threshold before a run is stopped for it
DIVERGENCE_NORM_FACTOR = 1000.0  # "exploding" weights: their norm this many times the untrained model's


def explosion_threshold(reference: float) -> float:
    """The loss above which a run counts as exploding, given ``reference``, the run's first training loss (the
    untrained model's: ln V for a classifier or LM, about 1 for a Gaussian NLL on scaled series).

    ``reference + DIVERGENCE_FACTOR * max(|reference|, 1)``: a difference scaled by the loss's own size, so it
    works for losses near 0 and for negative ones (a forecast NLL). A classifier of 2 classes starts at 0.69 and
    is stopped above 100.7 nats per example; an over-fitted but sane one sits at a few nats.
    """
    return reference + DIVERGENCE_FACTOR * max(abs(reference), 1.0)


Event = dict[str, Any]


class Trainer(Protocol):
    """What a callback may use of ``rnnkit.train.Trainer`` (a protocol, so this module does not import it)."""

    state: Any  # the RunState: step, epoch, best and last metrics, evaluations without improvement, ...
    model: Any  # the unwrapped model

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


class DivergenceGuard(Callback):
    """The divergence policy, the same for every task (every rank applies it, so all stop at the same step):

    - a training loss or gradient norm that is NaN or inf stops the run at once, before the optimiser step (the
      loss is averaged over the ranks first, and DDP's gradients are already, so every rank sees one value);
    - a training loss above ``explosion_threshold`` for ``DIVERGENCE_STEPS`` steps in a row stops it (one spiky
      batch early in training does not);
    - a validation loss that is NaN, inf or above ``explosion_threshold`` stops it, and so do weights whose norm
      grew ``DIVERGENCE_NORM_FACTOR`` times the untrained model's; both are checked at each evaluation, before
      its checkpoint is written (this callback runs first). The norm catches what a likelihood hides: a forecaster
      whose weights blew up to 1e6 widens its predicted spread, so its NLL grows only as log(spread) (15 nats)
      while its MASE reaches 1e7.

    The references (the run's first training loss, the untrained model's weight norm) are kept in the run state,
    so a resumed run is judged by the same ones.
    Stopping raises ``DivergenceError``: the CLI prints one line and exits 2; last.pt stays the last finite state.
    """

    every_rank = True

    def on_start(self, trainer: Trainer, event: Event) -> None:
        if trainer.state.reference_norm is None:
            trainer.state.reference_norm = weight_norm(trainer.model)

    def check_step(self, trainer: Trainer, loss: float, grad_norm: float, lr: float) -> None:
        state = trainer.state
        step = state.step + 1
        if not math.isfinite(loss) or not math.isfinite(grad_norm):
            what = (f"the training loss became {loss}" if not math.isfinite(loss)
                    else f"the gradient norm became {grad_norm} (loss {loss:.4g})")  # fmt: skip
            raise DivergenceError(
                f"training diverged: {what} at step {step} (lr {lr:.3g}); the step was not "
                "applied and nothing non-finite was saved: lower --lr or set --clip"
            )
        if state.reference_loss is None:
            state.reference_loss = loss
        limit = explosion_threshold(state.reference_loss)
        state.steps_above = state.steps_above + 1 if loss > limit else 0
        if state.steps_above >= DIVERGENCE_STEPS:
            raise DivergenceError(
                f"training diverged: the training loss stayed above {limit:.4g} (the first step's "
                f"{state.reference_loss:.4g} + {DIVERGENCE_FACTOR:g} x max(|it|, 1)) for {DIVERGENCE_STEPS} steps, "
                f"{loss:.4g} at step {step} (lr {lr:.3g}): lower --lr or set --clip"
            )

    def on_eval(self, trainer: Trainer, event: Event, improved: bool) -> None:
        state = trainer.state
        loss = state.last.get("loss")
        if loss is None:
            return
        limit = None if state.reference_loss is None else explosion_threshold(state.reference_loss)
        if not math.isfinite(loss) or (limit is not None and loss > limit):
            bound = "" if not math.isfinite(loss) else (
                f" (above {limit:.4g}: the first training loss {state.reference_loss:.4g} + {DIVERGENCE_FACTOR:g} x "
                "max(|it|, 1))"
            )  # fmt: skip
            raise DivergenceError(
                f"training diverged: the validation loss is {loss:.4g} at step {state.step}{bound}; nothing from "
                "this evaluation on was saved: lower --lr or set --clip"
            )
        norm, start = weight_norm(trainer.model), state.reference_norm
        if start is not None and not norm <= DIVERGENCE_NORM_FACTOR * max(start, 1e-12):
            raise DivergenceError(
                f"training diverged: the weights' norm grew from {start:.4g} to {norm:.4g} (more than "
                f"{DIVERGENCE_NORM_FACTOR:g} times) by step {state.step}; nothing from this evaluation on was saved: "
                "lower --lr or set --clip"
            )


def weight_norm(model: Any) -> float:
    """The L2 norm of all the model's floating-point parameters together."""
    import torch

    params = [p.detach() for p in model.parameters() if p.is_floating_point()]
    return (
        float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p) for p in params]))) if params else 0.0
    )


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
