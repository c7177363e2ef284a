"""Train a character-level language model: one readable loop, truncated BPTT, checkpoints, DDP.

``train_lm(config, out_dir)`` reads the text (a file or the built-in corpus), splits it, builds the vocabulary
and ``CharLM``, and runs::

    for each epoch:
        state = None                                   # reset: each row starts from zeros
        for each chunk x, y (B, T) of the stream:      # chunk k continues where chunk k-1 stopped
            state = detach_state(state)                # truncated BPTT: keep values, cut the graph
            logits, state = model(x, state)            # (B, T, V)
            loss = cross-entropy(logits, y)            # nats per character
            backward, clip the gradient norm, optimiser step at the scheduled learning rate

with periodic validation (loss and bpc = loss / ln 2), early stopping, a step and/or time budget, and
``last.pt`` / ``best.pt`` checkpoints from which ``resume=True`` continues exactly (same parameters as an
uninterrupted run). The library never prints: progress goes to ``on_event`` and ``logging``.

Schedule: linear warmup over ``warmup_steps``, times a cosine from 1 down to ``min_lr_ratio`` whose progress is
step / max_steps when a step budget is set, else elapsed training time / max_minutes (a time budget only:
the cosine ends when the time does; the schedule then depends on the machine's speed, so such runs are
not bit-reproducible). Both budgets count the whole run, across resumes.
"""

from __future__ import annotations

import json
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
from rnnkit.checkpoint import KIND, get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from rnnkit.config import LMConfig, TrainConfig
from rnnkit.data import TextStream, Vocab, default_corpus, read_text, split_text
from rnnkit.distributed import DistInfo, all_reduce, init_distributed, shutdown
from rnnkit.errors import ConfigError, DataError
from rnnkit.metrics import LN2, MetricsLog, evaluate_ids, evaluate_text, plot_losses, tensorboard_writer
from rnnkit.sequence import detach_state
from rnnkit.tasks.language_model import CharLM, lm_loss

__all__ = ["TrainResult", "evaluate_text", "load_text", "lr_at", "train_lm"]

log = logging.getLogger(__name__)
Event = dict[str, Any]
EVENT_FIELDS = ("step", "max_steps", "loss", "bpc", "val_loss", "val_bpc", "tokens_per_s", "elapsed_s", "eta_s", "lr")


@dataclass
class TrainResult:
    """What a run did; the run folder holds the rest."""

    run_dir: Path
    steps: int
    best_val_loss: float
    best_val_bpc: float
    last_val_loss: float
    last_val_bpc: float
    tokens_per_second: float
    elapsed_s: float
    stopped_because: str  # "max_steps", "max_minutes" or "patience"
    train_chars: int
    val_chars: int
    vocab_size: int
    num_parameters: int
    model: nn.Module | None = field(default=None, repr=False)  # the trained model (unwrapped), last step


def lr_at(cfg: TrainConfig, step: int, elapsed_s: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based): warmup x cosine (see the module docstring)."""
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    progress = step / cfg.max_steps if cfg.max_steps else elapsed_s / (60.0 * cfg.max_minutes)
    progress = min(max(progress, 0.0), 1.0)
    cosine = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * warmup * cosine


def load_text(config: LMConfig) -> str:
    """The run's text: ``config.data.data`` (a UTF-8 file) or the built-in corpus, capped at ``max_chars``."""
    d = config.data
    text = read_text(d.data) if d.data is not None else default_corpus(d.max_chars)
    return text[: d.max_chars] if d.max_chars else text


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


def _state_from_list(parts: list | None, mode: str, device: torch.device):
    if parts is None:
        return None
    from rnnkit.cells import LSTMState

    parts = [t.to(device) for t in parts]
    return LSTMState(*parts) if mode == "lstm" else parts[0]


class _Run:
    """The mutable state of one training run; ``payload()`` is exactly what a checkpoint needs to continue."""

    def __init__(self) -> None:
        self.step = 0
        self.epoch = 0
        self.chunk = 0  # next chunk of the epoch to train on
        self.state = None  # recurrent state carried into that chunk
        self.elapsed_prev = 0.0  # training seconds of earlier sessions (before a resume)
        self.best_val_loss = math.inf
        self.last_val_loss = math.inf
        self.evals_without_improvement = 0
        self.tokens_prev = 0


