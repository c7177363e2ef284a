"""Fused LSTM layer: one direction of one layer, forward and hand-written BPTT.

Math (gate order i, f, g, o as in torch.nn.LSTM; m_t (B, 1) is 1 while t is inside a row's length)::

    [i, f, g, o] = x_t W_ih^T + b_ih + b_hh + h_{t-1} W_hh^T      # one GEMM per step, (B, 4H)
    i, f, o = sigmoid(i, f, o);  g = tanh(g)
    c_t = m_t * (f * c_{t-1} + i * g) + (1 - m_t) * c_{t-1}
    h_t = m_t * o * tanh(c_t)        + (1 - m_t) * h_{t-1}       # a row past its length keeps its state
    y_t = m_t * h_t

BPTT, with gh = dL/dh_t and gc = dL/dc_t flowing back from step t+1::

    dc     = m * gc + gh * m * o * (1 - tanh(c_t)^2)
    di, df, dg = dc * g * i(1-i),  dc * c_{t-1} * f(1-f),  dc * i * (1-g^2)    # pre-activation gradients
    do     = gh * m * tanh(c_t) * o(1-o)
    gc     = dc * f + (1 - m) * gc
    gh     = [di, df, dg, do] W_hh + (1 - m) * gh + m_{t-1} * dy_{t-1}
    dW_ih = sum_t dG_t^T x_t,  dW_hh = sum_t dG_t^T h_{t-1},  db = sum_t dG_t   # one GEMM each

Zoneout (Krueger et al. 2016; ``zoneout`` (T, 2, B, H): per step z_h and z_c for h and c, while training bool
masks, True where a unit keeps its previous value, at evaluation the weights p_h, p_c of the previous values) zones
c and h apart, both from the candidate
c~ = f * c_{t-1} + i * g::

    c_t = m_t * ((1 - z_c) c~ + z_c c_{t-1}) + (1 - m_t) * c_{t-1}
    h_t = m_t * ((1 - z_h) o tanh(c~) + z_h h_{t-1}) + (1 - m_t) * h_{t-1}

so BPTT is the above with m_t (1 - z_c) for m_t on the c path (dc's gc term, gc's carry) and m_t (1 - z_h) on the
h path (p, do's factor, gh's carry), and y_t = m_t * h_t still.

Every factor that does not depend on gh or gc (the ``Q`` columns) is computed after the forward loop in a few
whole-sequence ops, so a backward step costs one GEMM and four elementwise ops.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.kernels.extension import step_weight, wanted
from rnnkit.kernels.ops import (
    backward_slices,
    linear,
    linear_add,
    lower,
    sum_over_slices,
    tanh,
    tanh_scale,
    time_steps,
)

__all__ = ["lstm_layer"]


def _forward(x, h0, c0, mask, reverse, w_ih, w_hh, b_ih, b_hh, keep: bool, zoneout=None):
    """The recurrence. Returns S (T+1, B, H) of h in time order, c_T, and with ``keep`` the backward factors
    (Q, p, F) of ``_factors``, else None. ``zoneout``: (T, 2, B, H), bool masks or weights, or None."""
    T, B, D = x.shape
    H = w_hh.size(1)
    b = None if b_ih is None else b_ih + b_hh  # (4H,)
    scale = tanh_scale(x)  # the g rows are fed 2a, so one sigmoid covers all four gates (see ops.tanh_scale)
    if scale != 1.0:
        rows = torch.ones(4, 1, 1, dtype=w_hh.dtype, device=x.device)
        rows[2] = scale
        w_ih, w_hh = (w_ih.view(4, H, -1) * rows).view(4 * H, -1), (w_hh.view(4, H, H) * rows).view(4 * H, H)
        b = None if b is None else (b.view(4, H) * rows[:, 0].to(b.dtype)).view(4 * H)
    ext = wanted(h0)
    # mixed precision on the C++ loops: xp (then Q) in the products' dtype, the bias added to each step's product
    low = ext is not None and w_ih.dtype != h0.dtype
    xp = linear(x.reshape(T * B, D), w_ih, None if low else b, w_ih.dtype if low else h0.dtype).view(T, B, 4 * H)
    # every step writes its slot (no stacking afterwards); zeros for the Python loop (see ops.py on page faults)
    S = h0.new_empty(T + 1, B, H) if ext is not None else h0.new_zeros(T + 1, B, H)
    first = T if reverse else 0
    S[first] = h0
    if ext is not None:  # the same loop in C++ (extension.py); with keep, it turns xp into Q and fills p, F
        m = None if mask is None else mask.to(h0.dtype)
        p, forget = (h0.new_empty(T, B, H), h0.new_empty(T, B, H)) if keep else (None, None)
        c = ext.lstm_forward(xp, S, c0, p, forget, m, reverse, *step_weight(w_hh, B), b if low else None, zoneout)
        return S, c, ((xp, p, forget) if keep else None)
    z_h, z_c = (None, None) if zoneout is None else zoneout.to(h0.dtype).unbind(1)  # 2 x (T, B, H), masks as 0/1
    C = h0.new_zeros(T + 1, B, H) if keep else None  # c
    TC = h0.new_zeros(T, B, H) if keep else None  # tanh(c)
    if keep:
        C[first] = c0
    h, c = h0, c0
    for t in time_steps(T, reverse):
        cur = t if reverse else t + 1
        a = linear_add(h, xp[t], w_hh)  # (B, 4H) pre-activations
        act = torch.sigmoid(a, out=xp[t] if keep else a)  # i, f, o (and g when scale == 2)
        if scale == 1.0:
            torch.tanh(a[:, 2 * H : 3 * H], out=act[:, 2 * H : 3 * H])
        else:
            act[:, 2 * H : 3 * H].mul_(2).sub_(1)  # g = tanh(a_g) = 2 sigmoid(2 a_g) - 1
        i, f, g, o = act.chunk(4, 1)  # 4 x (B, H)
        c_new = torch.mul(f, c, out=C[cur] if keep else None).addcmul_(i, g)
        tc = tanh(c_new, scale, out=TC[t] if keep else None)
        h_new = torch.mul(o, tc, out=S[cur])
        if zoneout is not None:  # both from the candidate c~ (tc is tanh(c~))
            c_new.mul_(1 - z_c[t]).addcmul_(z_c[t], c)
            h_new.mul_(1 - z_h[t]).addcmul_(z_h[t], h)
        if mask is not None:
            c_new = torch.where(mask[t], c_new, c, out=c_new)
            torch.where(mask[t], h_new, h, out=h_new)
        h, c = h_new, c_new
    return S, c, (_factors(xp, TC, C, _masks(mask, zoneout, h0.dtype)[1], reverse) if keep else None)


def _masks(mask: Tensor | None, zoneout: Tensor | None, dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
    """The factors m_t stands for on the c path and on the h path: the rows' mask (T, B, 1), or with zoneout
    m_t (1 - z_c) and m_t (1 - z_h) (T, B, H) in ``dtype``."""
    if zoneout is None:
        return mask, mask
    z_h, z_c = zoneout.to(dtype).unbind(1)  # 2 x (T, B, H)
    if mask is None:
        return 1 - z_c, 1 - z_h
    return (1 - z_c) * mask, (1 - z_h) * mask


def _factors(A: Tensor, tc: Tensor, C: Tensor, mask: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The backward step's factors from the activations A (T, B, 4H), tanh(c) (T, B, H) and the c history:
    Q = [g i(1-i), c_{t-1} f(1-f), i(1-g^2), m tanh(c) o(1-o)] (T, B, 4H), p = m o (1 - tanh(c)^2), F = f; m: the
    h path's (``_masks``)."""
    H = tc.size(-1)
    i, f, g, o = A.chunk(4, -1)  # 4 x (T, B, H)
    forget = f.clone()  # (T, B, H)
    p = tc.mul(tc).neg_().add_(1).mul_(o)  # o * (1 - tanh(c)^2)
    Q = torch.addcmul(A, A, A, value=-1)  # s(1 - s) for the sigmoid gates, (T, B, 4H)
    Q[..., :H].mul_(g)  # g * i(1-i)
    Q[..., H : 2 * H].mul_(_previous(C, reverse))  # c_{t-1} * f(1-f)
    torch.mul(g, g, out=Q[..., 2 * H : 3 * H]).neg_().add_(1).mul_(i)  # i * (1 - g^2)
    Q[..., 3 * H :].mul_(tc)  # tanh(c) * o(1-o)
    if mask is not None:
        m = mask.to(A.dtype)
        p.mul_(m)
        Q[..., 3 * H :].mul_(m)
    return Q, p, forget


