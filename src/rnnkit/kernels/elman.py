"""Fused Elman layer: one direction of one layer, forward and hand-written BPTT.

Math (time-major, one direction; ``act`` is tanh, relu or the identity (the i2h cell's linear state); m_t (B, 1)
is 1 while t is inside a row's length)::

    a_t = x_t W_ih^T + b_ih + b_hh + h_{t-1} W_hh^T
    h_t = m_t * act(a_t) + (1 - m_t) * h_{t-1}       # a row past its length keeps its state
    y_t = m_t * h_t                                   # and outputs zeros

BPTT, with g_t = dL/dh_t (the output's gradient plus the next step's)::

    da_t    = g_t * m_t * act'(a_t)                   # act' = 1 - h_t^2 (tanh), [h_t > 0] (relu) or 1
    g_{t-1} = da_t W_hh + (1 - m_t) * g_t + m_{t-1} * dy_{t-1}
    dW_ih = sum_t da_t^T x_t,  dW_hh = sum_t da_t^T h_{t-1},  db = sum_t da_t    # one GEMM each

Zoneout (Krueger et al. 2016; ``zoneout`` z (T, B, H): while training a bool mask, True where a unit keeps its
previous value, at evaluation the weight p of the previous value) makes the update ``h_t = m_t * ((1 - z) act(a_t)
+ z h_{t-1}) + (1 - m_t) * h_{t-1}``: the equations above with m_t (1 - z) for m_t, except y_t = m_t * h_t. A kept
unit's h_t is not act(a_t), but its gradient is zero there, so act' still comes from h_t; with weights every h_t
is a mix, and the training forward keeps act'(a_t).

The input projection of all steps is one GEMM before the loop and dx one GEMM after it, so each step costs
one GEMM plus one or two elementwise ops. States are stored in time order in S (T+1, B, H): the forward
direction keeps h_{-1} in S[0] and h_t in S[t+1], the reverse direction h_t in S[t] and its initial state in S[T].
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.kernels.extension import step_weight, wanted
from rnnkit.kernels.ops import backward_slices, linear, linear_add, lower, sum_over_slices, tanh_scale, time_steps

__all__ = ["ACTIVATIONS", "elman_layer"]

# the activations, numbered as the C++ loops take them (csrc/cells.h: Act)
ACTIVATIONS = {"tanh": 0, "relu": 1, "identity": 2}


def _forward(x, h0, mask, reverse, act, w_ih, w_hh, b_ih, b_hh, zoneout=None, keep=False):
    """The recurrence; returns the state history S (T+1, B, H) in time order and, with ``keep`` and zoneout weights
    (not masks), act'(a_t) (T, B, H) for the backward (else None). ``b_hh`` may be None (one bias)."""
    T, B, D = x.shape
    H = w_hh.size(1)
    b = b_ih if b_ih is None or b_hh is None else b_ih + b_hh  # (H,)
    scale = tanh_scale(x) if act == "tanh" else 1.0  # feed 2a to tanh_ (see ops.tanh_scale)
    if scale != 1.0:
        w_ih, w_hh, b = w_ih * scale, w_hh * scale, None if b is None else b * scale
    ext = wanted(h0)
    # mixed precision on the C++ loops: xp in the products' dtype, the bias added to each step's product
    low = ext is not None and w_ih.dtype != h0.dtype
    xp = linear(x.reshape(T * B, D), w_ih, None if low else b, w_ih.dtype if low else h0.dtype).view(T, B, H)
    # every step writes its slot (no stacking afterwards); zeros for the Python loop (see ops.py on page faults)
    S = h0.new_empty(T + 1, B, H) if ext is not None else h0.new_zeros(T + 1, B, H)
    S[T if reverse else 0] = h0
    keep = keep and zoneout is not None and zoneout.is_floating_point()
    if ext is not None:  # the same loop in C++ (extension.py); with zoneout weights and keep, act' is put in xp
        m = None if mask is None else mask.to(h0.dtype)
        bias = b if low else None
        ext.elman_forward(xp, S, m, reverse, ACTIVATIONS[act], *step_weight(w_hh, B), bias, zoneout, keep)
        return S, (xp if keep else None)
    fresh = h0.new_zeros(T, B, H) if keep else None  # act(a_t), before zoneout
    z = None if zoneout is None else zoneout.to(h0.dtype)  # (T, B, H): a mask as 0/1
    update = None if z is None else 1 - z
    h = h0
    for t in time_steps(T, reverse):
        a = linear_add(h, xp[t], w_hh)  # (B, H)
        h_new = S[t if reverse else t + 1]
        v = fresh[t] if keep else h_new
        if act == "relu":
            torch.clamp_min(a, 0, out=v)
        elif act == "identity":
            v.copy_(a)
        elif scale == 2.0:
            torch.sigmoid(a, out=v).mul_(2).sub_(1)  # tanh(a/2 * 2) = 2 sigmoid(2a) - 1
        else:
            torch.tanh(a, out=v)
        if zoneout is not None:
            torch.mul(v, update[t], out=h_new).addcmul_(z[t], h)  # (1 - z) act(a_t) + z h_{t-1}
        if mask is not None:
            torch.where(mask[t], h_new, h, out=h_new)
        h = h_new
    return S, (_activation_grad(fresh, act) if keep else None)  # (T+1, B, H)


