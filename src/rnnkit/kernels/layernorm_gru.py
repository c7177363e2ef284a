"""Fused LayerNorm GRU layer (cells/layernorm.py): one direction of one layer, forward and hand-written BPTT.

Math (gate order r, z, n as in torch.nn.GRU; m_t (B, 1) is 1 while t is inside a row's length)::

    P_t = x_t W_ih^T                                  # (B, 3H), all steps in one GEMM and one LN
    A_t = h_{t-1} W_hh^T                              # (B, 3H), one GEMM per step
    [i_r, i_z, i_n] = LN(P_t; a_ih) + b_ih
    [h_r, h_z, h_n] = LN(A_t; a_hh) + b_hh
    r = sigmoid(i_r + h_r);  z = sigmoid(i_z + h_z);  n = tanh(i_n + r * h_n)
    h_t = m_t * (n + z * (h_{t-1} - n)) + (1 - m_t) * h_{t-1}
    y_t = m_t * h_t

with LN and LNback as in layernorm_lstm.py. BPTT, with g = dL/dh_t::

    dn = g * m * (1 - z) * (1 - n^2)        dz = g * m * (h_{t-1} - n) * z(1-z)
    dr = dn * h_n * r(1-r)                  dh_n = dn * r
    dA = LNback_hh([dr, dz, dh_n]);  da_hh += sum_b [dr, dz, dh_n] * A^
    g  = dA W_hh + g * (m * z + 1 - m) + m_{t-1} * dy_{t-1}

and over a slice of the time axis at once, after its steps::

    dP = LNback_ih([dr, dz, dn]);  dx = dP W_ih;  dW_ih = sum_t dP^T x_t;  dW_hh = sum_t dA^T h_{t-1}
    db_ih = sum_t [dr, dz, dn];  db_hh = sum_t [dr, dz, dh_n];  da_ih = sum_t [dr, dz, dn] * P^

The layout is gru.py's: W_ih's gate rows (and a_ih, b_ih) reordered (n, z, r), W_hh's (z, r, n), so the step's
gradient row [dn, dz, dr, dh_n] holds the input side in its first 3H columns and the hidden side in its last 3H;
LN is over all 3H units, so reordering them changes nothing but the order. The factors are gru.py's
(``_factors``); as in layernorm_lstm.py (its slices), the products are recomputed slice by slice in the
backward rather than kept (A; P too without KEEP_P), the LayerNorms are ATen's, and ops.tanh_scale doubles the n rows'
gains and shifts.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.cells.layernorm import EPS
from rnnkit.kernels import layernorm_lstm  # its slicing, read at each call
from rnnkit.kernels.gru import _factors, _outputs, _previous, _to_hh, _to_ih  # gru.py's layout and factors
from rnnkit.kernels.layernorm_lstm import _ln_grads
from rnnkit.kernels.ops import linear, linear_add, tanh_, tanh_scale, time_steps, weight_grad

__all__ = ["LayerNormGRUFunction", "layernorm_gru_layer"]

# As in layernorm_lstm.py: P kept, A recomputed in the backward.
KEEP_P = True

_ln_backward = torch.ops.aten.native_layer_norm_backward.default


def _scale_block(v: Tensor | None, block: int, scale: float) -> Tensor | None:
    """v (3H,) with its gate block ``block`` (of 3) multiplied by ``scale``."""
    if v is None or scale == 1.0:
        return v
    parts = list(v.chunk(3))
    parts[block] = parts[block] * scale
    return torch.cat(parts)


def _forward(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh, keep: bool):
    """The recurrence on reordered parameters. Returns S (T+1, B, H) in time order and, with ``keep``, the
    backward's factors Q, zc (gru._factors) and each LN's (mean, rstd) (T, B, 1), else None."""
    T, B, D = x.shape
    H = w_hh.size(1)
    scale = tanh_scale(x)  # the n rows are fed 2a: their gains and shifts doubled (LN undoes a scaled W)
    g_ih, s_ih = _scale_block(a_ih, 0, scale), _scale_block(b_ih, 0, scale)
    g_hh, s_hh = _scale_block(a_hh, 2, scale), _scale_block(b_hh, 2, scale)
    P = linear(x.reshape(T * B, D), w_ih)  # (T*B, 3H) input products
    Z, mean_ih, rstd_ih = torch.native_layer_norm(P, (3 * H,), g_ih, s_ih, EPS)
    Z = Z.view(T, B, 3 * H)  # [gi_n, gi_z, gi_r], activated in place into [n, z, r]
    P = P.view(T, B, 3 * H) if keep and KEEP_P else None  # else the backward recomputes it
    S = x.new_zeros(T + 1, B, H)  # zeros, not empty: see ops.py on page faults
    S[T if reverse else 0] = h0
    ghn = x.new_zeros(T, B, H) if keep else None  # scale * gh_n: copied, so each step's (B, 3H) gh is freed
    h, stats = h0, []
    for t in time_steps(T, reverse):
        gh, mu, rs = torch.native_layer_norm(linear(h, w_hh), (3 * H,), g_hh, s_hh, EPS)  # [gh_z, gh_r, gh_n]
        a = Z[t]  # (B, 3H)
        zr = a[:, H:].add_(gh[:, : 2 * H]).sigmoid_()  # (B, 2H): [z, r]
        n = tanh_(a[:, :H].addcmul_(zr[:, H:], gh[:, 2 * H :]), scale)  # (B, H)
        h_new = torch.lerp(n, h, zr[:, :H], out=S[t if reverse else t + 1])  # n + z * (h - n)
        if mask is not None:
            torch.where(mask[t], h_new, h, out=h_new)
        h = h_new
        if keep:
            ghn[t] = gh[:, 2 * H :]
            stats.append((mu, rs))
    if not keep:
        return S, None
    order = slice(None, None, -1) if reverse else slice(None)  # the lists are in visiting order; store in time order
    Q, zc = _factors(Z, ghn.div_(scale), S, mask, reverse)
    mean_hh, rstd_hh = (torch.stack(list(v)[order]) for v in zip(*stats, strict=True))
    return S, (Q, zc, mean_ih.view(T, B, 1), rstd_ih.view(T, B, 1), mean_hh, rstd_hh, P)


class LayerNormGRUFunction(torch.autograd.Function):
    """(x (T, B, D), h0 (B, H), mask (T, B, 1) bool or None, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh)
    -> (y, h_T)."""

    @staticmethod
    def forward(ctx, x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh):
        w_ih, b_ih, a_ih = _to_ih(w_ih), _to_ih(b_ih), _to_ih(a_ih)
        w_hh, b_hh, a_hh = _to_hh(w_hh), _to_hh(b_hh), _to_hh(a_hh)
        S, kept = _forward(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh, keep=True)
        m = None if mask is None else mask.to(x.dtype)  # (T, B, 1)
        y = _outputs(S, reverse)
        if m is not None:
            y = y * m
        ctx.reverse = reverse
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        ctx.save_for_backward(x, S, m, w_ih, w_hh, a_ih, a_hh, *kept)
        return y, (S[0] if reverse else S[-1]).clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_last):
        x, S, m, w_ih, w_hh, a_ih, a_hh, Q, zc, mean_ih, rstd_ih, mean_hh, rstd_hh, P_kept = ctx.saved_tensors
        reverse = ctx.reverse
        T, B, D = x.shape
        H = w_hh.size(1)
        need = ctx.needs_input_grad
        dy = torch.zeros_like(zc) if dy is None else dy if m is None else dy * m  # (T, B, H)
        g = torch.zeros_like(zc[0]) if dh_last is None else dh_last  # (B, H)
        h_prev = _previous(S, reverse)  # (T, B, H)
        spans = layernorm_lstm.slices(T, B, reverse)
        n = max(t1 - t0 for t0, t1 in spans)
        dG = x.new_zeros(n, B, 4 * H)  # [dn, dz, dr, dgh_n] of the slice's steps; zeros: see ops.py on page faults
        A = x.new_zeros(n, B, 3 * H)  # the slice's A, each step's turned into its dA, then P for the input side
        dG4, Q4 = dG.view(n, B, 4, H), Q.view(T, B, 4, H)
        dx = x.new_empty(T, B, D) if need[0] else None
        sums: dict[str, Tensor] = {}

        def add(key: str, value: Tensor) -> None:
            sums[key] = sums[key].add_(value) if key in sums else value

        w_hh_t = w_hh.t().contiguous()  # (H, 3H)
        hh_mask = [True, need[9], False]  # dL/dA, and dL/da_hh step by step: A_t becomes dA_t in its place
        order = list(time_steps(T, not reverse))  # backward visits the steps in the opposite order
        g = g + dy[order[0]]
        s = 0
        for t0, t1 in spans:
            L = t1 - t0
            rows = slice(t0, t1)
            torch.mm(h_prev[rows].reshape(-1, H), w_hh.t(), out=A[:L].view(-1, 3 * H))  # A again, in one GEMM
            for _ in range(L):
                t = order[s]
                j = t - t0
                torch.mul(g.unsqueeze(1), Q4[t, :, :2], out=dG4[j, :, :2])  # dn, dz
                torch.mul(dG4[j, :, :1], Q4[t, :, 2:], out=dG4[j, :, 2:])  # dr, dgh_n
                da, ga, _ = _ln_backward(dG[j, :, H:], A[j], (3 * H,), mean_hh[t], rstd_hh[t], a_hh, None, hh_mask)
                if need[9]:
                    add("a_hh", ga)
                A[j] = da  # (B, 3H); A_t is not read again
                carry = dy[order[s + 1]] if s + 1 < T else torch.zeros_like(g)  # (B, H)
                carry = torch.addcmul(carry, g, zc[t])
                g = linear_add(da, carry, w_hh_t)  # (B, H)
                s += 1
            gi, gh = dG[:L, :, : 3 * H].reshape(-1, 3 * H), dG[:L, :, H:].reshape(-1, 3 * H)  # (L*B, 3H) each
            if need[5]:
                add("w_hh", weight_grad(A[:L].view(-1, 3 * H), h_prev[rows].reshape(-1, H)))
            if need[0] or need[4] or need[8]:
                if P_kept is not None:
                    P = P_kept[rows].view(-1, 3 * H)
                else:  # (L*B, 3H), over dA
                    P = torch.mm(x[rows].reshape(-1, D), w_ih.t(), out=A[:L].view(-1, 3 * H))
                dP, da_ih = _ln_grads(gi, P, mean_ih[rows], rstd_ih[rows], a_ih, [need[0] or need[4], need[8]])
                if dx is not None:
                    torch.mm(dP, w_ih, out=dx[rows].view(-1, D))
                if need[4]:
                    add("w_ih", weight_grad(dP, x[rows].reshape(-1, D)))
                if need[8]:
                    add("a_ih", da_ih)
            if need[6] and ctx.has_bias[0]:
                add("b_ih", gi.sum(0))
            if need[7] and ctx.has_bias[1]:
                add("b_hh", gh.sum(0))
        dw_ih, db_ih, da_ih = (_to_ih(sums.get(k)) for k in ("w_ih", "b_ih", "a_ih"))  # back to (r, z, n)
        dw_hh, db_hh, da_hh = (_to_hh(sums.get(k)) for k in ("w_hh", "b_hh", "a_hh"))
        return dx, g, None, None, dw_ih, dw_hh, db_ih, db_hh, da_ih, da_hh


def layernorm_gru_layer(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh):
    """One direction of one LayerNorm GRU layer on time-major x (T, B, D): -> (y (T, B, H), h_T (B, H)).

    ``a_ih``, ``a_hh`` (3H,) are the products' LN gains.
    """
    tensors = (x, h0, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return LayerNormGRUFunction.apply(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh)
    w_ih, b_ih, a_ih = (_to_ih(v) for v in (w_ih, b_ih, a_ih))
    w_hh, b_hh, a_hh = (_to_hh(v) for v in (w_hh, b_hh, a_hh))
    S, _ = _forward(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh, keep=False)
    y = _outputs(S, reverse)
    return (y if mask is None else y * mask), (S[0] if reverse else S[-1])
