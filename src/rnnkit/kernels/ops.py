"""The primitives the fused kernels are made of: matrix products on the fastest engine for the tensor, and
the order of time steps.

- ``linear(x, w, b)``: ``x @ w^T + b``, x (N, I), w (O, I) -> (N, O).
- ``linear_add(x, other, w)``: ``other + x @ w^T``, the recurrent step's one GEMM with the input projection
  folded in.
- ``matmul(a, b)``: ``a @ b``; ``matmul_tn(a, b)``: ``a^T @ b`` (the weight gradients, one GEMM over all steps).
- ``time_steps(T, reverse)``: the order a direction visits the steps; states are stored in time order either
  way, so no sequence is ever flipped.

On this CPU (AMD EPYC, AVX-512) torch's ``mm`` goes through MKL at about 200 GFLOP/s, while oneDNN's own
matmul (the engine behind ``nn.LSTM`` on CPU) reaches 400-460 GFLOP/s on the same shapes; so float32 CPU
tensors use oneDNN's ``mkldnn::_linear_pointwise`` when this build has it and it agrees with ``torch.mm`` on a
probe, and everything else (float64, CUDA, builds without oneDNN) uses ``torch.addmm``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

__all__ = ["linear", "linear_add", "matmul", "matmul_tn", "onednn_available", "time_steps", "uses_onednn"]

log = logging.getLogger(__name__)


def _probe_onednn():
    """oneDNN's fused linear ops, or None when this build lacks them or they disagree with torch.mm."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        x, other, w = torch.randn(3, 5), torch.randn(3, 4), torch.randn(4, 5)
        ok = torch.allclose(op(x, w, None, "none", [], ""), x @ w.t(), atol=1e-5) and torch.allclose(
            op.binary(x, other, w, None, "add"), other + x @ w.t(), atol=1e-5
        )
    except (AttributeError, RuntimeError, NotImplementedError) as exc:
        log.info("oneDNN linear unavailable (%s); fused kernels use torch.addmm", exc)
        return None
    if not ok:
        log.warning("oneDNN linear disagrees with torch.mm on a probe; fused kernels use torch.addmm")
        return None
    return op


_ONEDNN = _probe_onednn() if torch.backends.mkldnn.is_available() else None


def onednn_available() -> bool:
    """Whether float32 CPU products go through oneDNN in this process."""
    return _ONEDNN is not None


def uses_onednn(t: Tensor) -> bool:
    """Whether products on tensors like ``t`` go through oneDNN (float32 on CPU, when available)."""
    return _ONEDNN is not None and t.dtype == torch.float32 and t.device.type == "cpu"


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``x @ w^T + b``: x (N, I), w (O, I), b (O,) or None -> (N, O)."""
    if uses_onednn(x):
        return _ONEDNN(x, w, b, "none", [], "")
    if b is None:
        return torch.mm(x, w.t())
    return torch.addmm(b, x, w.t())


def linear_add(x: Tensor, other: Tensor, w: Tensor) -> Tensor:
    """``other + x @ w^T`` as one call: x (N, I), other (N, O), w (O, I) -> a new (N, O) tensor."""
    if uses_onednn(x):
        return _ONEDNN.binary(x, other, w, None, "add")
    return torch.addmm(other, x, w.t())


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b``: a (N, I), b (I, O) -> (N, O)."""
    if uses_onednn(a):
        return _ONEDNN(a, b.t(), None, "none", [], "")
    return torch.mm(a, b)


def matmul_tn(a: Tensor, b: Tensor) -> Tensor:
    """``a^T @ b``: a (N, O), b (N, I) -> (O, I); N is every step of every row, so this is one big GEMM."""
    if uses_onednn(a):
        return _ONEDNN(a.t(), b.t(), None, "none", [], "")
    return torch.mm(a.t(), b)


def time_steps(T: int, reverse: bool) -> range:
    """The steps in the order a direction visits them: 0..T-1, or T-1..0 for the reverse direction."""
    return range(T - 1, -1, -1) if reverse else range(T)
