"""Fused GRU layer: one direction of one layer, forward and hand-written BPTT.

Math (the torch.nn/cuDNN variant; m_t (B, 1) is 1 while t is inside a row's length)::

    [gi_r, gi_z, gi_n] = x_t W_ih^T + b_ih              # all steps in one GEMM
    [gh_r, gh_z, gh_n] = h_{t-1} W_hh^T + b_hh          # one GEMM per step
    r = sigmoid(gi_r + gh_r);  z = sigmoid(gi_z + gh_z);  n = tanh(gi_n + r * gh_n)
    h_t = m_t * (n + z * (h_{t-1} - n)) + (1 - m_t) * h_{t-1}
    y_t = m_t * h_t

BPTT, with g = dL/dh_t::

    dn = g * m * (1 - z) * (1 - n^2)        dz = g * m * (h_{t-1} - n) * z(1-z)
    dr = dn * gh_n * r(1-r)                 dgh_n = dn * r
    g  = [dr, dz, dgh_n] W_hh + g * (m * z + 1 - m) + m_{t-1} * dy_{t-1}
    dW_ih = sum_t [dr, dz, dn]^T x_t,  dW_hh = sum_t [dr, dz, dgh_n]^T h_{t-1}     # one GEMM each

Inside, the gate rows are reordered (n, z, r) for W_ih and (z, r, n) for W_hh, so the per-step gradient row
[dn, dz, dr, dgh_n] holds the input-side gradient in its first 3H columns and the hidden-side one in its last
3H: both are plain column slices and each backward step is one GEMM and three elementwise ops.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.kernels.extension import step_weight, wanted
from rnnkit.kernels.ops import linear, linear_add, tanh_, tanh_scale, time_steps, weight_grad

__all__ = ["gru_layer"]


def _to_ih(w: Tensor | None) -> Tensor | None:
    """torch's (r, z, n) rows -> (n, z, r); its own inverse."""
    if w is None:
        return None
    r, z, n = w.chunk(3, 0)
    return torch.cat([n, z, r])


def _to_hh(w: Tensor | None) -> Tensor | None:
    """torch's (r, z, n) rows -> (z, r, n); its own inverse."""
    if w is None:
        return None
    r, z, n = w.chunk(3, 0)
    return torch.cat([z, r, n])


def _scale_rows(w: Tensor | None, block: int, scale: float) -> Tensor | None:
    """w with its rows of gate block ``block`` (of 3) multiplied by ``scale``."""
    if w is None:
        return None
    parts = list(w.chunk(3, 0))
    parts[block] = parts[block] * scale
    return torch.cat(parts)


def _forward(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, keep: bool):
    """The recurrence on reordered weights. Returns S (T+1, B, H) in time order and, with ``keep``, the backward
    factors (Q, zc) of ``_factors``, else None."""
    T, B, D = x.shape
    H = w_hh.size(1)
    scale = tanh_scale(x)  # the n rows are fed 2a (see ops.tanh_scale)
    if scale != 1.0:
        w_ih, b_ih = _scale_rows(w_ih, 0, scale), _scale_rows(b_ih, 0, scale)
        w_hh, b_hh = _scale_rows(w_hh, 2, scale), _scale_rows(b_hh, 2, scale)
    A = linear(x.reshape(T * B, D), w_ih, b_ih).view(T, B, 3 * H)  # [gi_n, gi_z, gi_r], activated in place
    S = x.new_zeros(T + 1, B, H)  # each step writes its state here (no stacking afterwards)
    S[T if reverse else 0] = h0
    ext = wanted(x)
    if ext is not None:  # the same loop in C++ (extension.py), which fills the backward factors as it goes
        m = None if mask is None else mask.to(x.dtype)
        Q, zc = (x.new_empty(T, B, 4 * H), x.new_empty(T, B, H)) if keep else (None, None)
        ext.gru_forward(A, S, Q, zc, m, reverse, *step_weight(w_hh, B), b_hh, scale)
        return S, ((Q, zc) if keep else None)
    h, ghn = h0, []
    for t in time_steps(T, reverse):
        gh = linear(h, w_hh, b_hh)  # (B, 3H): [gh_z, gh_r, gh_n]
        a = A[t]  # (B, 3H)
        zr = a[:, H:].add_(gh[:, : 2 * H]).sigmoid_()  # (B, 2H): [z, r]
        n = tanh_(a[:, :H].addcmul_(zr[:, H:], gh[:, 2 * H :]), scale)  # (B, H)
        h_new = torch.lerp(n, h, zr[:, :H], out=S[t if reverse else t + 1])  # n + z * (h - n)
        if mask is not None:
            torch.where(mask[t], h_new, h, out=h_new)
        h = h_new
        if keep:
            ghn.append(gh[:, 2 * H :])  # scale * gh_n
    if not keep:
        return S, None
    return S, _factors(A, torch.stack(ghn[::-1] if reverse else ghn).div_(scale), S, mask, reverse)