def _outputs(S: Tensor, reverse: bool) -> Tensor:
    return S[:-1] if reverse else S[1:]  # (T, B, H): h_t at t


def _previous(S: Tensor, reverse: bool) -> Tensor:
    return S[1:] if reverse else S[:-1]  # (T, B, H): h_{t-1} in the direction's own order


def _activation_grad(h: Tensor, act: str) -> Tensor:
    """act'(a_t) from h_t = act(a_t), a new tensor."""
    if act == "relu":
        return (h > 0).to(h.dtype)
    if act == "identity":
        return torch.ones_like(h)
    return torch.mul(h, h).neg_().add_(1)


def _backward_loop(h, dy, g, m, da, reverse, act, w_hh, dact=None):
    """Fills da (T, B, H) step by step; returns dL/dh_{-1}. ``m``: the rows' mask (T, B, 1), with zoneout
    m (1 - z) (T, B, H); ``dact``: act'(a_t) kept by the forward, else taken from h_t."""
    T = h.size(0)
    dact = _activation_grad(h, act) if dact is None else dact.to(h.dtype, copy=True)  # the kept one stays
    if m is not None:
        dact.mul_(m)
    w_hh_t = w_hh.t().contiguous()  # (H, H), so each step's product is x @ w^T
    order = time_steps(T, not reverse)  # backward visits the steps in the opposite order
    g = g + dy[order[0]]
    for s, t in enumerate(order):
        torch.mul(g, dact[t], out=da[t])
        carry = dy[order[s + 1]] if s + 1 < T else torch.zeros_like(g)  # (B, H)
        if m is not None:
            carry = torch.addcmul(carry, 1 - m[t], g)  # frozen rows pass g through
        g = linear_add(da[t], carry, w_hh_t)  # (B, H)
    return g


