"""Fused LayerNorm LSTM layer (cells/layernorm.py): one direction of one layer, forward and hand-written BPTT.

Math (gate order i, f, g, o; m_t (B, 1) is 1 while t is inside a row's length)::

    P_t = x_t W_ih^T                  # (B, 4H), all steps in one GEMM
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

Two loops compute this. Where the C++ loops are built (extension.py), the steps run there (csrc/layernorm_cells.h,
on recurrence.cpp's step-loop skeleton): per step the product, then per row both products' LayerNorms, the
gates and the cell's LN; in the backward per row the gates again, the cell LN's backward, dz, and dP and dA, with
the gains' and the bias's gradients summed in C++. The training forward keeps x, h, c, P, A and each row's six LN
statistics, and the backward recomputes the gates from them (cheaper in memory than keeping them). Here remain
the products over whole slices: dx and the weight gradients.

The Python loop (no compiler, or off CPU) runs the input side's LN once for all steps before the loop, with ATen's
``native_layer_norm`` and ``native_layer_norm_backward`` for the per-step LayerNorms; it keeps the factors of dz
that do not depend on gh or gc (lstm.py's ``Q``, with q for tanh(c)) instead of A, and recomputes each slice's A
in one GEMM in the backward (see KEEP_P). With ops.tanh_scale the gains (and shifts) of the g rows and of the
cell's LN are doubled, so one sigmoid serves all four gates and the products stay unscaled.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.cells.layernorm import EPS
from rnnkit.kernels.extension import loaded, step_weight, wanted
from rnnkit.kernels.lstm import _outputs, _previous  # the same state layout as LSTM
from rnnkit.kernels.ops import backward_slices, linear, linear_add, tanh_, tanh_scale, time_steps, weight_grad

__all__ = ["LayerNormLSTMFunction", "layernorm_lstm_layer", "slices"]

_ln_backward = torch.ops.aten.native_layer_norm_backward.default

# The backward runs over slices of the time axis, each folded into dx and the parameter gradients before the
# next, so its buffers hold a slice only: an eighth of the sequence, at most SLICE_ROWS rows (steps x batch) for
# the Python loop (buffers of 9H per row), CPP_SLICE_ROWS for the C++ one (8H per row: dP and dA), whose weight
# gradients then sum over more rows per GEMM (3 % of a train step at 32x128x256, benchmarks/KERNELS.md).
# The input products P are kept (KEEP_P) or recomputed slice by slice (one GEMM over the slice); so are the hidden
# products A in the Python loop, while the C++ loop keeps A and recomputes the gates instead. The step is bound by
# its GEMMs: each recomputed product adds one to the six a training step needs; benchmarks/layernorm_fused.py
# measures time and memory.
SLICES = 8
SLICE_ROWS = 256
CPP_SLICE_ROWS = 1024
KEEP_P = True


def _scaled(v: Tensor | None, rows: Tensor | None) -> Tensor | None:
    """v (4H,) with its g block multiplied by the tanh scale (``rows`` (4, 1)), or v itself at scale 1."""
    if v is None or rows is None:
        return v
    return (v.view(4, -1) * rows).view(-1)


def slices(T: int, B: int, reverse: bool, rows: int | None = None) -> list[tuple[int, int]]:
    """The backward's time slices (ops.backward_slices) of an eighth of T steps, at most ``rows`` (default
    SLICE_ROWS) rows each."""
    return backward_slices(T, B, reverse, min(SLICE_ROWS if rows is None else rows, B * -(-T // SLICES)))


def _bias(b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    if b_ih is None:
        return b_hh
    return b_ih if b_hh is None else b_ih + b_hh


def _forward(x, h0, c0, mask, reverse, w_ih, w_hh, b, a_ih, a_hh, a_c, b_c, keep: bool):
    """The recurrence. Returns S (T+1, B, H) of h in time order, c_T, and with ``keep`` the tensors the backward
    reads (a dict: C, P, stats (6, T, B, 1) = [mean, rstd] of P, A and k, and A from the C++ loop or Q, p, forget
    from the Python one), else None."""
    T, B, D = x.shape
    H = w_hh.size(1)
    scale = tanh_scale(x)
    rows = None
    if scale != 1.0:  # tanh(a) = 2 sigmoid(2a) - 1: double the g rows' gains and shifts (see ops.tanh_scale)
        rows = torch.ones(4, 1, dtype=x.dtype, device=x.device)
        rows[2] = scale
    g_ih, g_hh, g_b = _scaled(a_ih, rows), _scaled(a_hh, rows), _scaled(b, rows)
    g_c, s_c = a_c * scale, b_c * scale
    P = linear(x.reshape(T * B, D), w_ih).view(T, B, 4 * H)  # input products
    ext = wanted(x)
    # every step writes its slot; zeros for the Python loop (see ops.py on page faults)
    new = x.new_empty if ext is not None else x.new_zeros
    S = new(T + 1, B, H)
    C = new(T + 1, B, H) if keep else None  # c in time order
    first = T if reverse else 0
    S[first] = h0
    if keep:
        C[first] = c0
    if ext is not None:  # the same loop in C++ (extension.py): with keep it fills C, A and stats
        m = None if mask is None else mask.to(x.dtype)
        A, stats = (x.new_empty(T, B, 4 * H), x.new_empty(6, T, B, 1)) if keep else (None, None)
        weights = (g_ih, g_b, g_hh, g_c, s_c)
        c = ext.layernorm_lstm_forward(P, S, c0, C, A, stats, m, reverse, *step_weight(w_hh, B), *weights, EPS)
        kept = {"A": A, "stats": stats}
    else:
        Z, mean_ih, rstd_ih = torch.native_layer_norm(P.view(-1, 4 * H), (4 * H,), g_ih, g_b, EPS)  # (T*B, 4H)
        c, (Q, p, forget, stats) = _loop(
            h0, c0, mask, reverse, w_hh, Z.view(T, B, 4 * H), S, C, g_hh, g_c, s_c, scale, keep
        )
        if keep:
            stats = torch.cat([mean_ih.view(1, T, B, 1), rstd_ih.view(1, T, B, 1), stats])
        kept = {"Q": Q, "p": p, "forget": forget, "stats": stats}
    if not keep:
        return S, c, None
    return S, c, kept | {"C": C, "P": P if KEEP_P else None}


def _loop(h0, c0, mask, reverse, w_hh, Z, S, C, g_hh, g_c, s_c, scale, keep: bool):
    """The forward's Python loop over Z = LN(P) + b (T, B, 4H), filling S and with ``keep`` C; returns c_T and with
    ``keep`` (Q, p, F, stats (4, T, B, 1) = [mean, rstd] of A and k), else Nones."""
    T, H = Z.size(0), S.size(2)
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
        return c, (None,) * 4
    order = slice(None, None, -1) if reverse else slice(None)  # the lists are in visiting order; store in time order
    stats = [torch.stack(list(v)[order]) for v in (*zip(*stats_hh, strict=True), *zip(*stats_c, strict=True))]
    Q, p, forget = _factors_(Z, torch.stack(qs[order]), C, mask, reverse)
    return c, (Q, p, forget, torch.stack(stats))


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


_SAVED = ("x", "S", "m", "w_ih", "w_hh", "b", "a_ih", "a_hh", "a_c", "b_c", "C", "P", "stats", "A", "Q", "p", "forget")
_SUMS = ("a_ih", "a_hh", "b", "a_c", "b_c")  # the gradient sums of the steps


class _CppSteps:
    """The backward's steps in C++ (extension.py) on what the C++ forward kept, slice by slice."""

    def __init__(self, sv: dict, reverse: bool, n: int):
        x, H = sv["x"], sv["w_hh"].size(1)
        self.sv, self.reverse, self.ext = sv, reverse, loaded()
        self.w = step_weight(sv["w_hh"].t(), x.size(1))  # gh_{t-1} gets dA_t W_hh
        self.dP, self.dA = x.new_empty(n, x.size(1), 4 * H), x.new_empty(n, x.size(1), 4 * H)
        self.totals = x.new_zeros(14 * H)  # [da_ih, da_hh, db, da_c, db_c], added into slice by slice

    def __call__(self, t0: int, t1: int, P: Tensor, dy: Tensor, gh: Tensor, gc: Tensor):
        """The steps of [t0, t1) with the slice's P (L, B, 4H): returns gh, gc flowing into the slice before and the
        slice's dP, dA (L*B, 4H)."""
        sv, L, rows = self.sv, t1 - t0, slice(t0, t1)
        m = None if sv["m"] is None else sv["m"][rows]
        kept = (P, sv["C"][t0 : t1 + 1], sv["A"][rows], sv["stats"][:, rows], dy[rows], m, self.reverse, *self.w)
        gains = tuple(sv[k] for k in ("a_ih", "b", "a_hh", "a_c", "b_c"))
        grads = (gh, gc, self.dP[:L], self.dA[:L], self.totals)
        gh, gc = self.ext.layernorm_lstm_backward(*kept, *gains, *grads)
        return gh, gc, self.dP[:L].view(-1, self.dP.size(-1)), self.dA[:L].view(-1, self.dA.size(-1))

    def sums(self) -> dict[str, Tensor]:
        H = self.sv["w_hh"].size(1)
        return dict(zip(_SUMS, self.totals.split([4 * H, 4 * H, 4 * H, H, H]), strict=True))


