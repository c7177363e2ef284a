"""The trainer: one readable loop for every task, with budgets, early stopping, checkpoints, exact resume and DDP.

``train(task, out_dir)`` runs a ``rnnkit.tasks.Task`` (the task says how to read its data, build its model and
score a batch; see ``rnnkit.tasks.base``)::

    for each epoch, for each batch k of the epoch (this rank's share):
        if the task carries state (the LM's truncated BPTT): state = None at k == 0, else the last one, detached
        loss, state = task.loss(model, batch, state)
        backward, clip the gradient norm, optimiser step at the scheduled learning rate
        every eval_every steps: metrics = task.evaluate(model); best.pt when the primary metric improves

The library never prints: progress goes to ``on_event`` and ``logging``.

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
from rnnkit.cells import LSTMState
from rnnkit.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from rnnkit.config import TrainConfig
from rnnkit.distributed import DistInfo, all_reduce, init_distributed, shutdown
from rnnkit.errors import ConfigError, RnnkitError
from rnnkit.io import atomic_write_json, remove_stale_temporaries
from rnnkit.metrics import MetricsLog, plot_training, tensorboard_writer
from rnnkit.precision import at_least_fp32, autocast, precision_name, resolve_precision
from rnnkit.sequence import detach_state, map_state
from rnnkit.tasks.base import Task

__all__ = ["DivergenceError", "TrainResult", "TrainingInterrupted", "lr_at", "train", "train_lm"]

log = logging.getLogger(__name__)
Event = dict[str, Any]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``saved`` is the checkpoint written on the way out, or None when none was."""

    def __init__(self, step: int, saved: Path | None) -> None:
        super().__init__(step, saved)
        self.step, self.saved = step, saved


class DivergenceError(RnnkitError):
    """The training loss became NaN or infinite; nothing from that step on was saved."""


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
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


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
    """Memory free for a new model on ``device``: CUDA's free memory, or Linux's MemAvailable; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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
    if payload["format_version"] < 2:
        raise ConfigError(
            f"cannot resume: {run_dir / 'last.pt'} was written by an older rnnkit (checkpoint format "
            f"{payload['format_version']}); it can still be sampled and evaluated"
        )
    saved = type(task.config).from_dict(payload["config"])
    if saved.model != task.config.model:
        raise ConfigError(f"cannot resume with another model config: saved {saved.model}, given {task.config.model}")
    old, new = _schedule_budget(saved.train), _schedule_budget(task.config.train)
    if old != new:
        log.warning(
            "resuming with max_%s=%s instead of %s: the learning-rate schedule changes from here on, so the result "
            "will differ from an uninterrupted run", *new, old[1],
        )  # fmt: skip
    return payload


def train(
    task: Task,
    out_dir: str | Path,
    *,
    resume: bool = False,
    on_event: Callable[[Event], None] | None = None,
) -> TrainResult:
    """Train ``task`` as its config says, writing the run folder ``out_dir`` (see the module docstring).

    Refuses (ConfigError) to start over a folder that holds a checkpoint unless ``resume=True``; bad data
    fails (DataError) before anything is written.
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
        result = _train(task, run_dir, payload, info, device, on_event)
        clean = True
        return result
    finally:
        shutdown(info, clean=clean)


