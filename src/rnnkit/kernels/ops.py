"""The primitives the fused kernels are made of: matrix products on the fastest engine for the tensor, the
order of time steps, and the time slices of the C++ backward.

- ``linear(x, w, b)``: ``x @ w^T + b``, x (N, I), w (O, I) -> (N, O).
- ``linear_add(x, other, w)``: ``other + x @ w^T``, the Python loop's one GEMM per step with the input
  projection folded in.
- ``weight_grad(dG, X)``: ``dG^T X``, a weight gradient summed over many steps.
- ``tanh_scale(x)`` and ``tanh_(t, scale)``: on CPU torch's tanh is several times slower than its sigmoid
  (benchmarks/KERNELS.md), so the kernels feed 2a instead of a (weights scaled by 2) and take
  tanh(a) = 2 sigmoid(2a) - 1, within 2e-7 of tanh in float32. The C++ loops use the same scaled weights, so
  both loops share the set-up code.
- The Python loops fill their buffers with ``torch.zeros``, not ``torch.empty``: a fresh large buffer faults its
  pages in one by one under small per-step writes, while the zero fill touches them in one sweep first, which
  costs less than the scattered faults it replaces (benchmarks/KERNELS.md).
- ``time_steps(T, reverse)``: the order a direction visits the steps; states are stored in time order either
  way, so no sequence is ever flipped.
- ``backward_slices`` and ``sum_over_slices``: the C++ backward runs over slices of the time axis and folds each
  slice's gate gradients into dx and the weight gradients before the next.

Engines: float32 CPU tensors use oneDNN's ``mkldnn::_linear_pointwise`` for the input projection when this
build has it and it agrees with ``torch.mm`` on a probe; everything else (float64, CUDA, builds
without oneDNN) uses ``torch.addmm``. How much oneDNN gains over torch.mm depends strongly on the host
(benchmarks/KERNELS.md). dx and the weight gradients use ``torch.mm``, which reads column slices and transposed
views in place: the contiguous copies oneDNN would need cost more than oneDNN saves on them.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from rnnkit.kernels.extension import loaded

__all__ = [
    "accumulate",
    "backward_slices",
    "column_sums",
    "linear",
    "linear_add",
    "lower",
    "mm_into",
    "narrow",
    "onednn_available",
    "sum_over_slices",
    "tanh",
    "tanh_",
    "tanh_scale",
    "time_steps",
    "uses_onednn",
    "weight_grad",
    "widen",
]

log = logging.getLogger(__name__)


def _probe_onednn():
    """oneDNN's fused linear ops, or None when this build lacks them or they disagree with torch.mm."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)  # a private generator: importing rnnkit must not move the global RNG
        x, other, w = (torch.randn(*shape, generator=g) for shape in ((3, 5), (3, 4), (4, 5)))
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


# oneDNN's per-call overhead dominates small products, so below about 2M multiply-adds torch.addmm is used
# (benchmarks/KERNELS.md).
ONEDNN_MIN_MACS = 2**21


def _onednn_for(x: Tensor, w: Tensor) -> bool:
    return uses_onednn(x) and x.size(0) * x.size(1) * w.size(0) >= ONEDNN_MIN_MACS


