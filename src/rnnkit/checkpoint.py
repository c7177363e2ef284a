"""Checkpoints of a training run: written atomically, versioned, loaded with ``weights_only=True``.

A checkpoint is a dict of tensors, dicts, lists, numbers and strings only (RNG states as uint8/int64 tensors),
so ``torch.load(weights_only=True)`` can read it without unpickling arbitrary objects:

    format_version  int, FORMAT_VERSION when written
    kind            the task's name: "lm", "classify" (format 1: "char_lm")
    model           state_dict of the unwrapped model (never a DDP wrapper: no "module." prefixes)
    optimizer       optimizer.state_dict()
    step            optimiser steps taken; with the elapsed time, all the learning-rate schedule depends on
    data_position   {"epoch": e, "index": k}: the next batch to train on (the task's batches are a pure function
                    of (epoch, k): a fixed stream for the LM, a seeded permutation per epoch for a classifier)
    stream_state    the recurrent state carried into that batch (list of tensors) or None
    rng             {"torch": uint8, "cuda": [uint8...], "numpy": {...}, "python": {...}}
    rng_per_rank    under DDP, the same dict for every rank (ranks draw different dropout masks), else None
    config          the task's RunConfig.to_dict()
    precision       what config.train.precision resolved to where it trained: "fp32" or "bf16" (absent before it
                    existed: fp32); the weights and optimiser state are fp32 either way
    artefacts       what the task keeps to use the model: {"vocab": [...]}, {"labels": [...], ...}
    metrics         {"best": primary value, "best_metrics": {...}, "last_metrics": {...}, "best_val_<m>": ...,
                    "evals_without_improvement", "items", "elapsed_s", "num_parameters"}

A run folder holds config.json, last.pt, best.pt, metrics.jsonl, summary.json, loss.png and the task's files
(vocab.json, labels.json, confusion.png).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnkit import precision
from rnnkit.data.vocab import Vocab
from rnnkit.errors import CheckpointError, ConfigError, DataError, DivergenceError
from rnnkit.io import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "LoadedRun",
    "get_rng_state",
    "load_checkpoint",
    "load_run",
    "non_finite",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT_VERSION = 2  # 2: the kind is the task's name ("lm", "classify"), the task's artefacts under "artefacts"
KIND_ALIASES = {"char_lm": "lm"}  # format 1 wrote the language model's kind as "char_lm"


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (``rnnkit.io.atomic_write``): the old file or the whole new one.

    ``format_version`` is set here; ``payload["kind"]`` must name the task (the model kind).
    """
    if "kind" not in payload:
        raise ValueError("payload must have a 'kind' entry (the task's name, such as 'lm'), got none")
    bad = non_finite(payload.get("model", {})) or non_finite(payload.get("optimizer", {}))
    if bad:  # a diverged model is never saved: the file keeps the last finite state
        raise DivergenceError(f"{path}: not written: the model or optimiser holds NaN or inf (first in {bad}); the "
                              "run diverged: lower --lr or set --clip")  # fmt: skip
    buffer = io.BytesIO()  # serialised first: a full disk then fails in our write (a clear ENOSPC), not inside torch
    torch.save({**payload, "format_version": FORMAT_VERSION}, buffer)
    atomic_write(path, buffer.getbuffer())


def non_finite(tree: Any, prefix: str = "") -> str | None:
    """The name of the first floating-point tensor in ``tree`` (nested dicts and lists, such as a state_dict or an
    optimiser's) that holds a NaN or inf; None when all are finite."""
    if isinstance(tree, torch.Tensor):
        return prefix or "tensor" if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list | tuple) else ()
    for key, value in items:
        found = non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return None