def _train(task: Task, run_dir: Path, payload, info: DistInfo, device, on_event) -> TrainResult:
    cfg = task.config.train
    dtype = resolve_precision(cfg.precision, device)  # one log line: asked, resolved, why
    precision = precision_name(dtype)

    def amp():
        """The context of every forward and loss: bf16 autocast, or nothing for fp32."""
        return autocast(dtype, device)

    _seed_everything(cfg.seed + info.rank)  # ranks draw different dropout masks
    _check_fits(task, device)
    torch.manual_seed(cfg.seed)  # ... but build identical models
    model = task.build_model().to(device)
    torch.manual_seed(cfg.seed + info.rank)
    optimizer = _make_optimizer(model, cfg)
    batches = task.batches(info.rank, info.world_size)
    cfg, step_budget = _with_epoch_budget(cfg, len(batches))
    step, epoch, k, state = 0, 0, 0, None  # next batch: k of epoch; state: carried into it
    elapsed_prev, items_prev, best_metrics, last_metrics, stale = 0.0, 0, {}, {}, 0
    if payload is not None:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        step = int(payload["step"])
        epoch, k = int(payload["data_position"]["epoch"]), int(payload["data_position"]["index"])
        state = _state_from_list(payload["stream_state"], device)
        m = payload["metrics"]
        elapsed_prev, items_prev, stale = float(m["elapsed_s"]), int(m["items"]), int(m["evals_without_improvement"])
        best_metrics, last_metrics = dict(m["best_metrics"]), dict(m["last_metrics"])
        set_rng_state(
            payload["rng"] if info.rank == 0 or not payload.get("rng_per_rank") else payload["rng_per_rank"][info.rank]
        )
        if k >= len(batches) or (state is not None and state[0].size(-2) != cfg.batch_size):
            epoch, k, state = epoch + 1, 0, None  # the batch layout changed: start a new epoch
        saved_precision = payload.get("precision", "fp32")  # checkpoints before precision existed ran fp32
        if saved_precision != precision:
            log.warning("resuming in %s a run trained so far in %s: the result will differ from an uninterrupted run",
                        precision, saved_precision)  # fmt: skip
    finished = payload is not None and bool(cfg.max_steps) and step >= cfg.max_steps
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temporaries(run_dir):  # what a killed earlier session was writing
            log.info("removed %s, left by an interrupted write", stale)
        if not finished:  # a resume with nothing left to do leaves the folder's record of what ran as it is
            atomic_write_json(run_dir / "config.json", task.config.to_dict())
            task.write_files(run_dir)
    metrics = MetricsLog(run_dir / "metrics.jsonl", keep_up_to_step=step if payload else -1) if info.is_main else None
    tb = tensorboard_writer(run_dir / "tensorboard") if info.is_main else None
    net = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    num_params = sum(p.numel() for p in model.parameters())
    t0, step0, items_session, train_s = time.perf_counter(), step, 0, 0.0  # train_s: time in optimiser steps

    def elapsed() -> float:
        return elapsed_prev + time.perf_counter() - t0

    def rates() -> tuple[float, float | None]:
        """Training throughput (items per second of optimiser steps: evaluations and checkpoints left out), ETA."""
        session = time.perf_counter() - t0
        etas = [max(0.0, 60 * cfg.max_minutes - elapsed())] if cfg.max_minutes else []
        if cfg.max_steps and step > step0:
            etas.append((cfg.max_steps - step) * session / (step - step0))
        return (items_session / train_s if train_s > 0 else 0.0), (min(etas) if etas else None)

    def emit(kind: str, **fields: Any) -> None:
        if not info.is_main:
            return
        per_s, eta = rates()
        lr = optimizer.param_groups[0]["lr"]
        event = {"kind": kind, "step": step, "max_steps": cfg.max_steps or None, "items_per_s": per_s,
                 "unit": task.unit, "elapsed_s": elapsed(), "eta_s": eta, "lr": lr, **fields}  # fmt: skip
        if kind in ("step", "eval"):
            metrics.write(event)
            if tb is not None:
                for key, value in event.items():
                    if key not in ("kind", "step", "max_steps", "unit") and isinstance(value, float | int):
                        tb.add_scalar(key, value, step)
        if on_event is not None:
            on_event(event)

    def checkpoint_payload() -> dict[str, Any]:
        rng = get_rng_state()
        return {
            "kind": task.name,
            "model": model.state_dict(),  # the unwrapped module: no DDP "module." prefixes
            "optimizer": optimizer.state_dict(),
            "step": step,
            "data_position": {"epoch": epoch, "index": k},
            "stream_state": _state_to_list(state),
            "rng": rng,
            "rng_per_rank": rng_per_rank(rng),
            "config": task.config.to_dict(),
            "precision": precision,
            "artefacts": task.artefacts(),
            "metrics": {
                "best": best_metrics.get(task.primary), "best_metrics": best_metrics, "last_metrics": last_metrics,
                **{f"best_val_{key}": v for key, v in best_metrics.items()},
                **{f"last_val_{key}": v for key, v in last_metrics.items()},
                "evals_without_improvement": stale, "items": items_prev + items_session, "elapsed_s": elapsed(),
                "num_parameters": num_params,
            },
        }  # fmt: skip

    def rng_per_rank(rng):
        if not info.enabled:
            return None
        gathered: list[Any] = [None] * info.world_size
        torch.distributed.all_gather_object(gathered, rng["torch"])
        return [{**rng, "torch": t} for t in gathered]

    def save(*names: str) -> None:
        p = checkpoint_payload()  # every rank joins the RNG gather
        if info.is_main:
            for name in names:
                save_checkpoint(run_dir / name, p)
            emit("checkpoint", files=list(names))

    def evaluate() -> bool:
        """Validate, keep best.pt; True when early stopping says stop (the same answer on every rank)."""
        nonlocal best_metrics, last_metrics, stale
        with amp():  # the precision the model trains at is the one it is judged at (and rnnkit eval uses)
            last_metrics = task.evaluate(model, device, info)
        improved = task.is_better(last_metrics, best_metrics)
        if improved:
            best_metrics, stale = last_metrics, 0
        else:
            stale += 1
        emit(
            "eval",
            **{f"val_{key}": v for key, v in last_metrics.items()},
            **{f"best_val_{task.primary}": best_metrics[task.primary]},
        )
        # last.pt first: a kill between the two writes leaves a run that resumes (never a best.pt without a last.pt)
        save(*(("last.pt", "best.pt") if improved else ("last.pt",)))
        return bool(cfg.patience) and stale >= cfg.patience

    facts = task.describe()
    emit("start", resumed=payload is not None, run_dir=str(run_dir), num_parameters=num_params,
         world_size=info.world_size, device=str(device), precision=precision, task=task.name,
         **facts)  # fmt: skip
    model.train()
    stopped_because, loss_sum, loss_count, last_evaluated = "", 0.0, 0, step if payload else -1
    if cfg.max_steps and step >= cfg.max_steps:
        stopped_because = step_budget  # a resume of a finished run: nothing left to do
    try:
        while not stopped_because:
            if k == 0:
                state = None  # reset each epoch: every row starts again from zeros
            step_start = time.perf_counter()
            batch = batches.get(epoch, k)
            # ranks agree on the clock (the slowest one's), so they agree on the learning rate and on stopping
            (now,) = all_reduce([elapsed()], "max", info, device)
            if cfg.max_minutes and now >= 60 * cfg.max_minutes:
                stopped_because = "max_minutes"
                break
            lr = lr_at(cfg, step, now)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with amp():  # backward outside, as torch advises: its recorded casts take each gradient back to fp32
                loss, new_state = task.loss(net, batch, detach_state(state), device)  # truncated BPTT: no history
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            value = loss.item()
            if not math.isfinite(value):
                raise DivergenceError(
                    f"the training loss became {value} at step {step + 1} (lr {lr:.3g}); nothing from this step on "
                    "was saved: lower --lr, or set --clip"
                )
            optimizer.step()
            # the step is complete: commit its results (a Ctrl-C before this line resumes from the last step)
            # the carried state stays fp32 like the weights (under bf16 some backends return a bf16 (h, c))
            step, state, k = step + 1, map_state(lambda t: at_least_fp32(t.detach()), new_state), k + 1
            if k == len(batches):
                epoch, k = epoch + 1, 0
            items_session += batches.items(batch) * info.world_size
            train_s += time.perf_counter() - step_start
            loss_sum, loss_count = loss_sum + value, loss_count + 1

            if cfg.max_steps and step >= cfg.max_steps:
                stopped_because = step_budget
            if step % cfg.log_every == 0 or stopped_because:
                mean = loss_sum / max(loss_count, 1)
                emit("step", loss=mean, **task.train_metrics(mean), epoch=epoch)
                loss_sum, loss_count = 0.0, 0
            if step % cfg.eval_every == 0 or stopped_because:
                last_evaluated = step
                if evaluate() and not stopped_because:
                    stopped_because = "patience"
            elif cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save("last.pt")
    except KeyboardInterrupt:
        saved = None
        if info.is_main and not info.enabled and run_dir.is_dir():  # under DDP the other ranks may be gone
            save_checkpoint(run_dir / "last.pt", checkpoint_payload())
            saved = run_dir / "last.pt"
            log.info("interrupted at step %d: saved %s", step, saved)
        raise TrainingInterrupted(step, saved) from None
    if last_evaluated != step:
        evaluate()
    per_s, _ = rates()
    result = TrainResult(
        run_dir=run_dir, task=task.name, steps=step, best=best_metrics, last=last_metrics, items_per_second=per_s,
        elapsed_s=elapsed(), stopped_because=stopped_because, num_parameters=num_params, precision=precision,
        info=facts, model=model,
    )  # fmt: skip
    if info.is_main:
        plot_training(metrics.records, run_dir / "loss.png", task.primary)
        with amp():
            task.plots(model, run_dir, device)
        atomic_write_json(run_dir / "summary.json", _summary(result, task))
    if tb is not None:
        tb.close()
    emit("end", stopped_because=stopped_because, **{f"val_{key}": v for key, v in last_metrics.items()},
         **{f"best_val_{task.primary}": best_metrics[task.primary]})  # fmt: skip
    return result


def _summary(result: TrainResult, task: Task) -> dict[str, Any]:
    return {
        "task": result.task, "steps": result.steps, "elapsed_s": result.elapsed_s,
        "items_per_s": result.items_per_second, "unit": task.unit, "stopped_because": result.stopped_because,
        "primary": task.primary, "best": result.best, "last": result.last, "num_parameters": result.num_parameters,
        "precision": result.precision, **result.info,
    }  # fmt: skip


def train_lm(config, out_dir: str | Path, *, resume: bool = False, on_event=None) -> TrainResult:
    """Train the character-level language model: ``train(LMTask(config), ...)`` for an ``LMConfig``."""
    from rnnkit.tasks.language_model import LMTask

    return train(LMTask(config), out_dir, resume=resume, on_event=on_event)