def linear(x: Tensor, w: Tensor, b: Tensor | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """``x @ w^T + b``: x (N, I), w (O, I), b (O,) or None -> (N, O) in ``dtype`` (x's by default); the product
    in w's dtype (see ``lower``)."""
    dtype = x.dtype if dtype is None else dtype
    if x.dtype != w.dtype:
        x = narrow(x, w.dtype)
    if w.dtype != dtype:
        return widen(linear(x, w), b, dtype)
    if _onednn_for(x, w):
        return _ONEDNN(x, w, b, "none", [], "")
    if b is None:
        return torch.mm(x, w.t())
    return torch.addmm(b, x, w.t())


def linear_add(x: Tensor, other: Tensor, w: Tensor) -> Tensor:
    """``other + x @ w^T`` as one call: x (N, I), other (N, O), w (O, I) -> a new (N, O) tensor in other's dtype."""
    if w.dtype != other.dtype:
        return widen(linear(narrow(x, w.dtype), w), None, other.dtype).add_(other)
    if _onednn_for(x, w):
        return _ONEDNN.binary(x, other, w, None, "add")
    return torch.addmm(other, x, w.t())


def weight_grad(dG: Tensor, X: Tensor) -> Tensor:
    """``dG^T X``: dG (N, O), X (N, I) -> (O, I), the weight gradient of all N = T*B rows in one GEMM.

    ``torch.mm`` on the transposed view, with no copy: BLAS reads dG^T through its leading dimension, so a
    column slice of a wider buffer works too. Where timed, this beat oneDNN both on the strided views and on
    contiguous transposed copies, whose copying alone took a large share of the product's time
    (benchmarks/KERNELS.md).
    """
    return torch.mm(dG.t(), X)


def mm_into(a: Tensor, w: Tensor, out: Tensor) -> Tensor:
    """``out = a @ w``, the product in a and w's dtype, written in out's."""
    if out.dtype != w.dtype:
        return widen(torch.mm(narrow(a, w.dtype), w), None, out.dtype, out=out)
    return torch.mm(a, w, out=out)


def lower(w: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    """w in ``dtype``, the precision of the products (bfloat16 under autocast), or w itself for None.

    The kernels' mixed precision: every matrix product takes its operands in ``dtype`` (bf16 multiplies,
    fp32 accumulation inside the GEMM), while gate arithmetic, the states and the values saved for the gradient
    sums stay in the input's precision. ``linear``, ``linear_add``, ``weight_grad``, ``mm_into`` and the C++
    loops' products see a weight whose dtype differs from the activations' and cast the activations to it.
    """
    return w if w is None or dtype is None else narrow(w, dtype)


def _casts(t: Tensor, wide: torch.dtype, low: torch.dtype):
    """The C++ casts (csrc/precision.h) where they apply: float32 <-> bfloat16 on CPU, the library built."""
    if t.device.type != "cpu" or wide != torch.float32 or low != torch.bfloat16:
        return None
    return loaded()


def narrow(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x in the lower precision ``dtype``."""
    if x.dtype == dtype:
        return x
    ext = _casts(x, x.dtype, dtype)
    return x.to(dtype) if ext is None else ext.narrow(x.contiguous())


def widen(y: Tensor, b: Tensor | None, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
    """``y + b`` (N, O) in the wider ``dtype``, in one pass; into ``out`` (rows contiguous) when given."""
    ext = _casts(y, dtype, y.dtype)
    if ext is not None and y.dim() == 2:
        return ext.widen(y.contiguous(), b, out)
    r = y.to(dtype) if b is None else torch.add(y.to(dtype), b)
    return r if out is None else out.copy_(r)


def column_sums(y: Tensor, dtype: torch.dtype) -> Tensor:
    """y (N, O) summed over its rows, accumulated and returned in ``dtype`` (at least y's precision)."""
    ext = _casts(y, dtype, y.dtype) if y.dtype != dtype and y.dim() == 2 and y.stride(1) == 1 else None
    return y.sum(0, dtype=dtype) if ext is None else ext.column_sums(y)


def accumulate(acc: Tensor, y: Tensor) -> Tensor:
    """``acc += y``, y (N, O) in acc's dtype or a lower one."""
    ext = _casts(y, acc.dtype, y.dtype) if y.dtype != acc.dtype and y.dim() == 2 else None
    if ext is None:
        return acc.add_(y)
    ext.accumulate(acc, y.contiguous())
    return acc


# The C++ backward (extension.py) runs over slices of the time axis of about this many rows (steps x batch) and
# folds each slice's gate gradients into dx and the weight gradients before the next: the (T, B, G*H) gradient
# buffer is never whole (16 MiB for an LSTM at 32x128x256, 4 MiB a slice there), while each weight-gradient
# GEMM still sums over ~1024 rows.
SLICE_ROWS = 1024


def backward_slices(T: int, B: int, reverse: bool, rows: int | None = None) -> list[tuple[int, int]]:
    """Slices [t0, t1) of the time axis in the order backward visits them (a forward direction from its last step
    back, a reverse one from its first), each of ceil(rows / B) steps (at least one); ``rows`` defaults to
    SLICE_ROWS."""
    n = max(1, -(-(SLICE_ROWS if rows is None else rows) // max(1, B)))
    spans = [(t0, min(t0 + n, T)) for t0 in range(0, T, n)]
    return spans if reverse else spans[::-1]


def sum_over_slices(spans, grads_of, x: Tensor, h_prev: Tensor, w_ih: Tensor, need, in_cols=None, hid_cols=None):
    """dx, dW_ih, dW_hh, db_ih, db_hh from the gate gradients of each time slice.

    ``grads_of(t0, t1)`` runs the recurrence's backward over the slice and returns its gate gradients
    dG ((t1 - t0) * B, W); columns ``in_cols`` of dG feed the input side (dx, dW_ih, db_ih) and ``hid_cols`` the
    hidden side (dW_hh, db_hh), all columns when None. ``need`` says which of the five are wanted.

    Mixed precision: with w_ih in a lower precision than the states (``lower``), dG is cast to it once per
    slice (unless the backward wrote it so) and the products run there; the sums over slices and every result
    stay in the states' precision.
    """
    T, B, D = x.shape
    H = h_prev.size(-1)
    wide, low = h_prev.dtype, w_ih.dtype
    dx = h_prev.new_empty(T, B, D) if need[0] else None
    sums: list[Tensor | None] = [None] * 4

    def add(k: int, value: Tensor) -> None:
        if sums[k] is None:
            sums[k] = value if value.dtype == wide else widen(value, None, wide)
        else:
            accumulate(sums[k], value)

    def cols(t: Tensor, which) -> Tensor:
        return t if which is None else t[:, which]

    for t0, t1 in spans:
        dG = grads_of(t0, t1)
        if need[3]:
            add(2, column_sums(cols(dG, in_cols), wide))
        if need[4]:
            add(3, column_sums(cols(dG, hid_cols), wide))
        dG = narrow(dG, low)  # once per slice
        if dx is not None:
            mm_into(cols(dG, in_cols), w_ih, dx[t0:t1].view(-1, D))
        if need[1]:
            add(0, weight_grad(cols(dG, in_cols), narrow(x[t0:t1].reshape(-1, D), low)))
        if need[2]:
            add(1, weight_grad(cols(dG, hid_cols), narrow(h_prev[t0:t1].reshape(-1, H), low)))
    return (dx, *sums)


def time_steps(T: int, reverse: bool) -> range:
    """The steps in the order a direction visits them: 0..T-1, or T-1..0 for the reverse direction."""
    return range(T - 1, -1, -1) if reverse else range(T)


def tanh_scale(x: Tensor) -> float:
    """2.0 where the kernels compute tanh(a) from 2a as 2 sigmoid(2a) - 1 (CPU), else 1.0 (plain tanh)."""
    return 2.0 if x.device.type == "cpu" else 1.0


def tanh_(t: Tensor, scale: float) -> Tensor:
    """In place: t holds ``scale * a``; returns tanh(a) in t."""
    return t.sigmoid_().mul_(2).sub_(1) if scale == 2.0 else t.tanh_()


def tanh(t: Tensor, scale: float, out: Tensor | None = None) -> Tensor:
    """tanh(t) in ``out`` (or a new tensor), by 2 sigmoid(2t) - 1 when ``scale`` is 2."""
    return torch.mul(t, 2, out=out).sigmoid_().mul_(2).sub_(1) if scale == 2.0 else torch.tanh(t, out=out)