def load_checkpoint(path: str | os.PathLike, *, kind: str | None = None, map_location="cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; CheckpointError for anything that is not ours.

    ``kind``: the task the checkpoint must hold (None: any). Format 1's kind names are mapped to today's.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a checkpoint (corrupt, truncated or not a torch file)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: not an rnnkit checkpoint (it holds objects other than tensors and data)") from e
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated: {type(e).__name__})") from e
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError(f"{path}: not an rnnkit checkpoint (no format_version)")
    version = payload["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this rnnkit reads ({FORMAT_VERSION}); "
            "upgrade rnnkit"
        )
    payload["kind"] = KIND_ALIASES.get(payload.get("kind"), payload.get("kind"))
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"{path}: checkpoint holds a {payload.get('kind')!r} model, expected {kind!r}")
    return payload


# --- RNG states as tensors (weights_only-safe) ---------------------------------------------------------------


def get_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG a training step can draw from: torch CPU, CUDA (each device), NumPy, Python, and ``generator``."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64), "gauss": py_gauss},
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what ``get_rng_state`` captured."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())


# --- run folders ---------------------------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A trained run, ready to use: its task (with the artefacts it saved) and its model, in eval mode."""

    task: Any  # an rnnkit.tasks.Task, restored from the checkpoint (no training data read)
    model: torch.nn.Module
    config: Any  # the task's RunConfig
    step: int
    metrics: dict[str, Any]
    path: Path

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context to run ``model`` in, as it trained and was evaluated: the run's ``train.precision`` on this
        machine (bf16 autocast, or nothing for fp32). The CLI's eval, predict, forecast and sample run in it, so
        ``rnnkit eval`` reproduces the validation metrics of training; export does not (it writes fp32 graphs).

            with run.autocast():
                metrics = evaluate_text(run.model, run.vocab, text)
        """
        device = next(self.model.parameters()).device
        return precision.autocast(precision.resolve_precision(self.config.train.precision, device), device)

    @property
    def vocab(self) -> Vocab:
        """The character vocabulary of a task that has one (the LM's, a text classifier's)."""
        return self.task.vocab


def load_run(
    run_dir: str | os.PathLike,
    which: str = "best",
    device: str | torch.device = "cpu",
    *,
    task: str | None = None,
    purpose: str = "this",
) -> LoadedRun:
    """Load ``best.pt`` (falls back to ``last.pt`` when no evaluation has run yet) or ``last.pt`` of a run folder.

    ``task``: the task the run must be ("lm", "classify"); a run of another task is a CheckpointError in one line,
    ``"{run_dir} is a char LM run; {purpose} needs a classify run"``.
    """
    from rnnkit.tasks import TASKS  # the tasks import this module: imported here, when a run is loaded

    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    path = run_dir / f"{which}.pt"
    if not path.is_file() and which == "best":
        path = run_dir / "last.pt"
    if not path.is_file():
        if (run_dir / "best.pt").is_file():
            raise CheckpointError(f"{run_dir}: holds no {which}.pt, only best.pt (use --checkpoint best)")
        raise CheckpointError(f"{run_dir}: not an rnnkit run folder (no best.pt or last.pt in it)")
    payload = load_checkpoint(path)
    kind = payload.get("kind")
    if kind not in TASKS:
        raise CheckpointError(f"{path}: checkpoint holds a {kind!r} model, which this rnnkit has no task for")
    task_cls = TASKS[kind]
    if task is not None and kind != task:
        raise CheckpointError(f"{run_dir} is a {task_cls.title} run; {purpose} needs a {TASKS[task].title} run")
    try:
        config = task_cls.Config.from_saved(payload["config"])
        restored = task_cls(config)
        restored.restore(payload.get("artefacts") or {"vocab": payload["vocab"]})  # format 1 kept the vocab alone
        model = restored.build_model()
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError, ConfigError, DataError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"{path}: checkpoint is incomplete or inconsistent ({type(e).__name__}: {first[:200]})"
        ) from e
    bad = non_finite(model.state_dict())
    if bad:
        raise CheckpointError(
            f"{path}: the model holds non-finite weights (NaN or inf, first in {bad}): the run diverged; "
            "train again with a lower --lr"
        )
    model.to(device).eval()
    return LoadedRun(
        task=restored,
        model=model,
        config=config,
        step=int(payload.get("step", 0)),
        metrics=dict(payload.get("metrics", {})),
        path=path,
    )
