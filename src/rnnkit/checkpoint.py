"""Checkpoints of a language-model run: written atomically, versioned, loaded with ``weights_only=True``.

A checkpoint is a dict of tensors, dicts, lists, numbers and strings only (RNG states as uint8/int64 tensors),
so ``torch.load(weights_only=True)`` can read it without unpickling arbitrary objects:

    format_version  int, FORMAT_VERSION when written
    kind            "char_lm"
    model           state_dict of the unwrapped model (never a DDP wrapper: no "module." prefixes)
    optimizer       optimizer.state_dict()
    scheduler       {"step": ..., "elapsed_s": ...}: the schedule is a pure function of these
    step            optimiser steps taken
    data_position   {"epoch": e, "chunk": k}: the next chunk to train on
    stream_state    the recurrent state carried into that chunk (list of tensors) or None
    rng             {"torch": uint8, "cuda": [uint8...], "numpy": {...}, "python": {...}}; the text stream
                    is read in a fixed order (no shuffling), so data_position is its whole state
    rng_per_rank    under DDP, the same dict for every rank (ranks draw different dropout masks), else None
    config          LMConfig.to_dict()
    vocab           list of characters
    metrics         {"best_val_loss": ..., "best_val_bpc": ..., "last_val_bpc": ..., ...}

A run folder holds config.json, vocab.json, last.pt, best.pt, metrics.jsonl and loss.png.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnkit.config import LMConfig
from rnnkit.data.vocab import Vocab
from rnnkit.errors import CheckpointError, ConfigError, DataError

__all__ = [
    "FORMAT_VERSION",
    "KIND",
    "LoadedRun",
    "get_rng_state",
    "load_checkpoint",
    "load_run",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT_VERSION = 1
KIND = "char_lm"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, fsync, then os.replace.

    A reader (or a crash) sees either the old file or the complete new one, never a half-written one.
    ``format_version`` is set here; ``payload["kind"]`` must name the model kind.
    """
    if "kind" not in payload:
        raise ValueError("payload must have a 'kind' entry (the model kind, such as 'char_lm'), got none")
    path = Path(path)
    payload = {**payload, "format_version": FORMAT_VERSION}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_checkpoint(path: str | os.PathLike, *, kind: str | None = KIND, map_location="cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; CheckpointError for anything that is not ours."""
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
    """A trained run, ready to sample or evaluate: the model is in eval mode on the requested device."""

    model: torch.nn.Module
    vocab: Vocab
    config: LMConfig
    step: int
    metrics: dict[str, Any]
    path: Path


def load_run(run_dir: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """Load ``best.pt`` (falls back to ``last.pt`` when no evaluation has run yet) or ``last.pt`` of a run folder."""
    from rnnkit.tasks.language_model import CharLM  # the task module imports config only; no cycle at runtime

    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    path = run_dir / f"{which}.pt"
    if not path.is_file() and which == "best":
        path = run_dir / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not an rnnkit run folder (no best.pt or last.pt in it)")
    payload = load_checkpoint(path, kind=KIND)
    try:
        config = LMConfig.from_dict(payload["config"])
        vocab = Vocab(payload["vocab"])
        model = CharLM(len(vocab), config.model)
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError, ConfigError, DataError) as e:
        raise CheckpointError(f"{path}: checkpoint is incomplete or inconsistent ({type(e).__name__}: {e})") from e
    model.to(device).eval()
    return LoadedRun(
        model=model,
        vocab=vocab,
        config=config,
        step=int(payload.get("step", 0)),
        metrics=dict(payload.get("metrics", {})),
        path=path,
    )
