"""The trainer: one readable loop for every task, with budgets, early stopping, checkpoints, exact resume and DDP.

``train(task, out_dir)`` runs a ``rnnkit.tasks.Task`` (the task says how to read its data, build its model and
score a batch; see ``rnnkit.tasks.base``). ``Trainer.fit`` is the loop, over one ``RunState`` (step, data
position, carried state, best and last metrics, evaluations without improvement, time and items)::

    for each epoch, for each batch k of the epoch (this rank's share):
        if the task carries state (the LM's truncated BPTT): state = None at k == 0, else the last one, detached
        loss, state = task.loss(model, batch, state)
        backward, clip the gradient norm, optimiser step at the scheduled learning rate
        every log_every steps: on_log; every eval_every steps (and every eval_seconds() of training time, by default
        a tenth of a time-only budget): metrics = task.evaluate(model), on_eval

Everything around the loop is a callback (``rnnkit.callbacks``): checkpoints (last.pt, best.pt when the primary
metric improves), early stopping, metrics.jsonl, TensorBoard, and ``on_event`` (the CLI's progress bar). The
library never prints: progress goes to callbacks and ``logging``.

Schedule: linear warmup over ``warmup_steps``, times a cosine from 1 down to ``min_lr_ratio`` whose progress is
step / max_steps when a step budget is set, else elapsed training time / max_minutes (a time budget only: the
cosine ends when the time does; the schedule then depends on the machine's speed). Both budgets count the whole
run, across resumes.

Precision (``train.precision``, see ``rnnkit.precision``): every forward and loss (training steps, evaluations,
the end's plots) runs under the run's autocast; the parameters, gradients, optimiser state, the state carried
between batches and the checkpoints stay fp32. The dtype it resolved to is in the start event, ``summary.json``
and each checkpoint.

Resume: ``last.pt`` holds the parameters, the optimiser, the step, the data position (epoch, batch), the state
carried into that batch, every RNG (per rank under DDP) and the elapsed time, so a run resumed with the same
config and a step budget ends bit-identical to one that was never interrupted. It differs when the schedule
depends on time (``max_steps = 0``), when the config changes (a new ``max_steps`` reshapes the cosine; a
warning says so), when the precision resolves differently (a bf16 run resumed on a CPU without bf16; a warning
says so), or when the number of processes changes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import rnnkit.kernels  # noqa: F401  (imported before seeding: its import-time oneDNN probe draws torch.randn)
from rnnkit.callbacks import (
    Callback,
    Checkpoints,
    DivergenceGuard,
    EarlyStopping,
    Event,
    EventHandler,
    MetricsFile,
    TensorBoard,
)
from rnnkit.cells import LSTMState
from rnnkit.checkpoint import get_rng_state, load_checkpoint, non_finite, save_checkpoint, set_rng_state
from rnnkit.config import TrainConfig
from rnnkit.distributed import DistInfo, all_reduce, init_distributed, shutdown
from rnnkit.errors import CheckpointError, ConfigError, DivergenceError
from rnnkit.io import atomic_write_json, available_memory, hold_lock, remove_stale_temporaries
from rnnkit.metrics import plot_training
from rnnkit.precision import at_least_fp32, autocast, precision_name, resolve_precision
from rnnkit.sequence import detach_state, map_state
from rnnkit.tasks.base import Task
from rnnkit.threads import ThreadTuner

__all__ = ["DivergenceError", "RunState", "TrainResult", "Trainer", "TrainingInterrupted", "lr_at", "train", "train_lm"]

log = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``saved`` is the checkpoint written on the way out, or None when none was."""

    def __init__(self, step: int, saved: Path | None) -> None:
        super().__init__(step, saved)
        self.step, self.saved = step, saved