def train_lm(
    config: LMConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    on_event: Callable[[Event], None] | None = None,
) -> TrainResult:
    """Train ``CharLM`` as ``config`` says, writing the run folder ``out_dir`` (see the module docstring).

    Refuses (ConfigError) to start over a folder that holds a checkpoint unless ``resume=True``; bad data
    fails (DataError) before anything is written.
    """
    if not isinstance(config, LMConfig):
        raise TypeError(f"config must be an LMConfig, got {type(config).__name__}")
    run_dir = Path(out_dir)
    has_checkpoint = (run_dir / "last.pt").exists() or (run_dir / "best.pt").exists()
    if has_checkpoint and not resume:
        raise ConfigError(
            f"{run_dir} already holds a trained run; pass --resume to continue it or choose another --out"
        )
    if resume and not (run_dir / "last.pt").exists():
        raise ConfigError(f"cannot resume: {run_dir} holds no last.pt checkpoint")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"out_dir must be a folder, got the file {run_dir}")
    cfg = config.train

    # --- data: every check before the first file is written ---------------------------------------------
    payload = load_checkpoint(run_dir / "last.pt", kind=KIND) if resume else None
    if payload is not None:
        saved = LMConfig.from_dict(payload["config"])
        if saved.model != config.model:
            raise ConfigError(f"cannot resume with another model config: saved {saved.model}, given {config.model}")
    text = load_text(config)
    train_text, val_text = split_text(text, config.data.val_fraction)
    vocab = Vocab(payload["vocab"]) if payload is not None else Vocab.from_text(text)
    train_ids = vocab.encode(train_text, tensor=True)  # (N_train,)
    val_ids = vocab.encode(val_text, tensor=True)  # (N_val,)
    if cfg.eval_chars:
        val_ids = val_ids[: cfg.eval_chars + 1]

    info, device = init_distributed(cfg.device)
    clean = False
    try:
        stream = TextStream(train_ids, cfg.batch_size, cfg.bptt, rank=info.rank, world_size=info.world_size)
        if stream.row_length < cfg.bptt:
            raise DataError(
                f"training text of {len(train_text)} characters is shorter than one batch: "
                f"batch_size={cfg.batch_size} x bptt={cfg.bptt} x {info.world_size} process(es) needs "
                f"{cfg.batch_size * cfg.bptt * info.world_size + 1}"
            )
        result = _train(config, run_dir, payload, vocab, stream, val_ids, info, device, on_event, len(train_text))
        clean = True
        return result
    finally:
        shutdown(info, clean=clean)