class ElmanFunction(torch.autograd.Function):
    """(x (T, B, D), h0 (B, H), mask (T, B, 1) bool or None, reverse, act, w_ih, w_hh, b_ih, b_hh, lowp, zoneout)
    -> (y, h_T); ``act``: a key of ACTIVATIONS; ``b_hh`` may be None; ``lowp``: the products' dtype (``ops.lower``)
    or None; ``zoneout``: z (T, B, H), a bool mask or weights in h0's dtype, or None."""

    @staticmethod
    def forward(ctx, x, h0, mask, reverse, act, w_ih, w_hh, b_ih, b_hh, lowp, zoneout):
        x, w_ih, w_hh = lower(x, lowp), lower(w_ih, lowp), lower(w_hh, lowp)  # x only meets products
        S, dact = _forward(x, h0, mask, reverse, act, w_ih, w_hh, b_ih, b_hh, zoneout, keep=True)
        y = _outputs(S, reverse)  # (T, B, H)
        m = None if mask is None else mask.to(h0.dtype)  # (T, B, 1)
        if m is not None:
            y = y * m
        ctx.reverse, ctx.act = reverse, act
        # act' is recomputed from S (as little kept as torch.nn), or with zoneout weights kept in dact
        ctx.save_for_backward(x, S, m, w_ih, w_hh, zoneout, dact)
        return y, (S[0] if reverse else S[-1]).clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_last):
        x, S, m, w_ih, w_hh, zoneout, dact = ctx.saved_tensors
        reverse = ctx.reverse
        T, B, _ = x.shape
        H = w_hh.size(1)
        h = _outputs(S, reverse)  # (T, B, H)
        dy = torch.zeros_like(h) if dy is None else dy if m is None else dy * m  # (T, B, H)
        g = torch.zeros_like(h[0]) if dh_last is None else dh_last  # (B, H)
        ext = wanted(S)
        if ext is not None:  # the same loop in C++ (extension.py), act' computed on the fly, slice by slice
            w = step_weight(w_hh.t(), B)  # g_{t-1} gets da_t W_hh
            spans = backward_slices(T, B, reverse)
            buf = S.new_empty(max(t1 - t0 for t0, t1 in spans), B, H, dtype=w_hh.dtype)  # bf16 in mixed precision

            def grads_of(t0, t1):
                nonlocal g
                da = buf[: t1 - t0]
                mt = None if m is None else m[t0:t1]
                act = ACTIVATIONS[ctx.act]
                zt = None if zoneout is None else zoneout[t0:t1]
                dt = None if dact is None else dact[t0:t1].to(da.dtype)  # (a Python forward's: S's dtype)
                g = ext.elman_backward(S[t0 : t1 + 1], dy[t0:t1], mt, reverse, act, *w, g.contiguous(), da, dt, zt)
                return da.view(-1, H)

        else:
            da = torch.zeros_like(h)  # (T, B, H); zeros: see ops.py on page faults
            if zoneout is not None:
                update = 1 - zoneout.to(h.dtype)  # (T, B, H)
                m = update if m is None else update * m
            g = _backward_loop(h, dy, g, m, da, reverse, ctx.act, w_hh, dact)
            spans, grads_of = [(0, T)], lambda t0, t1: da.view(-1, H)
        need = ctx.needs_input_grad
        need = (need[0], need[5], need[6], need[7] or need[8], False)
        dx, dw_ih, dw_hh, db, _ = sum_over_slices(spans, grads_of, x, _previous(S, reverse), w_ih, need)
        db_hh = db.clone() if db is not None and ctx.needs_input_grad[8] else None  # no gradient for a None b_hh
        return dx, g, None, None, None, dw_ih, dw_hh, db, db_hh, None, None


def elman_layer(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, *, activation="tanh", lowp=None, zoneout=None):
    """One direction of one Elman layer on time-major x (T, B, D): -> (y (T, B, H), h_T (B, H)); ``activation``:
    tanh, relu or identity; ``b_hh`` may be None (one bias); ``lowp``: the products' dtype (``ops.lower``) or None
    for x's; ``zoneout``: z (T, B, H), a bool mask (training) or the weight of each unit's previous value
    (evaluation), see the top, or None."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    tensors = (x, h0, w_ih, w_hh, b_ih, b_hh)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return ElmanFunction.apply(x, h0, mask, reverse, activation, w_ih, w_hh, b_ih, b_hh, lowp, zoneout)
    x, w_ih, w_hh = lower(x, lowp), lower(w_ih, lowp), lower(w_hh, lowp)
    S, _ = _forward(x, h0, mask, reverse, activation, w_ih, w_hh, b_ih, b_hh, zoneout)
    y = _outputs(S, reverse)
    return (y if mask is None else y * mask), (S[0] if reverse else S[-1])