@dataclass
class TrainResult:
    """What a run did; the run folder holds the rest (``summary.json`` is this, as JSON)."""

    run_dir: Path
    task: str
    steps: int
    best: dict[str, float]  # validation metrics of the best evaluation (the one best.pt holds)
    last: dict[str, float]  # validation metrics of the last evaluation
    items_per_second: float  # training throughput, in the task's unit (characters, examples)
    elapsed_s: float
    stopped_because: str  # "max_steps", "max_epochs", "max_minutes" or "patience"
    num_parameters: int
    precision: str = "fp32"  # what train.precision resolved to on this machine: "fp32" or "bf16"
    info: dict[str, Any] = field(default_factory=dict)  # the task's facts about its data
    model: nn.Module | None = field(default=None, repr=False)  # the trained model (unwrapped), last step


def lr_at(cfg: TrainConfig, step: int, elapsed_s: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based): warmup x cosine (see the module docstring)."""
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    progress = step / cfg.max_steps if cfg.max_steps else elapsed_s / (60.0 * cfg.max_minutes)
    progress = min(max(progress, 0.0), 1.0)
    cosine = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * warmup * cosine


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    params = list(model.parameters())
    # the fused kernel is one pass over each tensor where the foreach path makes several: on a CPU that is most of
    # a step's cost for a large embedding table (the classifier's n-gram bag; docs/results.md has the timings)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


def _state_to_list(state) -> list | None:
    return None if state is None else [t.detach().cpu() for t in (state if isinstance(state, tuple) else (state,))]


def _state_from_list(parts: list | None, device: torch.device):
    if parts is None:
        return None
    parts = [t.to(device) for t in parts]
    return LSTMState(*parts) if len(parts) == 2 else parts[0]  # (h, c) for an LSTM, h otherwise


def _check_resume(run_dir: Path, resume: bool) -> None:
    has_checkpoint = (run_dir / "last.pt").exists() or (run_dir / "best.pt").exists()
    if has_checkpoint and not resume:
        raise ConfigError(
            f"{run_dir} already holds a trained run; pass --resume to continue it or choose another --out"
        )
    if resume and not (run_dir / "last.pt").exists():
        raise ConfigError(f"cannot resume: {run_dir} holds no last.pt checkpoint")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"out_dir must be a folder, got the file {run_dir}")


def _available_bytes(device: torch.device) -> int | None:
    """Memory free for a new model on ``device``: CUDA's free memory, or what this process may still allocate
    (``rnnkit.io.available_memory``: MemAvailable, capped by ``ulimit -v``); None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_memory()


def _check_fits(task: Task, device: torch.device) -> None:
    """ConfigError before any allocation when the model, with its gradients and AdamW's two moments (4 copies of
    the parameters), is larger than the memory available: built on the meta device, it costs nothing to measure."""
    with torch.device("meta"):
        probe = task.build_model()
    size = sum(p.numel() * p.element_size() for p in probe.parameters())
    free = _available_bytes(device)
    if free is not None and 4 * size > free:
        count = sum(p.numel() for p in probe.parameters())
        raise ConfigError(
            f"the model has {count:,} parameters: {4 * size / 2**30:.1f} GiB with its gradients and optimiser "
            f"state, more than the {free / 2**30:.1f} GiB available on {device.type}; choose smaller sizes"
        )


def _with_epoch_budget(cfg: TrainConfig, batches_per_epoch: int) -> tuple[TrainConfig, str]:
    """The config the loop runs with, ``max_epochs`` turned into steps, and the name of the step budget that
    stops it ("max_steps" or "max_epochs")."""
    if not cfg.max_epochs:
        return cfg, "max_steps"
    steps = max(1, math.ceil(cfg.max_epochs * batches_per_epoch))
    if cfg.max_steps and cfg.max_steps <= steps:
        return cfg, "max_steps"
    return dataclasses.replace(cfg, max_steps=steps), "max_epochs"


def _schedule_budget(cfg: TrainConfig) -> tuple[str, float]:
    """What the cosine's progress counts: the step (or epoch) budget, or the time budget when there is none."""
    if cfg.max_steps or cfg.max_epochs:
        return ("steps/epochs", f"{cfg.max_steps}/{cfg.max_epochs:g}")
    return ("minutes", cfg.max_minutes)


