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

Zoneout (Krueger et al. 2016; ``zoneout`` z (T, B, H): while training a bool mask, True where a unit keeps its
previous value, at evaluation the weight p of the previous value)::

    h_t = m_t * ((1 - z) (n + z_g (h_{t-1} - n)) + z h_{t-1}) + (1 - m_t) * h_{t-1}     # z_g: the update gate

which is the above with m_t (1 - z) for m_t, except y_t = m_t * h_t.

Inside, the gate rows are reordered (n, z, r) for W_ih and (z, r, n) for W_hh, so the per-step gradient row
[dn, dz, dr, dgh_n] holds the input-side gradient in its first 3H columns and the hidden-side one in its last
3H: both are plain column slices and each backward step is one GEMM and three elementwise ops.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.kernels.extension import loaded, step_weight, wanted
from rnnkit.kernels.ops import (
    backward_slices,
    linear,
    linear_add,
    lower,
    sum_over_slices,
    tanh_,
    tanh_scale,
    time_steps,
)

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


def _forward(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, keep: bool, zoneout=None):
    """The recurrence on reordered weights. Returns S (T+1, B, H) in time order and, with ``keep``, what the
    backward needs: (K, None) from the C++ loop, K = [n, z, r, gh_n] (T, B, 4H), or (Q, zc) of ``_factors``
    from the Python loop; None without ``keep``. ``zoneout``: z (T, B, H) or None."""
    T, B, D = x.shape
    H = w_hh.size(1)
    scale = tanh_scale(x)  # the n rows are fed 2a (see ops.tanh_scale)
    if scale != 1.0:
        w_ih, b_ih = _scale_rows(w_ih, 0, scale), _scale_rows(b_ih, 0, scale)
        w_hh, b_hh = _scale_rows(w_hh, 2, scale), _scale_rows(b_hh, 2, scale)
    ext = wanted(h0)
    # mixed precision on the C++ loops: A in the products' dtype, its bias added in the loop
    low = ext is not None and w_ih.dtype != h0.dtype
    A = linear(x.reshape(T * B, D), w_ih, None if low else b_ih, w_ih.dtype if low else h0.dtype).view(T, B, 3 * H)
    # every step writes its slot (no stacking afterwards); zeros for the Python loop (see ops.py on page faults)
    S = h0.new_empty(T + 1, B, H) if ext is not None else h0.new_zeros(T + 1, B, H)
    S[T if reverse else 0] = h0
    if ext is not None:  # the same loop in C++ (extension.py), which keeps [n, z, r, gh_n] as it goes
        m = None if mask is None else mask.to(h0.dtype)
        K = h0.new_empty(T, B, 4 * H) if keep else None
        bias_ih = None if not low else b_ih if b_ih is not None else h0.new_zeros(3 * H)
        ext.gru_forward(A, S, K, m, reverse, *step_weight(w_hh, B), b_hh, scale, bias_ih, zoneout)
        return S, ((K, None) if keep else None)
    z = None if zoneout is None else zoneout.to(h0.dtype)  # (T, B, H): a mask as 0/1
    update = None if z is None else 1 - z
    h, ghn = h0, []
    for t in time_steps(T, reverse):
        gh = linear(h, w_hh, b_hh)  # (B, 3H): [gh_z, gh_r, gh_n]
        a = A[t]  # (B, 3H)
        zr = a[:, H:].add_(gh[:, : 2 * H]).sigmoid_()  # (B, 2H): [z, r]
        n = tanh_(a[:, :H].addcmul_(zr[:, H:], gh[:, 2 * H :]), scale)  # (B, H)
        h_new = torch.lerp(n, h, zr[:, :H], out=S[t if reverse else t + 1])  # n + z * (h - n)
        if zoneout is not None:
            h_new.mul_(update[t]).addcmul_(z[t], h)  # (1 - z) h~ + z h_{t-1}
        if mask is not None:
            torch.where(mask[t], h_new, h, out=h_new)
        h = h_new
        if keep:
            ghn.append(gh[:, 2 * H :])  # scale * gh_n
    if not keep:
        return S, None
    m = mask if zoneout is None else update if mask is None else update * mask  # (T, B, 1) or (T, B, H)
    return S, _factors(A, torch.stack(ghn[::-1] if reverse else ghn).div_(scale), S, m, reverse)


