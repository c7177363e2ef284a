"""Fused LayerNorm GRU layer (cells/layernorm.py): one direction of one layer, forward and hand-written BPTT.

Math (gate order r, z, n as in torch.nn.GRU; m_t (B, 1) is 1 while t is inside a row's length)::

    P_t = x_t W_ih^T                                  # (B, 3H), all steps in one GEMM
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
LN is over all 3H units, so reordering them changes nothing but the order. The two loops are those of
layernorm_lstm.py: where the C++ loops are built (extension.py) the steps run there (csrc/layernorm_cells.h), with
both LayerNorms per row, keeping A and each row's LN statistics and recomputing the gates in the backward, which
also gives dP, dA and the gains' and biases' gradients; the Python loop keeps gru.py's factors (``_factors``),
uses ATen's LayerNorms and recomputes A slice by slice (P too without KEEP_P). ops.tanh_scale doubles the n rows'
gains and shifts.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.cells.layernorm import EPS
from rnnkit.kernels import layernorm_lstm  # its slicing, read at each call
from rnnkit.kernels.extension import loaded, step_weight, wanted
from rnnkit.kernels.gru import _factors, _outputs, _previous, _to_hh, _to_ih  # gru.py's layout and factors
from rnnkit.kernels.layernorm_lstm import _ln_grads
from rnnkit.kernels.ops import linear, linear_add, tanh_, tanh_scale, time_steps, weight_grad

__all__ = ["LayerNormGRUFunction", "layernorm_gru_layer"]

# As in layernorm_lstm.py: P kept (else recomputed in the backward).
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
    """The recurrence on reordered parameters. Returns S (T+1, B, H) in time order and, with ``keep``, what the
    backward reads (a dict: P, stats (4, T, B, 1) = [mean, rstd] of P and A, and A from the C++ loop or Q, zc
    (gru._factors) from the Python one), else None."""
    T, B, D = x.shape
    H = w_hh.size(1)
    scale = tanh_scale(x)  # the n rows are fed 2a: their gains and shifts doubled (LN undoes a scaled W)
    g_ih, s_ih = _scale_block(a_ih, 0, scale), _scale_block(b_ih, 0, scale)
    g_hh, s_hh = _scale_block(a_hh, 2, scale), _scale_block(b_hh, 2, scale)
    P = linear(x.reshape(T * B, D), w_ih).view(T, B, 3 * H)  # input products
    ext = wanted(x)
    # every step writes its slot; zeros for the Python loop (see ops.py on page faults)
    S = x.new_empty(T + 1, B, H) if ext is not None else x.new_zeros(T + 1, B, H)
    S[T if reverse else 0] = h0
    if ext is not None:  # the same loop in C++ (extension.py): with keep it fills A and stats
        m = None if mask is None else mask.to(x.dtype)
        A, stats = (x.new_empty(T, B, 3 * H), x.new_empty(4, T, B, 1)) if keep else (None, None)
        ext.layernorm_gru_forward(P, S, A, stats, m, reverse, *step_weight(w_hh, B), g_ih, s_ih, g_hh, s_hh, EPS)
        kept = {"A": A, "stats": stats}
    else:
        Z, mean_ih, rstd_ih = torch.native_layer_norm(P.view(-1, 3 * H), (3 * H,), g_ih, s_ih, EPS)
        Q, zc, stats = _loop(h0, mask, reverse, w_hh, Z.view(T, B, 3 * H), S, g_hh, s_hh, scale, keep)
        if keep:
            stats = torch.cat([mean_ih.view(1, T, B, 1), rstd_ih.view(1, T, B, 1), stats])
        kept = {"Q": Q, "zc": zc, "stats": stats}
    return S, (kept | {"P": P if KEEP_P else None} if keep else None)


def _loop(h0, mask, reverse, w_hh, Z, S, g_hh, s_hh, scale, keep: bool):
    """The forward's Python loop over Z = LN(P) + b_ih (T, B, 3H) = [gi_n, gi_z, gi_r], activated in place,
    filling S; returns with ``keep`` (Q, zc, stats (2, T, B, 1) = [mean, rstd] of A), else Nones."""
    T, H = Z.size(0), S.size(2)
    ghn = torch.zeros_like(S[1:]) if keep else None  # scale * gh_n: copied, so each step's (B, 3H) gh is freed
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
        return None, None, None
    order = slice(None, None, -1) if reverse else slice(None)  # the lists are in visiting order; store in time order
    Q, zc = _factors(Z, ghn.div_(scale), S, mask, reverse)
    return Q, zc, torch.stack([torch.stack(list(v)[order]) for v in zip(*stats, strict=True)])


_SAVED = ("x", "S", "m", "w_ih", "w_hh", "b_ih", "b_hh", "a_ih", "a_hh", "P", "stats", "A", "Q", "zc")
_SUMS = ("a_ih", "b_ih", "a_hh", "b_hh")  # the gradient sums of the steps


class _CppSteps:
    """The backward's steps in C++ (extension.py) on what the C++ forward kept, slice by slice."""

    def __init__(self, sv: dict, reverse: bool, n: int):
        x, H = sv["x"], sv["w_hh"].size(1)
        B = x.size(1)
        self.sv, self.reverse, self.ext = sv, reverse, loaded()
        self.w = step_weight(sv["w_hh"].t(), B)  # g_{t-1} gets dA_t W_hh
        self.dP, self.dA = x.new_empty(n, B, 3 * H), x.new_empty(n, B, 3 * H)
        self.totals = x.new_zeros(12 * H)  # [da_ih, db_ih, da_hh, db_hh], added into slice by slice

    def __call__(self, t0: int, t1: int, P: Tensor, dy: Tensor, g: Tensor):
        """The steps of [t0, t1) with the slice's P (L, B, 3H): returns g flowing into the slice before and the
        slice's dP, dA (L*B, 3H)."""
        sv, L, rows = self.sv, t1 - t0, slice(t0, t1)
        m = None if sv["m"] is None else sv["m"][rows]
        kept = (P, sv["S"][t0 : t1 + 1], sv["A"][rows], sv["stats"][:, rows], m, dy[rows], self.reverse, *self.w)
        gains = tuple(sv[k] for k in ("a_ih", "b_ih", "a_hh", "b_hh"))
        g = self.ext.layernorm_gru_backward(*kept, *gains, g.contiguous(), self.dP[:L], self.dA[:L], self.totals)
        return g, self.dP[:L].view(-1, self.dP.size(-1)), self.dA[:L].view(-1, self.dA.size(-1))

    def sums(self) -> dict[str, Tensor]:
        return dict(zip(_SUMS, self.totals.chunk(4), strict=True))