def _resume_payload(task: Task, run_dir: Path) -> dict[str, Any]:
    payload = load_checkpoint(run_dir / "last.pt", kind=task.name)
    bad = non_finite(payload.get("model", {})) or non_finite(payload.get("optimizer", {}))
    if bad:
        raise CheckpointError(
            f"cannot resume: {run_dir / 'last.pt'} holds non-finite values (NaN or inf, first in {bad}): the run "
            "diverged before it was saved; train again with a lower --lr"
        )
    if payload["format_version"] < 2:
        raise ConfigError(
            f"cannot resume: {run_dir / 'last.pt'} was written by an older rnnkit (checkpoint format "
            f"{payload['format_version']}); it can still be sampled and evaluated"
        )
    saved = type(task.config).from_saved(payload["config"])
    if saved.model != task.config.model:
        raise ConfigError(f"cannot resume with another model config: saved {saved.model}, given {task.config.model}")
    old, new = _schedule_budget(saved.train), _schedule_budget(task.config.train)
    if old != new:
        log.warning(
            "resuming with max_%s=%s instead of %s: the learning-rate schedule changes from here on, so the result "
            "will differ from an uninterrupted run", *new, old[1],
        )  # fmt: skip
    return payload


@dataclass
class RunState:
    """Where a run stands: everything a checkpoint stores beside the model, the optimiser and the RNG states.

    The loop reads and advances this one object; nothing about the run's progress lives anywhere else, so a
    resume that restores it continues exactly where the run stopped.
    """

    step: int = 0  # optimiser steps taken, across sessions
    epoch: int = 0  # the next batch to train on is batch ``batch`` of epoch ``epoch``
    batch: int = 0
    carried: Any = None  # the recurrent state carried into that batch (truncated BPTT), or None
    best: dict[str, float] = field(default_factory=dict)  # validation metrics of the best evaluation (best.pt)
    last: dict[str, float] = field(default_factory=dict)  # validation metrics of the last evaluation
    evals_without_improvement: int = 0
    elapsed_s: float = 0.0  # training time of the sessions before this one
    items: int = 0  # items trained on (characters, examples) in the sessions before this one
    reference_loss: float | None = None  # the run's first training loss: DivergenceGuard's yardstick
    steps_above: int = 0  # consecutive training steps with a loss above DivergenceGuard's threshold
    reference_norm: float | None = None  # the untrained model's weight norm: DivergenceGuard's other yardstick

    def advance(self, new_state: Any, batches_per_epoch: int) -> None:
        """One optimiser step done: the next batch, and the state carried into it."""
        self.step, self.carried, self.batch = self.step + 1, new_state, self.batch + 1
        if self.batch == batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0

    def record(self, metrics: dict[str, float], improved: bool) -> None:
        """An evaluation's metrics: the last, and the best when they improved on it."""
        self.last = metrics
        if improved:
            self.best, self.evals_without_improvement = metrics, 0
        else:
            self.evals_without_improvement += 1

    def to_payload(self, elapsed_s: float, items: int) -> dict[str, Any]:
        """The checkpoint's fields for this state (the layout of format 2, which ``load_run`` reads)."""
        return {
            "step": self.step,
            "data_position": {"epoch": self.epoch, "index": self.batch},
            "stream_state": _state_to_list(self.carried),
            "metrics": {
                "best_metrics": self.best, "last_metrics": self.last,
                "evals_without_improvement": self.evals_without_improvement, "items": items, "elapsed_s": elapsed_s,
                "reference_loss": self.reference_loss, "steps_above": self.steps_above,
                "reference_norm": self.reference_norm,
            },
        }  # fmt: skip

    @classmethod
    def from_payload(cls, payload: dict[str, Any], device: torch.device) -> RunState:
        """The state a checkpoint holds; a field of the wrong type is a CheckpointError, not a later crash."""
        try:
            m, position = payload["metrics"], payload["data_position"]
            state = cls(
                step=_exact(payload["step"], int), epoch=_exact(position["epoch"], int),
                batch=_exact(position["index"], int), carried=_state_from_list(payload["stream_state"], device),
                best=dict(m["best_metrics"]), last=dict(m["last_metrics"]),
                evals_without_improvement=_exact(m["evals_without_improvement"], int),
                elapsed_s=float(_exact(m["elapsed_s"], (int, float))), items=_exact(m["items"], int),
                reference_loss=_optional_float(m.get("reference_loss")),
                steps_above=_exact(m.get("steps_above", 0), int),
                reference_norm=_optional_float(m.get("reference_norm")),
            )  # fmt: skip
        except (KeyError, TypeError) as e:
            raise CheckpointError(
                f"the checkpoint's run state is incomplete or corrupt ({type(e).__name__}: {e})"
            ) from e
        return state


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(_exact(value, (int, float)))  # absent in checkpoints before it existed