def _train(config, run_dir, payload, vocab, stream, val_ids, info: DistInfo, device, on_event, train_chars):
    cfg = config.train
    _seed_everything(cfg.seed + info.rank)  # ranks draw different dropout masks
    torch.manual_seed(cfg.seed)  # ... but build identical models
    model = CharLM(len(vocab), config.model).to(device)
    torch.manual_seed(cfg.seed + info.rank)
    optimizer = _make_optimizer(model, cfg)
    run = _Run()
    if payload is not None:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        run.step = int(payload["step"])
        run.epoch = int(payload["data_position"]["epoch"])
        run.chunk = int(payload["data_position"]["chunk"])
        run.state = _state_from_list(payload["stream_state"], config.model.mode, device)
        run.elapsed_prev = float(payload["scheduler"]["elapsed_s"])
        m = payload["metrics"]
        run.best_val_loss = float(m["best_val_loss"])
        run.last_val_loss = float(m["last_val_loss"])
        run.evals_without_improvement = int(m["evals_without_improvement"])
        run.tokens_prev = int(m.get("tokens", 0))
        if info.rank == 0 or payload.get("rng_per_rank") is None:
            set_rng_state(payload["rng"])
        else:
            set_rng_state(payload["rng_per_rank"][info.rank])
        if run.chunk >= len(stream) or (run.state is not None and run.state[0].size(-2) != cfg.batch_size):
            run.epoch, run.chunk, run.state = run.epoch + 1, 0, None  # the batch layout changed: new epoch
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        vocab.save(run_dir / "vocab.json")
    metrics = (
        MetricsLog(run_dir / "metrics.jsonl", keep_up_to_step=run.step if payload else -1) if info.is_main else None
    )
    tb = tensorboard_writer(run_dir / "tensorboard") if info.is_main else None
    net = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    num_params = sum(p.numel() for p in model.parameters())
    chars_per_step = stream.batch_size * cfg.bptt * info.world_size

    def emit(event: Event) -> None:
        if not info.is_main:
            return
        for key in EVENT_FIELDS:  # every event carries every field; None where it does not apply
            event.setdefault(key, None)
        if metrics is not None and event["kind"] in ("step", "eval"):
            metrics.write(event)
        if tb is not None and event["kind"] in ("step", "eval"):
            for key in ("loss", "bpc", "val_loss", "val_bpc", "lr", "tokens_per_s"):
                if event.get(key) is not None:
                    tb.add_scalar(key, event[key], event["step"])
        if on_event is not None:
            on_event(event)

    def checkpoint_payload() -> dict[str, Any]:
        rng = get_rng_state()
        return {
            "kind": KIND,
            "model": model.state_dict(),  # the unwrapped module: no DDP "module." prefixes
            "optimizer": optimizer.state_dict(),
            "scheduler": {"step": run.step, "elapsed_s": elapsed()},
            "step": run.step,
            "data_position": {"epoch": run.epoch, "chunk": run.chunk},
            "stream_state": _state_to_list(run.state),
            "rng": rng,
            "rng_per_rank": rng_per_rank(rng),
            "config": config.to_dict(),
            "vocab": vocab.chars,
            "metrics": {
                "best_val_loss": run.best_val_loss,
                "best_val_bpc": run.best_val_loss / LN2,
                "last_val_loss": run.last_val_loss,
                "last_val_bpc": run.last_val_loss / LN2,
                "evals_without_improvement": run.evals_without_improvement,
                "tokens": run.tokens_prev + tokens_session(),
                "elapsed_s": elapsed(),
                "num_parameters": num_params,
            },
        }

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
            emit({"kind": "checkpoint", "step": run.step, "max_steps": cfg.max_steps or None, "files": list(names),
                  "elapsed_s": elapsed(), "lr": optimizer.param_groups[0]["lr"]})  # fmt: skip

    t0 = time.perf_counter()
    step0 = run.step

    def elapsed() -> float:
        return run.elapsed_prev + time.perf_counter() - t0

    def tokens_session() -> int:
        return (run.step - step0) * chars_per_step

    def rates() -> tuple[float, float | None]:
        session = time.perf_counter() - t0
        per_s = tokens_session() / session if session > 0 else 0.0
        etas = []
        if cfg.max_steps and run.step > step0:
            etas.append((cfg.max_steps - run.step) * session / (run.step - step0))
        if cfg.max_minutes:
            etas.append(max(0.0, 60 * cfg.max_minutes - elapsed()))
        return per_s, (min(etas) if etas else None)

    def evaluate() -> bool:
        """Validate; returns True when early stopping says stop (the same answer on every rank)."""
        result = evaluate_ids(model, val_ids, batch_size=cfg.batch_size, bptt=cfg.bptt, device=device, dist_info=info)
        run.last_val_loss = result["loss"]
        improved = result["loss"] < run.best_val_loss
        if improved:
            run.best_val_loss = result["loss"]
            run.evals_without_improvement = 0
        else:
            run.evals_without_improvement += 1
        per_s, eta = rates()
        emit({
            "kind": "eval", "step": run.step, "max_steps": cfg.max_steps or None, "loss": None, "bpc": None,
            "val_loss": result["loss"], "val_bpc": result["bpc"], "best_val_bpc": run.best_val_loss / LN2,
            "val_chars": result["chars"], "tokens_per_s": per_s, "elapsed_s": elapsed(), "eta_s": eta,
            "lr": optimizer.param_groups[0]["lr"],
        })  # fmt: skip
        save(*(("best.pt", "last.pt") if improved else ("last.pt",)))
        return bool(cfg.patience) and run.evals_without_improvement >= cfg.patience

    emit({
        "kind": "start", "step": run.step, "max_steps": cfg.max_steps or None, "loss": None, "bpc": None,
        "val_loss": None, "val_bpc": None, "tokens_per_s": 0.0, "elapsed_s": elapsed(), "eta_s": None,
        "lr": lr_at(cfg, run.step, elapsed()), "resumed": payload is not None, "run_dir": str(run_dir),
        "train_chars": train_chars, "val_chars": int(val_ids.numel()) - 1, "vocab_size": len(vocab),
        "num_parameters": num_params, "world_size": info.world_size, "device": str(device),
    })  # fmt: skip

    model.train()
    stopped_because, loss_sum, loss_count, last_evaluated = "", 0.0, 0, run.step if payload else -1
    if cfg.max_steps and run.step >= cfg.max_steps:
        stopped_because = "max_steps"  # a resume of a finished run: nothing left to do
    try:
        while not stopped_because:
            if run.chunk == 0:
                run.state = None  # reset each epoch: every row starts again from zeros
            x, y = stream.chunk(run.chunk)
            x, y = x.to(device), y.to(device)  # (B, T) each
            # ranks agree on the clock (the slowest one's), so they agree on the learning rate and on stopping
            (now,) = all_reduce([elapsed()], "max", info, device)
            if cfg.max_minutes and now >= 60 * cfg.max_minutes:
                stopped_because = "max_minutes"
                break
            lr = lr_at(cfg, run.step, now)
            for group in optimizer.param_groups:
                group["lr"] = lr
            state = detach_state(run.state)  # truncated BPTT: the values carry over, the graph does not
            logits, state = net(x, state)  # (B, T, V)
            loss = lm_loss(logits, y)  # nats per character
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            # the step is complete: commit its results (a Ctrl-C before this line resumes from the last step)
            run.step += 1
            run.state = detach_state(state)
            run.chunk += 1
            if run.chunk == len(stream):
                run.epoch, run.chunk = run.epoch + 1, 0
            loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1

            if cfg.max_steps and run.step >= cfg.max_steps:
                stopped_because = "max_steps"
            if run.step % cfg.log_every == 0 or stopped_because:
                per_s, eta = rates()
                mean = loss_sum / max(loss_count, 1)
                emit({
                    "kind": "step", "step": run.step, "max_steps": cfg.max_steps or None, "loss": mean,
                    "bpc": mean / LN2, "val_loss": None, "val_bpc": None, "tokens_per_s": per_s,
                    "elapsed_s": elapsed(), "eta_s": eta, "lr": lr, "epoch": run.epoch,
                })  # fmt: skip
                loss_sum, loss_count = 0.0, 0
            if run.step % cfg.eval_every == 0 or stopped_because:
                last_evaluated = run.step
                if evaluate() and not stopped_because:
                    stopped_because = "patience"
            elif cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0:
                save("last.pt")
    except KeyboardInterrupt:
        if info.is_main and not info.enabled:  # under DDP the other ranks may be gone: no collective calls
            save_checkpoint(run_dir / "last.pt", checkpoint_payload())
            log.warning("interrupted at step %d: saved %s", run.step, run_dir / "last.pt")
        raise
    if last_evaluated != run.step:
        evaluate()
    if info.is_main and metrics is not None:
        plot_losses(metrics.records, run_dir / "loss.png")
    if tb is not None:
        tb.close()
    per_s, _ = rates()
    result = TrainResult(
        run_dir=run_dir,
        steps=run.step,
        best_val_loss=run.best_val_loss,
        best_val_bpc=run.best_val_loss / LN2,
        last_val_loss=run.last_val_loss,
        last_val_bpc=run.last_val_loss / LN2,
        tokens_per_second=per_s,
        elapsed_s=elapsed(),
        stopped_because=stopped_because,
        train_chars=train_chars,
        val_chars=int(val_ids.numel()) - 1,
        vocab_size=len(vocab),
        num_parameters=num_params,
        model=model,
    )
    emit({
        "kind": "end", "step": run.step, "max_steps": cfg.max_steps or None, "loss": None, "bpc": None,
        "val_loss": run.last_val_loss, "val_bpc": run.last_val_loss / LN2, "best_val_bpc": result.best_val_bpc,
        "tokens_per_s": per_s, "elapsed_s": result.elapsed_s, "eta_s": 0.0, "lr": optimizer.param_groups[0]["lr"],
        "stopped_because": stopped_because,
    })  # fmt: skip
    return result