def _outputs(S: Tensor, reverse: bool) -> Tensor:
    return S[:-1] if reverse else S[1:]  # (T, B, H): the state at t


def _previous(S: Tensor, reverse: bool) -> Tensor:
    return S[1:] if reverse else S[:-1]  # (T, B, H): the state before t in the direction's own order


def _backward_loop(Q, p, forget, dy, masks, gh, gc, dG, reverse, w_hh):
    """Fills dG (T, B, 4H) = [di, df, dg, do] step by step; returns dL/dh_{-1}, dL/dc_{-1}. ``masks``: the c and
    h paths' (``_masks``)."""
    mc, mh = masks
    T, B, H = p.shape
    w_hh_t = w_hh.t().contiguous()  # (H, 4H)
    dG4, Q4 = dG.view(T, B, 4, H), Q.view(T, B, 4, H)
    order = time_steps(T, not reverse)  # backward visits the steps in the opposite order
    gh = gh + dy[order[0]]
    for s, t in enumerate(order):
        dc = torch.addcmul(gc if mc is None else gc * mc[t], gh, p[t])  # (B, H)
        torch.mul(dc.unsqueeze(1), Q4[t, :, :3], out=dG4[t, :, :3])  # di, df, dg
        torch.mul(gh, Q4[t, :, 3], out=dG4[t, :, 3])  # do
        carry = dy[order[s + 1]] if s + 1 < T else torch.zeros_like(gh)  # (B, H)
        if mc is None:
            gc = dc * forget[t]
        else:  # rows past their length (and zoned units) pass the gradients through
            gc = torch.mul(dc, forget[t]).addcmul_(1 - mc[t], gc)
            carry = torch.addcmul(carry, 1 - mh[t], gh)
        gh = linear_add(dG[t], carry, w_hh_t)  # (B, H)
    return gh, gc