def _factors(A: Tensor, ghn: Tensor, S: Tensor, mask: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor]:
    """The backward step's factors from the activations A = [n, z, r] (T, B, 3H), gh_n (T, B, H) and the
    states: Q = [m (1-z)(1-n^2), m (h_{t-1} - n) z(1-z), gh_n r(1-r), r] (T, B, 4H) and zc = m z + 1 - m."""
    T, B, H = ghn.shape
    n, z, r = A.chunk(3, -1)  # 3 x (T, B, H)
    Q = A.new_empty(T, B, 4 * H)
    torch.mul(n, n, out=Q[..., :H]).neg_().add_(1).mul_(1 - z)  # (1 - z) * (1 - n^2)
    torch.addcmul(z, z, z, value=-1, out=Q[..., H : 2 * H]).mul_(_previous(S, reverse) - n)  # (h_{t-1} - n) z(1-z)
    torch.addcmul(r, r, r, value=-1, out=Q[..., 2 * H : 3 * H]).mul_(ghn)  # gh_n * r(1-r)
    Q[..., 3 * H :] = r
    zc = z.clone()  # (T, B, H): dh_t/dh_{t-1} along the direct path
    if mask is not None:
        m = mask.to(A.dtype)  # (T, B, 1)
        Q[..., : 2 * H].mul_(m)
        zc.mul_(m).sub_(m).add_(1)  # m * z + 1 - m
    return Q, zc


def _outputs(S: Tensor, reverse: bool) -> Tensor:
    return S[:-1] if reverse else S[1:]  # (T, B, H): the state at t


def _previous(S: Tensor, reverse: bool) -> Tensor:
    return S[1:] if reverse else S[:-1]  # (T, B, H): the state before t in the direction's own order


def _backward_loop(Q, zc, dy, g, dG, reverse, w_hh):
    """Fills dG (T, B, 4H) = [dn, dz, dr, dgh_n] step by step; returns dL/dh_{-1}."""
    T, B, H = zc.shape
    w_hh_t = w_hh.t().contiguous()  # (H, 3H)
    dG4, Q4 = dG.view(T, B, 4, H), Q.view(T, B, 4, H)
    order = time_steps(T, not reverse)  # backward visits the steps in the opposite order
    g = g + dy[order[0]]
    for s, t in enumerate(order):
        torch.mul(g.unsqueeze(1), Q4[t, :, :2], out=dG4[t, :, :2])  # dn, dz
        torch.mul(dG4[t, :, :1], Q4[t, :, 2:], out=dG4[t, :, 2:])  # dr, dgh_n
        carry = dy[order[s + 1]] if s + 1 < T else torch.zeros_like(g)  # (B, H)
        carry = torch.addcmul(carry, g, zc[t])
        g = linear_add(dG[t, :, H:], carry, w_hh_t)  # (B, H)
    return g


class GRUFunction(torch.autograd.Function):
    """(x (T, B, D), h0 (B, H), mask (T, B, 1) bool or None, reverse, w_ih, w_hh, b_ih, b_hh) -> (y, h_T)."""

    @staticmethod
    def forward(ctx, x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh):
        w_ih, w_hh, b_ih, b_hh = _to_ih(w_ih), _to_hh(w_hh), _to_ih(b_ih), _to_hh(b_hh)
        S, (Q, zc) = _forward(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, keep=True)
        m = None if mask is None else mask.to(x.dtype)  # (T, B, 1)
        y = _outputs(S, reverse)
        if m is not None:
            y = y * m
        ctx.reverse = reverse
        ctx.save_for_backward(x, S, Q, zc, m, w_ih, w_hh)
        return y, (S[0] if reverse else S[-1]).clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_last):
        x, S, Q, zc, m, w_ih, w_hh = ctx.saved_tensors
        reverse = ctx.reverse
        T, B, D = x.shape
        H = w_hh.size(1)
        dy = torch.zeros_like(zc) if dy is None else dy if m is None else dy * m  # (T, B, H)
        g = torch.zeros_like(zc[0]) if dh_last is None else dh_last  # (B, H)
        dG = torch.zeros_like(Q)  # (T, B, 4H): [dn, dz, dr, dgh_n]; zeros: see ops.py on page faults
        ext = wanted(x)
        if ext is not None:  # the same loop in C++ (extension.py)
            w = step_weight(w_hh.t(), B)  # g_{t-1} gets [dz, dr, dgh_n] W_hh
            g = ext.gru_backward(Q, zc, dy, reverse, *w, g.contiguous(), dG)
        else:
            g = _backward_loop(Q, zc, dy, g, dG, reverse, w_hh)
        dgi = dG[..., : 3 * H].reshape(T * B, 3 * H)  # [dn, dz, dr]
        dgh = dG[..., H:].reshape(T * B, 3 * H)  # [dz, dr, dgh_n]
        need = ctx.needs_input_grad
        dx = None
        if need[0]:  # BLAS reads the column slice dgi through its leading dimension: no copy
            dx = torch.mm(dgi, w_ih).view(T, B, D)
        dw_ih = _to_ih(weight_grad(dgi, x.reshape(T * B, D))) if need[4] else None
        dw_hh = _to_hh(weight_grad(dgh, _previous(S, reverse).reshape(T * B, H))) if need[5] else None
        db_ih = _to_ih(dgi.sum(0)) if need[6] else None
        db_hh = _to_hh(dgh.sum(0)) if need[7] else None
        return dx, g, None, None, dw_ih, dw_hh, db_ih, db_hh


def gru_layer(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh):
    """One direction of one GRU layer on time-major x (T, B, D): -> (y (T, B, H), h_T (B, H))."""
    tensors = (x, h0, w_ih, w_hh, b_ih, b_hh)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return GRUFunction.apply(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh)
    S, _ = _forward(x, h0, mask, reverse, _to_ih(w_ih), _to_hh(w_hh), _to_ih(b_ih), _to_hh(b_hh), keep=False)
    y = _outputs(S, reverse)
    return (y if mask is None else y * mask), (S[0] if reverse else S[-1])