def _factors(A: Tensor, ghn: Tensor, S: Tensor, mask: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor]:
    """The backward step's factors from the activations A = [n, z, r] (T, B, 3H), gh_n (T, B, H) and the
    states: Q = [m (1-z)(1-n^2), m (h_{t-1} - n) z(1-z), gh_n r(1-r), r] (T, B, 4H) and zc = m z + 1 - m, with
    m the rows' mask (T, B, 1) or, with zoneout, m (1 - z) (T, B, H)."""
    T, B, H = ghn.shape
    n, z, r = A.chunk(3, -1)  # 3 x (T, B, H)
    Q = A.new_empty(T, B, 4 * H)
    torch.mul(n, n, out=Q[..., :H]).neg_().add_(1).mul_(1 - z)  # (1 - z) * (1 - n^2)
    torch.addcmul(z, z, z, value=-1, out=Q[..., H : 2 * H]).mul_(_previous(S, reverse) - n)  # (h_{t-1} - n) z(1-z)
    torch.addcmul(r, r, r, value=-1, out=Q[..., 2 * H : 3 * H]).mul_(ghn)  # gh_n * r(1-r)
    Q[..., 3 * H :] = r
    zc = z.clone()  # (T, B, H): dh_t/dh_{t-1} along the direct path
    if mask is not None:
        m = mask.to(A.dtype)  # (T, B, 1) or (T, B, H)
        Q.view(T, B, 4, H)[:, :, :2].mul_(m.unsqueeze(2))
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
    """(x (T, B, D), h0 (B, H), mask (T, B, 1) bool or None, reverse, w_ih, w_hh, b_ih, b_hh, lowp, zoneout) ->
    (y, h_T); ``lowp``: the products' dtype (``ops.lower``) or None; ``zoneout``: z (T, B, H), a bool mask or
    weights in h0's dtype, or None."""

    @staticmethod
    def forward(ctx, x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, lowp, zoneout):
        x = lower(x, lowp)  # x only meets products
        w_ih, w_hh, b_ih, b_hh = _to_ih(lower(w_ih, lowp)), _to_hh(lower(w_hh, lowp)), _to_ih(b_ih), _to_hh(b_hh)
        # zc None: C++'s K in Q
        S, (Q, zc) = _forward(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, keep=True, zoneout=zoneout)
        m = None if mask is None else mask.to(h0.dtype)  # (T, B, 1)
        y = _outputs(S, reverse)
        if m is not None:
            y = y * m
        ctx.reverse = reverse
        ctx.save_for_backward(x, S, Q, zc, m, w_ih, w_hh, zoneout)
        return y, (S[0] if reverse else S[-1]).clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_last):
        x, S, Q, zc, m, w_ih, w_hh, zoneout = ctx.saved_tensors
        reverse = ctx.reverse
        T, B, _ = x.shape
        H = w_hh.size(1)
        dy = torch.zeros_like(S[1:]) if dy is None else dy if m is None else dy * m  # (T, B, H)
        g = torch.zeros_like(S[0]) if dh_last is None else dh_last  # (B, H)
        if zc is None:  # the forward ran in C++: so does the backward, slice by slice (extension.py)
            ext = loaded()
            w = step_weight(w_hh.t(), B)  # g_{t-1} gets [dz, dr, dgh_n] W_hh
            spans = backward_slices(T, B, reverse)
            buf = S.new_empty(max(t1 - t0 for t0, t1 in spans), B, 4 * H, dtype=w_hh.dtype)  # bf16 if mixed

            def grads_of(t0, t1):
                nonlocal g
                dG = buf[: t1 - t0]  # [dn, dz, dr, dgh_n]
                mt = None if m is None else m[t0:t1]
                zt = None if zoneout is None else zoneout[t0:t1]
                g = ext.gru_backward(Q[t0:t1], S[t0 : t1 + 1], mt, dy[t0:t1], reverse, *w, g.contiguous(), dG, zt)
                return dG.view(-1, 4 * H)

        else:
            dG = torch.zeros_like(Q)  # (T, B, 4H): [dn, dz, dr, dgh_n]; zeros: see ops.py on page faults
            g = _backward_loop(Q, zc, dy, g, dG, reverse, w_hh)
            spans, grads_of = [(0, T)], lambda t0, t1: dG.view(-1, 4 * H)
        need = ctx.needs_input_grad
        need = (need[0], need[4], need[5], need[6], need[7])
        # [dn, dz, dr] feed the input side, [dz, dr, dgh_n] the hidden side: column slices, read without a copy
        dx, dw_ih, dw_hh, db_ih, db_hh = sum_over_slices(
            spans, grads_of, x, _previous(S, reverse), w_ih, need, slice(0, 3 * H), slice(H, 4 * H)
        )
        return dx, g, None, None, _to_ih(dw_ih), _to_hh(dw_hh), _to_ih(db_ih), _to_hh(db_hh), None, None


def gru_layer(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, lowp=None, zoneout=None):
    """One direction of one GRU layer on time-major x (T, B, D): -> (y (T, B, H), h_T (B, H)); ``lowp``: the
    products' dtype (``ops.lower``) or None for x's; ``zoneout``: z (T, B, H), a bool mask (training) or the
    weight of each unit's previous value (evaluation), see the top, or None."""
    tensors = (x, h0, w_ih, w_hh, b_ih, b_hh)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return GRUFunction.apply(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, lowp, zoneout)
    w_ih, w_hh, b_ih, b_hh = _to_ih(lower(w_ih, lowp)), _to_hh(lower(w_hh, lowp)), _to_ih(b_ih), _to_hh(b_hh)
    S, _ = _forward(lower(x, lowp), h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, keep=False, zoneout=zoneout)
    y = _outputs(S, reverse)
    return (y if mask is None else y * mask), (S[0] if reverse else S[-1])