class _PythonSteps:
    """The backward's steps in Python on what the Python forward kept, slice by slice: A recomputed in one GEMM,
    ATen's LayerNorm backward per step and per slice."""

    def __init__(self, sv: dict, reverse: bool, n: int):
        x, H = sv["x"], sv["w_hh"].size(1)
        B = x.size(1)
        self.sv, self.reverse, self.totals = sv, reverse, {}
        self.dZ, self.dU = x.new_zeros(n, B, 4 * H), x.new_zeros(n, B, H)  # zeros: see ops.py on page faults
        self.dA = x.new_zeros(n, B, 4 * H)  # the slice's A, each step's turned into its dA
        self.K = _outputs(sv["C"], reverse)  # (T, B, H): the LN_c input at t (the frozen c on masked steps: du = 0)
        self.w_hh_t = sv["w_hh"].t().contiguous()  # (H, 4H)

    def _add(self, key: str, value: Tensor) -> None:
        self.totals[key] = self.totals[key].add_(value) if key in self.totals else value

    def __call__(self, t0: int, t1: int, P: Tensor, dy: Tensor, gh: Tensor, gc: Tensor):
        """As _CppSteps.__call__."""
        sv, K, L, rows = self.sv, self.K, t1 - t0, slice(t0, t1)
        m, p, forget, a_hh, a_c = (sv[k] for k in ("m", "p", "forget", "a_hh", "a_c"))
        mean_ih, rstd_ih, mean_hh, rstd_hh, mean_c, rstd_c = sv["stats"]  # (T, B, 1) each
        B, H = K.size(1), K.size(2)
        dZ, dU, dA = self.dZ, self.dU, self.dA
        dZ4, Q4 = dZ.view(-1, B, 4, H), sv["Q"].view(-1, B, 4, H)
        h_prev = _previous(sv["S"], self.reverse)[rows]
        torch.mm(h_prev.reshape(-1, H), sv["w_hh"].t(), out=dA[:L].view(-1, 4 * H))  # A again, in one GEMM
        order = [t0 + j for j in time_steps(L, not self.reverse)]  # backward visits the steps backwards
        gh = gh + dy[order[0]]
        for s, t in enumerate(order):
            j = t - t0
            du = torch.mul(gh, p[t], out=dU[j])  # (B, H)
            dk = _ln_backward(du, K[t], (H,), mean_c[t], rstd_c[t], a_c, None, [True, False, False])[0]
            dk = dk.add_(gc) if m is None else dk.addcmul_(gc, m[t])  # (B, H)
            torch.mul(dk.unsqueeze(1), Q4[t, :, :3], out=dZ4[j, :, :3])  # di, df, dg
            torch.mul(gh, Q4[t, :, 3], out=dZ4[j, :, 3])  # do
            da, ga, _ = _ln_backward(dZ[j], dA[j], (4 * H,), mean_hh[t], rstd_hh[t], a_hh, None, [True, True, False])
            self._add("a_hh", ga)
            dA[j] = da  # (B, 4H); A_t is not read again
            carry = dy[order[s + 1]] if s + 1 < L else torch.zeros_like(gh)  # (B, H)
            if m is None:
                gc = dk * forget[t]
            else:
                nm = 1 - m[t]  # (B, 1): rows past their length pass the gradients through
                gc = torch.mul(dk, forget[t]).addcmul_(nm, gc)
                carry = torch.addcmul(carry, nm, gh)
            gh = linear_add(da, carry, self.w_hh_t)  # (B, H)
        dz = dZ[:L].view(-1, 4 * H)  # (L*B, 4H)
        dP, da_ih = _ln_grads(dz, P, mean_ih[rows], rstd_ih[rows], sv["a_ih"], [True, True])
        self._add("a_ih", da_ih)
        self._add("b", dz.sum(0))
        self._add("a_c", _ln_grads(dU[:L], K[rows], mean_c[rows], rstd_c[rows], a_c, [False, True])[1])
        self._add("b_c", dU[:L].sum((0, 1)))
        return gh, gc, dP, dA[:L].view(-1, 4 * H)

    def sums(self) -> dict[str, Tensor]:
        return self.totals


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
        sv |= {"x": x, "S": S, "m": m, "w_ih": w_ih, "w_hh": w_hh, "b": b}
        sv |= {"a_ih": a_ih, "a_hh": a_hh, "a_c": a_c, "b_c": b_c}
        ctx.save_for_backward(*(sv.get(k) for k in _SAVED))  # the keys the loop that ran did not fill: None
        return y, (S[0] if reverse else S[-1]).clone(), c_last

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_last, dc_last):
        sv = dict(zip(_SAVED, ctx.saved_tensors, strict=True))
        x, S, m, w_ih = sv["x"], sv["S"], sv["m"], sv["w_ih"]
        reverse, need = ctx.reverse, ctx.needs_input_grad
        T, B, D = x.shape
        H = S.size(2)
        dy = torch.zeros_like(S[1:]) if dy is None else dy if m is None else dy * m  # (T, B, H)
        gh = torch.zeros_like(S[0]) if dh_last is None else dh_last  # (B, H)
        gc = torch.zeros_like(S[0]) if dc_last is None else dc_last  # (B, H)
        h_prev = _previous(S, reverse)  # (T, B, H)
        cpp = sv["A"] is not None  # the forward ran in C++: so do the steps
        spans = slices(T, B, reverse, CPP_SLICE_ROWS if cpp else None)  # each folded into the sums before the next
        n = max(t1 - t0 for t0, t1 in spans)
        steps = (_CppSteps if cpp else _PythonSteps)(sv, reverse, n)
        P_buf = x.new_empty(n, B, 4 * H) if sv["P"] is None else None  # the slice's P, recomputed
        dx = x.new_empty(T, B, D) if need[0] else None
        dw_ih = dw_hh = None
        for t0, t1 in spans:
            L, rows = t1 - t0, slice(t0, t1)
            P = (
                sv["P"][rows]
                if P_buf is None
                else torch.mm(x[rows].reshape(-1, D), w_ih.t(), out=P_buf[:L].view(-1, 4 * H))
            )
            gh, gc, dP, dA = steps(t0, t1, P.view(L, B, 4 * H), dy, gh, gc)  # (L*B, 4H) each
            if dx is not None:
                torch.mm(dP, w_ih, out=dx[rows].view(-1, D))
            if need[5]:
                dw = weight_grad(dP, x[rows].reshape(-1, D))
                dw_ih = dw if dw_ih is None else dw_ih.add_(dw)
            if need[6]:
                dw = weight_grad(dA, h_prev[rows].reshape(-1, H))
                dw_hh = dw if dw_hh is None else dw_hh.add_(dw)
        sums = steps.sums()
        db = sums["b"]
        db_ih = db if ctx.has_bias[0] and need[7] else None
        db_hh = db.clone() if ctx.has_bias[1] and need[8] else None
        gains = (sums[k] if need[9 + i] else None for i, k in enumerate(("a_ih", "a_hh", "a_c", "b_c")))
        return dx, gh, gc, None, None, dw_ih, dw_hh, db_ih, db_hh, *gains


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