class _PythonSteps:
    """The backward's steps in Python on what the Python forward kept, slice by slice: A recomputed in one GEMM,
    ATen's LayerNorm backward per step and per slice."""

    def __init__(self, sv: dict, reverse: bool, n: int):
        x, H = sv["x"], sv["w_hh"].size(1)
        B = x.size(1)
        self.sv, self.reverse, self.totals = sv, reverse, {}
        self.dG = x.new_zeros(n, B, 4 * H)  # [dn, dz, dr, dgh_n] of the slice's steps; zeros: see ops.py
        self.dA = x.new_zeros(n, B, 3 * H)  # the slice's A, each step's turned into its dA
        self.w_hh_t = sv["w_hh"].t().contiguous()  # (H, 3H)

    def _add(self, key: str, value: Tensor) -> None:
        self.totals[key] = self.totals[key].add_(value) if key in self.totals else value

    def __call__(self, t0: int, t1: int, P: Tensor, dy: Tensor, g: Tensor):
        """As _CppSteps.__call__."""
        sv, L, rows = self.sv, t1 - t0, slice(t0, t1)
        Q, zc, a_hh = sv["Q"], sv["zc"], sv["a_hh"]  # the mask is in Q and zc
        mean_ih, rstd_ih, mean_hh, rstd_hh = sv["stats"]  # (T, B, 1) each
        B, H = zc.size(1), zc.size(2)
        dG, dA = self.dG, self.dA
        dG4, Q4 = dG.view(-1, B, 4, H), Q.view(-1, B, 4, H)
        h_prev = _previous(sv["S"], self.reverse)[rows]
        torch.mm(h_prev.reshape(-1, H), sv["w_hh"].t(), out=dA[:L].view(-1, 3 * H))  # A again, in one GEMM
        order = [t0 + j for j in time_steps(L, not self.reverse)]  # backward visits the steps backwards
        g = g + dy[order[0]]
        for s, t in enumerate(order):
            j = t - t0
            torch.mul(g.unsqueeze(1), Q4[t, :, :2], out=dG4[j, :, :2])  # dn, dz
            torch.mul(dG4[j, :, :1], Q4[t, :, 2:], out=dG4[j, :, 2:])  # dr, dgh_n
            da, ga, _ = _ln_backward(
                dG[j, :, H:], dA[j], (3 * H,), mean_hh[t], rstd_hh[t], a_hh, None, [True] * 2 + [False]
            )
            self._add("a_hh", ga)
            dA[j] = da  # (B, 3H); A_t is not read again
            carry = dy[order[s + 1]] if s + 1 < L else torch.zeros_like(g)  # (B, H)
            carry = torch.addcmul(carry, g, zc[t])
            g = linear_add(da, carry, self.w_hh_t)  # (B, H)
        gi, gh = dG[:L, :, : 3 * H].reshape(-1, 3 * H), dG[:L, :, H:].reshape(-1, 3 * H)  # (L*B, 3H) each
        dP, da_ih = _ln_grads(gi, P, mean_ih[rows], rstd_ih[rows], sv["a_ih"], [True, True])
        self._add("a_ih", da_ih)
        self._add("b_ih", gi.sum(0))
        self._add("b_hh", gh.sum(0))
        return g, dP, dA[:L].view(-1, 3 * H)

    def sums(self) -> dict[str, Tensor]:
        return self.totals


