"""Training precision: ``--precision fp32|bf16|auto`` resolved to a dtype for this machine, and its autocast.

bf16 is mixed precision, not a bf16 model: each forward and loss runs under ``torch.autocast``, which rounds the
inputs of matrix products to bfloat16 and keeps the rest in float32 (its per-op lists). The parameters, their
gradients, the optimiser's moments and the checkpoints stay float32: the master weights of Micikevicius et al.
2018, so small updates are not lost to bf16's 8-bit mantissa. bf16 has float32's exponent range, so it needs no
loss scaling (fp16 would).

    fp32   every op in float32 (the default; see ``TrainConfig.precision``)
    bf16   bfloat16 autocast; on a CPU without bf16 instructions, one warning and float32
    auto   bf16 where the hardware has bf16 arithmetic (avx512_bf16 or AMX on x86; Ampere or later, or ROCm,
           on a GPU), float32 elsewhere

Everything here is CPU-or-CUDA agnostic; the trainer resolves once per run and enters ``autocast`` around every
forward and loss (training steps, evaluations, plots), and ``LoadedRun.autocast`` does the same for a loaded run.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import Tensor

__all__ = ["PRECISIONS", "at_least_fp32", "autocast", "bf16_supported", "precision_name", "resolve_precision"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")
_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` does bfloat16 arithmetic in hardware (emulated bf16 does not count: it is slower than fp32).

    CPU: the avx512_bf16 or amx_bf16 flag of ``torch.cpu.get_capabilities()``. That is torch's own cpuinfo probe:
    public, the same on Linux, Windows and macOS, and it names exactly the instructions that make bf16 fast.
    ``/proc/cpuinfo`` exists on Linux only; oneDNN's ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is true on
    any AVX-512 (BW, VL, DQ) CPU, where oneDNN emulates bf16. Other CPUs (ARM's bf16 included, not yet measured
    here) resolve to fp32. CUDA: compute capability 8.0 or later, or ROCm (``is_bf16_supported`` without its
    emulation).
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    caps = torch.cpu.get_capabilities()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def _why(device: torch.device, supported: bool) -> str:
    """The reason a log line gives for what ``device`` runs at."""
    if device.type == "cuda":
        return "the GPU has bf16 arithmetic" if supported else "the GPU has no bf16 arithmetic (compute capability < 8)"
    kind = device.type.upper()
    return f"the {kind} has bf16 instructions" if supported else f"the {kind} has no avx512_bf16 or AMX instructions"


def resolve_precision(name: str, device: torch.device | str) -> torch.dtype:
    """The dtype ``name`` ("fp32", "bf16" or "auto") runs at on ``device``, said in one log line.

    "auto" is bf16 where ``bf16_supported(device)``, else fp32 (INFO). "bf16" on a device without bf16 arithmetic
    is one WARNING and fp32: emulated bf16 would be slower than fp32 and no more accurate.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    device = torch.device(device)
    if name == "fp32":
        log.info("precision fp32 (asked fp32)")
        return torch.float32
    supported = bf16_supported(device)
    if supported:
        log.info("precision bf16 (asked %s): %s; the master weights stay fp32", name, _why(device, supported))
        return torch.bfloat16
    if name == "bf16":
        log.warning("precision bf16 asked, but %s: running in fp32", _why(device, supported))
    else:
        log.info("precision fp32 (asked auto): %s", _why(device, supported))
    return torch.float32


def precision_name(dtype: torch.dtype) -> str:
    """torch.float32 -> "fp32", torch.bfloat16 -> "bf16" (what the run folder records)."""
    if dtype not in _NAMES:
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    return _NAMES[dtype]


def autocast(dtype: torch.dtype, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context a forward and its loss run in: bf16 autocast on ``device``'s type, or nothing for fp32."""
    precision_name(dtype)  # a ValueError for any other dtype
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def at_least_fp32(t: Tensor) -> Tensor:
    """``t`` in fp32 when it is a narrower float (bf16 out of an autocast forward), else ``t`` itself (fp32 and
    fp64 as they are): what a loss or a likelihood is computed from."""
    return t.float() if t.is_floating_point() and torch.finfo(t.dtype).bits < 32 else t