class LSTMFunction(torch.autograd.Function):
    """(x (T, B, D), h0, c0 (B, H), mask (T, B, 1) bool or None, reverse, w_ih, w_hh, b_ih, b_hh, lowp, zoneout)
    -> (y, h_T, c_T); ``lowp``: the products' dtype (``ops.lower``) or None; ``zoneout``: (T, 2, B, H), bool masks
    or weights in h0's dtype, or None."""

    @staticmethod
    def forward(ctx, x, h0, c0, mask, reverse, w_ih, w_hh, b_ih, b_hh, lowp, zoneout):
        x, w_ih, w_hh = lower(x, lowp), lower(w_ih, lowp), lower(w_hh, lowp)  # x only meets products
        S, c_last, (Q, p, forget) = _forward(x, h0, c0, mask, reverse, w_ih, w_hh, b_ih, b_hh, True, zoneout)
        m = None if mask is None else mask.to(h0.dtype)  # (T, B, 1)
        y = _outputs(S, reverse)
        if m is not None:
            y = y * m
        ctx.reverse = reverse
        ctx.save_for_backward(x, S, Q, p, forget, m, w_ih, w_hh, zoneout)
        return y, (S[0] if reverse else S[-1]).clone(), c_last

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_last, dc_last):
        x, S, Q, p, forget, m, w_ih, w_hh, zoneout = ctx.saved_tensors
        reverse = ctx.reverse
        T, B, _ = x.shape
        H = w_hh.size(1)
        dy = torch.zeros_like(p) if dy is None else dy if m is None else dy * m  # (T, B, H)
        gh = torch.zeros_like(p[0]) if dh_last is None else dh_last  # (B, H)
        gc = torch.zeros_like(p[0]) if dc_last is None else dc_last  # (B, H)
        ext = wanted(S)
        if ext is not None:  # the same loop in C++ (extension.py), slice by slice
            w = step_weight(w_hh.t(), B)  # gh_{t-1} gets dG_t W_hh
            spans = backward_slices(T, B, reverse)
            buf = Q.new_empty(max(t1 - t0 for t0, t1 in spans), B, 4 * H)  # Q's dtype: bf16 in mixed precision

            def grads_of(t0, t1):
                nonlocal gh, gc
                dG = buf[: t1 - t0]  # [di, df, dg, do]
                mt = None if m is None else m[t0:t1]
                zt = None if zoneout is None else zoneout[t0:t1]
                gh, gc = ext.lstm_backward(
                    Q[t0:t1], p[t0:t1], forget[t0:t1], dy[t0:t1], mt, reverse, *w, gh, gc, dG, zt
                )
                return dG.view(-1, 4 * H)

        else:
            dG = torch.zeros_like(Q)  # (T, B, 4H); zeros: see ops.py on page faults
            gh, gc = _backward_loop(Q, p, forget, dy, _masks(m, zoneout, p.dtype), gh, gc, dG, reverse, w_hh)
            spans, grads_of = [(0, T)], lambda t0, t1: dG.view(-1, 4 * H)
        need = ctx.needs_input_grad
        need = (need[0], need[5], need[6], need[7] or need[8], False)
        dx, dw_ih, dw_hh, db, _ = sum_over_slices(spans, grads_of, x, _previous(S, reverse), w_ih, need)
        return dx, gh, gc, None, None, dw_ih, dw_hh, db, None if db is None else db.clone(), None, None


def lstm_layer(x, h0, c0, mask, reverse, w_ih, w_hh, b_ih, b_hh, lowp=None, zoneout=None):
    """One direction of one LSTM layer on time-major x (T, B, D): -> (y (T, B, H), h_T, c_T (B, H)); ``lowp``:
    the products' dtype (``ops.lower``) or None for x's; ``zoneout``: (T, 2, B, H), per step h's and c's bool masks
    (training) or the weights of each unit's previous h and c (evaluation), see the top, or None."""
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return LSTMFunction.apply(x, h0, c0, mask, reverse, w_ih, w_hh, b_ih, b_hh, lowp, zoneout)
    x, w_ih, w_hh = lower(x, lowp), lower(w_ih, lowp), lower(w_hh, lowp)
    S, c_last, _ = _forward(x, h0, c0, mask, reverse, w_ih, w_hh, b_ih, b_hh, keep=False, zoneout=zoneout)
    y = _outputs(S, reverse)
    return (y if mask is None else y * mask), (S[0] if reverse else S[-1]), c_last