class LayerNormGRUFunction(torch.autograd.Function):
    """(x (T, B, D), h0 (B, H), mask (T, B, 1) bool or None, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh)
    -> (y, h_T)."""

    @staticmethod
    def forward(ctx, x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh):
        w_ih, b_ih, a_ih = _to_ih(w_ih), _to_ih(b_ih), _to_ih(a_ih)
        w_hh, b_hh, a_hh = _to_hh(w_hh), _to_hh(b_hh), _to_hh(a_hh)
        S, sv = _forward(x, h0, mask, reverse, w_ih, w_hh, b_ih, b_hh, a_ih, a_hh, keep=True)
        m = None if mask is None else mask.to(x.dtype)  # (T, B, 1)
        y = _outputs(S, reverse)
        if m is not None:
            y = y * m
        ctx.reverse = reverse
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        sv |= {"x": x, "S": S, "m": m, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}
        sv |= {"a_ih": a_ih, "a_hh": a_hh}
        ctx.save_for_backward(*(sv.get(k) for k in _SAVED))  # the keys the loop that ran did not fill: None
        return y, (S[0] if reverse else S[-1]).clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_last):
        sv = dict(zip(_SAVED, ctx.saved_tensors, strict=True))
        x, S, m, w_ih = sv["x"], sv["S"], sv["m"], sv["w_ih"]
        reverse, need = ctx.reverse, ctx.needs_input_grad
        T, B, D = x.shape
        H = S.size(2)
        dy = torch.zeros_like(S[1:]) if dy is None else dy if m is None else dy * m  # (T, B, H)
        g = torch.zeros_like(S[0]) if dh_last is None else dh_last  # (B, H)
        h_prev = _previous(S, reverse)  # (T, B, H)
        cpp = sv["A"] is not None  # the forward ran in C++: so do the steps
        rows_cap = layernorm_lstm.CPP_SLICE_ROWS if cpp else None
        spans = layernorm_lstm.slices(T, B, reverse, rows_cap)  # each folded into the sums before the next
        n = max(t1 - t0 for t0, t1 in spans)
        steps = (_CppSteps if cpp else _PythonSteps)(sv, reverse, n)
        P_buf = x.new_empty(n, B, 3 * H) if sv["P"] is None else None  # the slice's P, recomputed
        dx = x.new_empty(T, B, D) if need[0] else None
        dw_ih = dw_hh = None
        for t0, t1 in spans:
            L, rows = t1 - t0, slice(t0, t1)
            P = (
                sv["P"][rows]
                if P_buf is None
                else torch.mm(x[rows].reshape(-1, D), w_ih.t(), out=P_buf[:L].view(-1, 3 * H))
            )
            g, dP, dA = steps(t0, t1, P.view(L, B, 3 * H), dy, g)  # (L*B, 3H) each
            if dx is not None:
                torch.mm(dP, w_ih, out=dx[rows].view(-1, D))
            if need[4]:
                dw = weight_grad(dP, x[rows].reshape(-1, D))
                dw_ih = dw if dw_ih is None else dw_ih.add_(dw)
            if need[5]:
                dw = weight_grad(dA, h_prev[rows].reshape(-1, H))
                dw_hh = dw if dw_hh is None else dw_hh.add_(dw)
        sums = steps.sums()
        db_ih = _to_ih(sums["b_ih"]) if ctx.has_bias[0] and need[6] else None  # back to (r, z, n)
        db_hh = _to_hh(sums["b_hh"]) if ctx.has_bias[1] and need[7] else None
        da_ih = _to_ih(sums["a_ih"]) if need[8] else None
        da_hh = _to_hh(sums["a_hh"]) if need[9] else None
        return dx, g, None, None, _to_ih(dw_ih), _to_hh(dw_hh), db_ih, db_hh, da_ih, da_hh


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
