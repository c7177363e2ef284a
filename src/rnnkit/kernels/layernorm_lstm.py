"""Fused LayerNorm LSTM layer (cells/layernorm.py): one direction of one layer, forward and hand-written BPTT.

Math (gate order i, f, g, o; m_t (B, 1) is 1 while t is inside a row's length)::

    P_t = x_t W_ih^T                  # (B, 4H), all steps in one GEMM and one LN
    A_t = h_{t-1} W_hh^T              # (B, 4H), one GEMM per step
    [i, f, g, o] = LN(P_t; a_ih) + LN(A_t; a_hh) + b_ih + b_hh
    i, f, o = sigmoid(i, f, o);  g = tanh(g)
    k_t = f * c_{t-1} + i * g
    q_t = tanh(LN(k_t; a_c, b_c))
    c_t = m_t * k_t        + (1 - m_t) * c_{t-1}      # a row past its length keeps its state
    h_t = m_t * o * q_t    + (1 - m_t) * h_{t-1}
    y_t = m_t * h_t

    LN(v; a, b) = a * v^ + b,  v^ = (v - mean(v)) * r,  r = 1 / sqrt(var(v) + 1e-5)    over the last axis
    its backward, given d = dL/dLN(v):
    LNback(d) = dL/dv = r * (a d - mean(a d) - v^ * mean(a d v^)),   dL/da = sum d v^,   dL/db = sum d

BPTT, with gh = dL/dh_t and gc = dL/dc_t flowing back from step t+1::

    du = gh * m * o * (1 - q^2)                                     # dL/dLN(k_t)
    dk = LNback_c(du) + m * gc
    dz = [dk * g * i(1-i),  dk * c_{t-1} * f(1-f),  dk * i * (1-g^2),  gh * m * q * o(1-o)]   # (B, 4H)
    dA = LNback_hh(dz);  da_hh += sum_b dz * A^
    gc = dk * f + (1 - m) * gc
    gh = dA W_hh + (1 - m) * gh + m_{t-1} * dy_{t-1}

and over many steps at once (a slice of the time axis, after its steps)::

    dP = LNback_ih(dz);  dx = dP W_ih;  dW_ih = sum_t dP^T x_t;  dW_hh = sum_t dA^T h_{t-1}
    db_ih = db_hh = sum_t dz;  da_ih = sum_t dz * P^;  da_c = sum_t du * k^;  db_c = sum_t du

The input side LN(P_t; a_ih) does not depend on h, so its forward runs once for all steps before the loop and its
backward once per time slice after the slice's steps, as do every gain's and bias's gradient but a_hh's. The
factors of dz that do not depend on gh or gc (lstm.py's ``Q``, with q for tanh(c)) are computed after the
forward loop over the activations' own buffer. What the backward keeps is x, h, c, P, the factors and each
LN's mean and 1/std; A is recomputed slice by slice, one GEMM over the whole slice, instead of being held from
the forward to the backward (see KEEP_P).

The per-step LayerNorms and their backward (LNback with only dL/dv) are ATen's ``native_layer_norm`` and
``native_layer_norm_backward``: one call each instead of some eight elementwise ops and reductions, each of which
would pay Python's and the dispatcher's per-call cost on every step. With ops.tanh_scale the gains (and shifts)
of the g rows and of the cell's LN are doubled, so one sigmoid serves all four gates and the products stay
unscaled.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.cells.layernorm import EPS
from rnnkit.kernels.lstm import _outputs, _previous  # the same state layout as LSTM
from rnnkit.kernels.ops import backward_slices, linear, linear_add, tanh_, tanh_scale, time_steps, weight_grad

__all__ = ["LayerNormLSTMFunction", "layernorm_lstm_layer", "slices"]

_ln_backward = torch.ops.aten.native_layer_norm_backward.default

# The backward runs over slices of the time axis, each folded into dx and the parameter gradients before the
# next, so its buffers hold a slice only: an eighth of the sequence, at most SLICE_ROWS rows (steps x batch).
# It recomputes the slice's hidden products A = h W_hh^T (one GEMM over the slice) rather than keep a (T, B, 4H)
# tensor from the forward; the input products P are kept (KEEP_P) or recomputed the same way. The step is bound
# by its GEMMs: each recomputed product adds one to the six a training step needs, while keeping both puts the
# peak memory above the loop backend's; benchmarks/layernorm_fused.py measures both.
SLICES = 8
SLICE_ROWS = 256
KEEP_P = True


def _scaled(v: Tensor | None, rows: Tensor | None) -> Tensor | None:
    """v (4H,) with its g block multiplied by the tanh scale (``rows`` (4, 1)), or v itself at scale 1."""
    if v is None or rows is None:
        return v
    return (v.view(4, -1) * rows).view(-1)


def slices(T: int, B: int, reverse: bool) -> list[tuple[int, int]]:
    """The backward's time slices (ops.backward_slices) of an eighth of T steps, at most SLICE_ROWS rows each."""
    return backward_slices(T, B, reverse, min(SLICE_ROWS, B * -(-T // SLICES)))


def _bias(b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    if b_ih is None:
        return b_hh
    return b_ih if b_hh is None else b_ih + b_hh


def _forward(x, h0, c0, mask, reverse, w_ih, w_hh, b, a_ih, a_hh, a_c, b_c, keep: bool):
    """The recurrence. Returns S (T+1, B, H) of h in time order, c_T, and with ``keep`` the tensors the backward
    reads (a dict), else None."""
    T, B, D = x.shape
    H = w_hh.size(1)
    scale = tanh_scale(x)
    rows = None
    if scale != 1.0:  # tanh(a) = 2 sigmoid(2a) - 1: double the g rows' gains and shifts (see ops.tanh_scale)
        rows = torch.ones(4, 1, dtype=x.dtype, device=x.device)
        rows[2] = scale
    g_ih, g_hh, g_b = _scaled(a_ih, rows), _scaled(a_hh, rows), _scaled(b, rows)
    g_c, s_c = a_c * scale, b_c * scale
    P = linear(x.reshape(T * B, D), w_ih)  # (T*B, 4H) input products
    Z, mean_ih, rstd_ih = torch.native_layer_norm(P, (4 * H,), g_ih, g_b, EPS)  # (T*B, 4H); then activations
    Z = Z.view(T, B, 4 * H)
    P = P.view(T, B, 4 * H) if keep and KEEP_P else None  # else the backward recomputes it
    S = x.new_zeros(T + 1, B, H)  # zeros, not empty: see ops.py on page faults
    C = x.new_zeros(T + 1, B, H) if keep else None  # c in time order
    first = T if reverse else 0
    S[first] = h0
    if keep:
        C[first] = c0
    stats_hh, stats_c, qs = [], [], []  # per step: (mean, rstd) (B, 1) each, q (B, H)
    h, c = h0, c0
    for t in time_steps(T, reverse):
        cur = t if reverse else t + 1
        a = linear(h, w_hh)  # (B, 4H)
        z, mu, r = torch.native_layer_norm(a, (4 * H,), g_hh, None, EPS)  # (B, 4H)
        act = torch.sigmoid(z.add_(Z[t]), out=Z[t])  # i, f, o (and g at scale 2)
        if scale == 1.0:
            torch.tanh(z[:, 2 * H : 3 * H], out=act[:, 2 * H : 3 * H])
        else:
            act[:, 2 * H : 3 * H].mul_(2).sub_(1)  # g = 2 sigmoid(2 a_g) - 1
        i, f, g, o = act.chunk(4, 1)  # 4 x (B, H)
        k = torch.mul(f, c, out=C[cur] if keep else None).addcmul_(i, g)  # (B, H)
        u, mu_c, r_c = torch.native_layer_norm(k, (H,), g_c, s_c, EPS)  # (B, H)
        q = tanh_(u, scale)
        h_new = torch.mul(o, q, out=S[cur])
        if mask is not None:
            k = torch.where(mask[t], k, c, out=k)
            torch.where(mask[t], h_new, h, out=h_new)
        if keep:
            stats_hh.append((mu, r))
            stats_c.append((mu_c, r_c))
            qs.append(q)
        h, c = h_new, k
    if not keep:
        return S, c, None
    order = slice(None, None, -1) if reverse else slice(None)  # the lists are in visiting order; store in time order
    stats = [torch.stack(list(v)[order]) for v in (*zip(*stats_hh, strict=True), *zip(*stats_c, strict=True))]
    Q, p, forget = _factors_(Z, torch.stack(qs[order]), C, mask, reverse)
    del qs
    saved = {"stats_ih": (mean_ih.view(T, B, 1), rstd_ih.view(T, B, 1)), "C": C, "P": P}
    saved |= {"stats_hh": tuple(stats[:2]), "stats_c": tuple(stats[2:]), "Q": Q, "p": p, "forget": forget}
    return S, c, saved


def _ln_grads(d, v, mean, rstd, gain, need) -> tuple[Tensor | None, Tensor | None]:
    """LNback over all rows of d, v (..., N) with their mean, rstd (..., 1): (dL/dv, dL/da), each where ``need``
    asks for it, else None."""
    N = v.size(-1)
    rows = (d.reshape(-1, N), v.reshape(-1, N), (N,), mean.reshape(-1, 1), rstd.reshape(-1, 1), gain, None)
    return _ln_backward(*rows, [*need, False])[:2]


def _factors_(act: Tensor, q: Tensor, C: Tensor, mask: Tensor | None, reverse: bool):
    """lstm.py's ``_factors``, written over the activations act (T, B, 4H) instead of beside them (one (T, B, 4H)
    buffer less at the forward's peak): returns Q = [g i(1-i), c_{t-1} f(1-f), i(1-g^2), m q o(1-o)] in act's
    storage, p = m o (1 - q^2) and F = f (T, B, H)."""
    i, f, g, o = act.chunk(4, -1)  # 4 x (T, B, H) views
    forget = f.clone()
    p = torch.mul(q, q).neg_().add_(1).mul_(o)  # o (1 - q^2)
    o.addcmul_(o, o, value=-1).mul_(q)  # q o(1-o)
    f.addcmul_(f, f, value=-1).mul_(_previous(C, reverse))  # c_{t-1} f(1-f)
    di = torch.mul(g, g).neg_().add_(1).mul_(i)  # i (1-g^2), before i is overwritten
    i.addcmul_(i, i, value=-1).mul_(g)  # g i(1-i)
    g.copy_(di)
    if mask is not None:
        m = mask.to(act.dtype)
        p.mul_(m)
        o.mul_(m)
    return act, p, forget


_KEYS = ("C", "Q", "p", "forget", "P")


class LayerNormLSTMFunction(torch.autograd.Function):
    """(x (T, B, D), h0, c0 (B, H), mask (T, B, 1) bool or None, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh,
    a_c, b_c) -> (y, h_T, c_T)."""

    @staticmethod
    def forward(ctx, x, h0, c0, mask, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh, a_c, b_c):
        b = _bias(b_ih, b_hh)
        S, c_last, sv = _forward(x, h0, c0, mask, reverse, w_ih, w_hh, b, a_ih, a_hh, a_c, b_c, keep=True)
        m = None if mask is None else mask.to(x.dtype)  # (T, B, 1)
        y = _outputs(S, reverse)
        if m is not None:
            y = y * m
        ctx.reverse = reverse
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        stats = (*sv["stats_ih"], *sv["stats_hh"], *sv["stats_c"])
        ctx.save_for_backward(x, S, m, w_ih, w_hh, a_ih, a_hh, a_c, *(sv[k] for k in _KEYS), *stats)
        return y, (S[0] if reverse else S[-1]).clone(), c_last

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_last, dc_last):
        x, S, m, w_ih, w_hh, a_ih, a_hh, a_c, C, Q, p, forget, P_kept, *stats = ctx.saved_tensors
        mean_ih, rstd_ih, mean_hh, rstd_hh, mean_c, rstd_c = stats
        reverse = ctx.reverse
        T, B, D = x.shape
        H = w_hh.size(1)
        need = ctx.needs_input_grad
        dy = torch.zeros_like(p) if dy is None else dy if m is None else dy * m  # (T, B, H)
        gh = torch.zeros_like(p[0]) if dh_last is None else dh_last  # (B, H)
        gc = torch.zeros_like(p[0]) if dc_last is None else dc_last  # (B, H)
        K = _outputs(C, reverse)  # (T, B, H): the LN_c input at t (the frozen c on masked steps, where du = 0)
        h_prev = _previous(S, reverse)  # (T, B, H)
        spans = slices(T, B, reverse)  # each slice folded into the sums before the next
        n = max(t1 - t0 for t0, t1 in spans)
        dZ = x.new_zeros(n, B, 4 * H)  # dz of the slice's steps; zeros: see ops.py on page faults
        dU = x.new_zeros(n, B, H)  # du of the slice's steps
        A = x.new_zeros(n, B, 4 * H)  # the slice's A, each step's turned into its dA, then P for the input side
        dZ4, Q4 = dZ.view(n, B, 4, H), Q.view(T, B, 4, H)
        dx = x.new_empty(T, B, D) if need[0] else None
        sums: dict[str, Tensor] = {}

        def add(key: str, value: Tensor) -> None:
            sums[key] = sums[key].add_(value) if key in sums else value

        w_hh_t = w_hh.t().contiguous()  # (H, 4H)
        hh_mask = [True, need[10], False]  # dL/dA, and dL/da_hh step by step: A_t becomes dA_t in its place
        order = list(time_steps(T, not reverse))  # backward visits the steps in the opposite order
        gh = gh + dy[order[0]]
        s = 0
        for t0, t1 in spans:
            L = t1 - t0
            rows = slice(t0, t1)
            torch.mm(h_prev[rows].reshape(-1, H), w_hh.t(), out=A[:L].view(-1, 4 * H))  # A again, in one GEMM
            for _ in range(L):
                t = order[s]
                j = t - t0
                du = torch.mul(gh, p[t], out=dU[j])  # (B, H)
                dk = _ln_backward(du, K[t], (H,), mean_c[t], rstd_c[t], a_c, None, [True, False, False])[0]
                dk = dk.add_(gc) if m is None else dk.addcmul_(gc, m[t])  # (B, H)
                torch.mul(dk.unsqueeze(1), Q4[t, :, :3], out=dZ4[j, :, :3])  # di, df, dg
                torch.mul(gh, Q4[t, :, 3], out=dZ4[j, :, 3])  # do
                da, ga, _ = _ln_backward(dZ[j], A[j], (4 * H,), mean_hh[t], rstd_hh[t], a_hh, None, hh_mask)
                if need[10]:
                    add("a_hh", ga)
                A[j] = da  # (B, 4H); A_t is not read again
                carry = dy[order[s + 1]] if s + 1 < T else torch.zeros_like(gh)  # (B, H)
                if m is None:
                    gc = dk * forget[t]
                else:
                    nm = 1 - m[t]  # (B, 1): rows past their length pass the gradients through
                    gc = torch.mul(dk, forget[t]).addcmul_(nm, gc)
                    carry = torch.addcmul(carry, nm, gh)
                gh = linear_add(da, carry, w_hh_t)  # (B, H)
                s += 1
            dz = dZ[:L].view(-1, 4 * H)  # (L*B, 4H)
            if need[6]:
                add("w_hh", weight_grad(A[:L].view(-1, 4 * H), h_prev[rows].reshape(-1, H)))
            if need[0] or need[5] or need[9]:
                if P_kept is not None:
                    P = P_kept[rows].view(-1, 4 * H)
                else:  # (L*B, 4H), over dA
                    P = torch.mm(x[rows].reshape(-1, D), w_ih.t(), out=A[:L].view(-1, 4 * H))
                dP, da_ih = _ln_grads(dz, P, mean_ih[rows], rstd_ih[rows], a_ih, [need[0] or need[5], need[9]])
                if dx is not None:
                    torch.mm(dP, w_ih, out=dx[rows].view(-1, D))
                if need[5]:
                    add("w_ih", weight_grad(dP, x[rows].reshape(-1, D)))
                if need[9]:
                    add("a_ih", da_ih)
            if need[7] or need[8]:
                add("b", dz.sum(0))
            if need[11]:
                add("a_c", _ln_grads(dU[:L], K[rows], mean_c[rows], rstd_c[rows], a_c, [False, True])[1])
            if need[12]:
                add("b_c", dU[:L].sum((0, 1)))
        db = sums.get("b")
        db_ih = db if ctx.has_bias[0] else None
        db_hh = None if db is None or not ctx.has_bias[1] else db.clone() if db_ih is not None else db
        weights = (sums.get(k) for k in ("w_ih", "w_hh"))
        gains = (sums.get(k) for k in ("a_ih", "a_hh", "a_c", "b_c"))
        return dx, gh, gc, None, None, *weights, db_ih, db_hh, *gains


def layernorm_lstm_layer(x, h0, c0, mask, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh, a_c, b_c):
    """One direction of one LayerNorm LSTM layer on time-major x (T, B, D): -> (y (T, B, H), h_T, c_T (B, H)).

    ``a_ih``, ``a_hh`` (4H,) are the products' LN gains, ``a_c``, ``b_c`` (H,) the cell LN's gain and shift.
    """
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh, a_c, b_c)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return LayerNormLSTMFunction.apply(x, h0, c0, mask, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh, a_c, b_c)
    b = _bias(b_ih, b_hh)
    S, c_last, _ = _forward(x, h0, c0, mask, reverse, w_ih, w_hh, b, a_ih, a_hh, a_c, b_c, keep=False)
    y = _outputs(S, reverse)
    return (y if mask is None else y * mask), (S[0] if reverse else S[-1]), c_last