def _exact(value: Any, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"expected {kind}, got {type(value).__name__} {value!r}")
    return value


class Trainer:
    """One run of a task: the model, the optimiser, the ``RunState`` and the callbacks around the loop (``fit``)."""

    def __init__(self, task: Task, run_dir: Path, payload, info: DistInfo, device, callbacks=(), *,
                 plots: bool = True) -> None:  # fmt: skip
        self.task, self.run_dir, self.info, self.device, self.plots = task, run_dir, info, device, plots
        self.dtype = resolve_precision(task.config.train.precision, device)  # one log line: asked, resolved, why
        self.precision = precision_name(self.dtype)
        cfg = task.config.train
        _seed_everything(cfg.seed + info.rank)  # ranks draw different dropout masks
        _check_fits(task, device)
        torch.manual_seed(cfg.seed)  # ... but build identical models
        self.model = task.build_model().to(device)
        torch.manual_seed(cfg.seed + info.rank)
        self.optimizer = _make_optimizer(self.model, cfg)
        self.batches = task.batches(info.rank, info.world_size)
        self.cfg, self.step_budget = _with_epoch_budget(cfg, len(self.batches))
        self.state = RunState()
        if payload is not None:
            self._restore(payload)
        self.net = self.model
        if info.enabled:
            ids = [device] if device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self.guard = DivergenceGuard()  # train_step asks it before each optimiser step; _train runs it first on_eval
        self.callbacks: list[Callback] = list(callbacks)
        self.stopped_because, self.resumed = "", payload is not None
        self.t0, self.step0, self.items_session, self.train_s = time.perf_counter(), self.state.step, 0, 0.0

    def _restore(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.state = state = RunState.from_payload(payload, self.device)
        per_rank = payload.get("rng_per_rank")
        set_rng_state(payload["rng"] if self.info.rank == 0 or not per_rank else per_rank[self.info.rank])
        carried = state.carried
        if state.batch >= len(self.batches) or (carried is not None and carried[0].size(-2) != self.cfg.batch_size):
            state.epoch, state.batch, state.carried = state.epoch + 1, 0, None  # the batch layout changed
        saved_precision = payload.get("precision", "fp32")  # checkpoints before precision existed ran fp32
        if saved_precision != self.precision:
            log.warning("resuming in %s a run trained so far in %s: the result will differ from an uninterrupted run",
                        self.precision, saved_precision)  # fmt: skip

    # --- clocks and events ---------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Training time of the whole run so far, across sessions."""
        return self.state.elapsed_s + time.perf_counter() - self.t0

    def rates(self) -> tuple[float, float | None]:
        """Training throughput (items per second of optimiser steps: evaluations and checkpoints left out), ETA."""
        cfg, session = self.cfg, time.perf_counter() - self.t0
        etas = [max(0.0, 60 * cfg.max_minutes - self.elapsed())] if cfg.max_minutes else []
        if cfg.max_steps and self.state.step > self.step0:
            etas.append((cfg.max_steps - self.state.step) * session / (self.state.step - self.step0))
        return (self.items_session / self.train_s if self.train_s > 0 else 0.0), (min(etas) if etas else None)

    def event(self, kind: str, **fields: Any) -> Event:
        per_s, eta = self.rates()
        return {"kind": kind, "step": self.state.step, "max_steps": self.cfg.max_steps or None, "items_per_s": per_s,
                "unit": self.task.unit, "elapsed_s": self.elapsed(), "eta_s": eta,
                "lr": self.optimizer.param_groups[0]["lr"], **fields}  # fmt: skip

    def call(self, hook: str, *args: Any) -> None:
        """Run ``hook`` of every callback that runs on this process."""
        for callback in self.callbacks:
            if self.info.is_main or callback.every_rank:
                getattr(callback, hook)(self, *args)

    def stop(self, reason: str) -> None:
        """Ask the loop to stop after this step (a callback's way to end the run: early stopping)."""
        self.stopped_because = self.stopped_because or reason

    # --- checkpoints and evaluation -------------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint payload: the model, the optimiser, the run state, every RNG, the config and artefacts."""
        task, state, rng = self.task, self.state, get_rng_state()
        payload = {
            "kind": task.name, "model": self.model.state_dict(),  # the unwrapped module: no DDP "module." prefixes
            "optimizer": self.optimizer.state_dict(), "rng": rng, "rng_per_rank": self._rng_per_rank(rng),
            "config": task.config.to_dict(), "precision": self.precision, "artefacts": task.artefacts(),
            **state.to_payload(self.elapsed(), state.items + self.items_session),
        }  # fmt: skip
        payload["metrics"].update({
            "best": state.best.get(task.primary), "num_parameters": self.num_parameters,
            **{f"best_val_{key}": v for key, v in state.best.items()},
            **{f"last_val_{key}": v for key, v in state.last.items()},
        })  # fmt: skip
        return payload

    def _rng_per_rank(self, rng):
        if not self.info.enabled:
            return None
        gathered: list[Any] = [None] * self.info.world_size
        torch.distributed.all_gather_object(gathered, rng["torch"])
        return [{**rng, "torch": t} for t in gathered]

    def save(self, *names: str) -> None:
        """Write the checkpoint as each of ``names`` in the run folder (every rank joins; the main one writes)."""
        payload = self.checkpoint()
        if self.info.is_main:
            for name in names:
                save_checkpoint(self.run_dir / name, payload)
            self.call("on_checkpoint", self.event("checkpoint", files=list(names)))

    def evaluate(self) -> None:
        """Validate (under the run's autocast: the precision the model trains at is the one it is judged at)."""
        with autocast(self.dtype, self.device):
            metrics = self.task.evaluate(self.model, self.device, self.info)
        improved = self.task.is_better(metrics, self.state.best)
        self.state.record(metrics, improved)
        best = {f"best_val_{self.task.primary}": self.state.best[self.task.primary]}
        event = self.event("eval", **{f"val_{key}": v for key, v in metrics.items()}, **best)
        self.call("on_eval", event, improved)

    # --- the loop -------------------------------------------------------------------------------------------------

    def train_step(self, batch: Any, lr: float) -> float:
        """One optimiser step on ``batch``; the run state advances only once the step is complete."""
        state, start = self.state, time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.dtype, self.device):  # backward outside, as torch advises
            carried = detach_state(state.carried)  # truncated BPTT: the state's values, not its history
            loss, new_state = self.task.loss(self.net, batch, carried, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip:
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        else:
            grad_norm = nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        # one all-reduce: the ranks' mean loss (DDP's gradients are already averaged), so every rank judges and stops
        # alike, and the items of every rank (they differ: the last batch, bucketed lengths), so throughput is global
        w = self.info.world_size
        value, norm, items = all_reduce([loss.item() / w, float(grad_norm) / w, float(self.batches.items(batch))],
                                        "sum", self.info, self.device)  # fmt: skip
        self.guard.check_step(self, value, norm, lr)  # DivergenceError before a non-finite step is applied
        self.optimizer.step()
        # the carried state stays fp32 like the weights (under bf16 some backends return a bf16 (h, c))
        state.advance(map_state(lambda t: at_least_fp32(t.detach()), new_state), len(self.batches))
        self.items_session += int(items)
        self.train_s += time.perf_counter() - start
        return value

    def fit(self) -> TrainResult:
        """Train until a budget or early stopping ends the run; evaluate at the end if the last step was not."""
        cfg, state, task = self.cfg, self.state, self.task
        self.call("on_start", self.event("start", resumed=self.resumed, run_dir=str(self.run_dir),
                  num_parameters=self.num_parameters, world_size=self.info.world_size, device=str(self.device),
                  precision=self.precision, task=task.name, **task.describe()))  # fmt: skip
        self.model.train()
        last_evaluated, losses = (state.step if self.resumed else -1), []
        # evaluations by time as well as by steps, decided on the ranks' shared clock so that they all evaluate
        eval_s, (evaluated_at,) = cfg.eval_seconds(), all_reduce([self.elapsed()], "max", self.info, self.device)
        if cfg.max_steps and state.step >= cfg.max_steps:
            self.stop(self.step_budget)  # a resume of a finished run: nothing left to do
        try:
            while not self.stopped_because:
                if state.batch == 0:
                    state.carried = None  # each epoch starts every row from zeros
                batch = self.batches.get(state.epoch, state.batch)
                # ranks agree on the clock (the slowest one's), so they agree on the learning rate and on stopping
                (now,) = all_reduce([self.elapsed()], "max", self.info, self.device)
                if cfg.max_minutes and now >= 60 * cfg.max_minutes:
                    self.stop("max_minutes")
                    break
                losses.append(self.train_step(batch, lr_at(cfg, state.step, now)))
                if cfg.max_steps and state.step >= cfg.max_steps:
                    self.stop(self.step_budget)
                if state.step % cfg.log_every == 0 or self.stopped_because:
                    mean = sum(losses) / len(losses)
                    self.call("on_log", self.event("step", loss=mean, **task.train_metrics(mean), epoch=state.epoch))
                    losses = []
                due_by_time = eval_s and now - evaluated_at >= eval_s
                if state.step % cfg.eval_every == 0 or self.stopped_because or due_by_time:
                    last_evaluated, evaluated_at = state.step, now
                    self.evaluate()
                self.call("on_batch_end")
        except KeyboardInterrupt:
            raise TrainingInterrupted(state.step, self._save_on_interrupt()) from None
        if last_evaluated != state.step:
            self.evaluate()
        return self._finish()

    def _save_on_interrupt(self) -> Path | None:
        if not self.info.is_main or self.info.enabled or not self.run_dir.is_dir():  # under DDP the others may be gone
            return None
        save_checkpoint(self.run_dir / "last.pt", self.checkpoint())
        log.info("interrupted at step %d: saved %s", self.state.step, self.run_dir / "last.pt")
        return self.run_dir / "last.pt"

    def _finish(self) -> TrainResult:
        task, state = self.task, self.state
        result = TrainResult(
            run_dir=self.run_dir, task=task.name, steps=state.step, best=state.best, last=state.last,
            items_per_second=self.rates()[0], elapsed_s=self.elapsed(), stopped_because=self.stopped_because,
            num_parameters=self.num_parameters, precision=self.precision, info=task.describe(), model=self.model,
        )  # fmt: skip
        if self.info.is_main:
            records = next((c.records for c in self.callbacks if isinstance(c, MetricsFile)), [])
            if self.plots:
                plot_training(records, self.run_dir / "loss.png", task.primary)
                with autocast(self.dtype, self.device):
                    task.plots(self.model, self.run_dir, self.device)
            atomic_write_json(self.run_dir / "summary.json", _summary(result, task))
            task.finish_files(self.run_dir)
        last = {f"val_{key}": v for key, v in state.last.items()}
        best = {f"best_val_{task.primary}": state.best[task.primary]}
        self.call("on_end", self.event("end", stopped_because=self.stopped_because, **last, **best))
        return result


def train(
    task: Task,
    out_dir: str | Path,
    *,
    resume: bool = False,
    on_event: Callable[[Event], None] | None = None,
    callbacks: list[Callback] | None = None,
    plots: bool = True,
) -> TrainResult:
    """Train ``task`` as its config says, writing the run folder ``out_dir`` (see the module docstring).

    Refuses (ConfigError) to start over a folder that holds a checkpoint unless ``resume=True``; bad data
    fails (DataError) before anything is written. ``on_event`` gets every event as a dict (the CLI's progress
    bar); ``callbacks`` run after the built-in ones (``rnnkit.callbacks``). ``plots=False`` leaves out the PNGs
    drawn at the end (loss.png and the task's): most of a tiny run's time (the estimators' checks fit hundreds).
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be an rnnkit Task, got {type(task).__name__}")
    run_dir = Path(out_dir)
    _check_resume(run_dir, resume)
    payload = _resume_payload(task, run_dir) if resume else None
    task.prepare(payload["artefacts"] if payload is not None else None)  # every data check before any write
    info, device = init_distributed(task.config.train.device)
    clean = False
    try:
        result = _train(task, run_dir, payload, info, device, on_event, list(callbacks or []), plots)
        clean = True
        return result
    finally:
        shutdown(info, clean=clean)


def _train(task: Task, run_dir: Path, payload, info: DistInfo, device, on_event, extra: list[Callback], plots: bool):
    # builds the model and batches: fails before any write
    trainer = Trainer(task, run_dir, payload, info, device, plots=plots)
    if not info.is_main:
        return _fit(trainer, task, run_dir, payload, info, on_event, extra)
    run_dir.mkdir(parents=True, exist_ok=True)
    with hold_lock(run_dir):  # a second train on this --out is refused in one line (rank 0 holds it for the job)
        return _fit(trainer, task, run_dir, payload, info, on_event, extra)


def _fit(trainer: Trainer, task: Task, run_dir: Path, payload, info: DistInfo, on_event, extra: list[Callback]):
    cfg = trainer.cfg
    finished = payload is not None and bool(cfg.max_steps) and trainer.state.step >= cfg.max_steps
    if info.is_main:
        for leftover in remove_stale_temporaries(run_dir):  # what a killed earlier session was writing
            log.info("removed %s, left by an interrupted write", leftover)
        if not finished:  # a resume with nothing left to do leaves the folder's record of what ran as it is
            atomic_write_json(run_dir / "config.json", task.config.to_dict())
            task.write_files(run_dir)
    callbacks: list[Callback] = [trainer.guard, Checkpoints(cfg.checkpoint_every), EarlyStopping(cfg.patience)]
    if info.is_main:
        resumed_at = trainer.state.step if payload is not None else -1
        callbacks += [MetricsFile(run_dir / "metrics.jsonl", resumed_at=resumed_at)]
        callbacks += [TensorBoard(run_dir / "tensorboard")]
    if on_event is not None:
        callbacks.append(EventHandler(on_event))
    threads = torch.get_num_threads()
    if trainer.device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif trainer.device.type == "cpu" and threads > 1 and not info.enabled:
        callbacks.append(ThreadTuner(threads))  # under DDP each rank's steps wait for the others': not its own time
    trainer.callbacks = callbacks + extra
    try:
        return trainer.fit()
    finally:  # the process's thread count as it was (a notebook trains several models)
        torch.set_num_threads(threads)


def _summary(result: TrainResult, task: Task) -> dict[str, Any]:
    return {
        "task": result.task, "steps": result.steps, "elapsed_s": result.elapsed_s,
        "items_per_s": result.items_per_second, "unit": task.unit, "stopped_because": result.stopped_because,
        "primary": task.primary, "best": result.best, "last": result.last, "num_parameters": result.num_parameters,
        "precision": result.precision, **result.info,
    }  # fmt: skip


def train_lm(config, out_dir: str | Path, *, resume: bool = False, on_event=None, plots: bool = True) -> TrainResult:
    """Train the character-level language model: ``train(LMTask(config), ...)`` for an ``LMConfig``."""
    from rnnkit.tasks.language_model import LMTask

    return train(LMTask(config), out_dir, resume=resume, on_event=on_event, plots=plots)
