"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): gates that read the input only.

Their gates and candidate depend on x_t alone, so each step is a linear recurrence ``h_t = a_t * h_{t-1} + b_t``
whose coefficients are known for all t before the first step. A whole sequence is then one parallel scan
instead of T dependent steps. The scan runs in log space (the paper's appendix, after Heinsen 2023)::

    A_t = sum_{s<=t} log a_s                                  (torch.cumsum)
    h_t = exp(A_t) * h_0 + exp(A_t + log sum_{s<=t} exp(log b_s - A_s))     (torch.logcumsumexp)

The scan restarts every ``SCAN_CHUNK`` steps from the last h, which bounds its rounding error. It needs b_t > 0:
hence the candidate ``g`` below, positive everywhere (``g(a) = a + 0.5`` for a >= 0, ``sigmoid(a)`` below), whose
log is finite. The h_0 term is kept apart, so h_0 may have any sign. Every log is taken in a form that does not
overflow (``log sigmoid(a) = -softplus(-a)``), so saturated gates stay finite.

Two forms of each cell, proven equal by tests/test_cell_table.py:

- ``step``: one step from the equations (the ``"loop"`` backend and generation);
- ``sequence``: the scan over time-major x (the ``"fused"`` backend); autograd gives its backward.

Padded batches: the scan is causal, so the steps past a row's length cannot change its earlier ones; they are
zeroed in the output, and the final state is read at each row's last valid step (``h[lengths - 1]``), which is the
loop's frozen state. The reverse direction flips each row within its own length first (``flip_padded``), so it
too starts at each row's last valid step. Masking inside the scan instead (a = 1, b = 0 past the length) would
put log 0 = -inf into ``logcumsumexp``, whose backward is NaN where a prefix is all -inf.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells.spec import CellSpec, NumpyCell, register
from rnnkit.sequence import flip_padded

__all__ = [
    "MIN_GRU",
    "MIN_LSTM",
    "SCAN_CHUNK",
    "chunked_log_scan",
    "g",
    "log_g",
    "log_scan",
    "min_gru_step",
    "min_lstm_step",
]


def g(a: Tensor) -> Tensor:
    """The positive candidate activation: a + 0.5 for a >= 0, sigmoid(a) below (continuous at 0)."""
    return torch.where(a >= 0, a + 0.5, torch.sigmoid(a))


def log_g(a: Tensor) -> Tensor:
    """log g(a), finite for every a (relu keeps the unused branch's log away from negative numbers)."""
    return torch.where(a >= 0, torch.log(F.relu(a) + 0.5), -F.softplus(-a))


def min_gru_step(x: Tensor, h: Tensor, w) -> tuple[Tensor, Tensor]:
    k_z, k_h = F.linear(x, w["weight_ih"], w.get("bias_ih")).chunk(2, dim=-1)  # 2 x (B, H)
    z = torch.sigmoid(k_z)
    h_tilde = g(k_h)
    h = (1 - z) * h + z * h_tilde
    return h, h


def min_lstm_step(x: Tensor, h: Tensor, w) -> tuple[Tensor, Tensor]:
    k_f, k_i, k_h = F.linear(x, w["weight_ih"], w.get("bias_ih")).chunk(3, dim=-1)  # 3 x (B, H)
    log_f = F.logsigmoid(k_f)
    log_i = F.logsigmoid(k_i)
    f_ = torch.sigmoid(log_f - log_i)  # f / (f + i), without 0 / 0 when both gates saturate at 0
    i_ = torch.sigmoid(log_i - log_f)  # i / (f + i)
    h_tilde = g(k_h)
    h = f_ * h + i_ * h_tilde
    return h, h


# --- the parallel scan --------------------------------------------------------------------------------------


# Steps per scan: the scan is exact in exact arithmetic, but A_t + logcumsumexp(log b - A)_t adds two numbers of
# size |A_t|, which grows with t, so its rounding error does too. Restarting the scan every SCAN_CHUNK steps from
# the last h keeps |A_t| small, at the cost of T / SCAN_CHUNK sequential steps (dozens, not thousands); the float32
# error at T = 2000 is bounded by tests/test_cell_table.py.
SCAN_CHUNK = 64


def log_scan(log_a: Tensor, log_b: Tensor, h0: Tensor) -> Tensor:
    """All h_t of ``h_t = a_t * h_{t-1} + b_t`` (t = 0..T-1, starting from h0 (B, H)) from log a, log b (T, B, H)."""
    A = torch.cumsum(log_a, dim=0)  # (T, B, H)  log of a_1 * ... * a_t
    return torch.exp(A) * h0 + torch.exp(A + torch.logcumsumexp(log_b - A, dim=0))  # (T, B, H)


def chunked_log_scan(log_a: Tensor, log_b: Tensor, h0: Tensor, chunk: int = SCAN_CHUNK) -> Tensor:
    """``log_scan`` on ``chunk`` steps at a time, each chunk starting from the last h of the one before."""
    hs = []
    for la, lb in zip(log_a.split(chunk), log_b.split(chunk), strict=True):
        hs.append(log_scan(la, lb, h0))  # (chunk, B, H)
        h0 = hs[-1][-1]  # (B, H)
    return torch.cat(hs)  # (T, B, H)


def _min_gru_coefficients(k: Tensor) -> tuple[Tensor, Tensor]:
    """log a_t = log(1 - z_t) and log b_t = log z_t + log h~_t from the pre-activations k (T, B, 2H)."""
    k_z, k_h = k.chunk(2, dim=-1)  # 2 x (T, B, H)
    log_a = -F.softplus(k_z)  # log(1 - sigmoid(k_z))
    log_b = -F.softplus(-k_z) + log_g(k_h)  # log sigmoid(k_z) + log g(k_h)
    return log_a, log_b


def _min_lstm_coefficients(k: Tensor) -> tuple[Tensor, Tensor]:
    """log a_t = log f'_t and log b_t = log i'_t + log h~_t from the pre-activations k (T, B, 3H)."""
    k_f, k_i, k_h = k.chunk(3, dim=-1)  # 3 x (T, B, H)
    log_f = F.logsigmoid(k_f)
    log_i = F.logsigmoid(k_i)
    log_a = -F.softplus(log_i - log_f)  # log(f / (f + i))
    log_b = -F.softplus(log_f - log_i) + log_g(k_h)  # log(i / (f + i)) + log g(k_h)
    return log_a, log_b


def _flip(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse time-major ``x`` (T, B, ...) within each row's length (padding stays at the end)."""
    if lengths is None:
        return x.flip(0)
    return flip_padded(x.transpose(0, 1), lengths).transpose(0, 1)


def _scan_sequence(coefficients):
    """The ``sequence`` form of a cell whose step is h_t = a_t h_{t-1} + b_t with (log a, log b) =
    ``coefficients(W_ih x + b_ih)``: ``(x (T, B, D), h0 (B, H), mask (T, B, 1) or None, reverse, w) -> (y, h_T)``."""

    def sequence(x: Tensor, h0: Tensor, mask: Tensor | None, reverse: bool, w) -> tuple[Tensor, Tensor]:
        lengths = None if mask is None else mask[:, :, 0].sum(0)  # (B,)
        if reverse:
            x = _flip(x, lengths)  # each row read from its last valid step back
        k = F.linear(x, w["weight_ih"], w.get("bias_ih"))  # (T, B, G*H): every step's gates in one product
        k = k.to(h0.dtype)  # under autocast the product is bf16; the log-space scan needs the state's precision
        log_a, log_b = coefficients(k)  # 2 x (T, B, H)
        h = chunked_log_scan(log_a, log_b, h0)  # (T, B, H)
        if mask is None:
            final = h[-1]  # (B, H)
        else:
            last = (lengths - 1).view(1, -1, 1).expand(1, -1, h.size(-1))  # (1, B, H)
            final = h.gather(0, last).squeeze(0)  # (B, H)  each row's last valid state
            h = torch.where(mask, h, torch.zeros_like(h))  # outputs past a length are zero
        if reverse:
            h = _flip(h, lengths)
        return h, final

    return sequence


# --- NumPy references (float64, the equations as written, hand-written backward) ----------------------------


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _g_np(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """g(a) and its derivative g'(a): 1 for a >= 0, sigmoid'(a) below."""
    s = _sigmoid(a)
    return np.where(a >= 0, a + 0.5, s), np.where(a >= 0, 1.0, s * (1 - s))


def _min_gru_np_step(p: dict, x: np.ndarray, h_prev: np.ndarray) -> tuple:
    k_z, k_h = np.split(x @ p["weight_ih"].T + p["bias_ih"], 2, axis=1)  # 2 x (B, H)
    z = _sigmoid(k_z)
    h_tilde, dg = _g_np(k_h)
    h = (1 - z) * h_prev + z * h_tilde  # (B, H)
    return h, h, {"x": x, "h_prev": h_prev, "z": z, "h_tilde": h_tilde, "dg": dg}


def _min_gru_np_backward(p: dict, s: dict, dy: np.ndarray, dh: np.ndarray, grads: dict) -> tuple:
    dh = dh + dy  # h_t is both the output and the next step's state
    z = s["z"]
    dz = dh * (s["h_tilde"] - s["h_prev"])  # h = (1 - z) * h_prev + z * h~
    dh_tilde = dh * z
    dk = np.concatenate([dz * z * (1 - z), dh_tilde * s["dg"]], axis=1)  # (B, 2H)
    return _linear_backward(p, s, dk, grads), dh * (1 - z)


def _min_lstm_np_step(p: dict, x: np.ndarray, h_prev: np.ndarray) -> tuple:
    k_f, k_i, k_h = np.split(x @ p["weight_ih"].T + p["bias_ih"], 3, axis=1)  # 3 x (B, H)
    f = _sigmoid(k_f)
    i = _sigmoid(k_i)
    f_ = f / (f + i)
    i_ = i / (f + i)
    h_tilde, dg = _g_np(k_h)
    h = f_ * h_prev + i_ * h_tilde  # (B, H)
    return h, h, {"x": x, "h_prev": h_prev, "f": f, "i": i, "f_": f_, "i_": i_, "h_tilde": h_tilde, "dg": dg}


def _min_lstm_np_backward(p: dict, s: dict, dy: np.ndarray, dh: np.ndarray, grads: dict) -> tuple:
    dh = dh + dy
    f, i = s["f"], s["i"]
    df_ = dh * s["h_prev"]  # h = f' * h_prev + i' * h~
    di_ = dh * s["h_tilde"]
    dh_tilde = dh * s["i_"]
    df = (df_ - di_) * i / (f + i) ** 2  # f' = f / (f + i), i' = i / (f + i)
    di = (di_ - df_) * f / (f + i) ** 2
    dk = np.concatenate([df * f * (1 - f), di * i * (1 - i), dh_tilde * s["dg"]], axis=1)  # (B, 3H)
    return _linear_backward(p, s, dk, grads), dh * s["f_"]


def _linear_backward(p: dict, s: dict, dk: np.ndarray, grads: dict) -> np.ndarray:
    """Backward of k = W_ih x + b_ih: adds dW_ih, db_ih into ``grads``; returns dx (B, D)."""
    grads["weight_ih"] += dk.T @ s["x"]  # (G*H, D)
    grads["bias_ih"] += dk.sum(axis=0)  # (G*H,)
    return dk @ p["weight_ih"]  # (B, D)


def _input_only(G: int):
    def shapes(D: int, H: int) -> dict[str, tuple[int, ...]]:
        return {"weight_ih": (G * H, D), "bias_ih": (G * H,)}

    return shapes


MIN_GRU = register(
    CellSpec(
        name="mingru",
        title="minGRU (Feng et al. 2024, Were RNNs All We Needed?), log-space parallel scan",
        equations="""[k_z, k_h] = W_ih x_t + b_ih
z = sigmoid(k_z)
h~ = g(k_h)                g(a) = a + 0.5 for a >= 0, sigmoid(a) otherwise
h_t = (1 - z) * h_{t-1} + z * h~
y_t = h_t""",
        parameters=_input_only(2),
        step=min_gru_step,
        sequence=_scan_sequence(_min_gru_coefficients),
        recurrent_weight=None,
        reference=NumpyCell(_min_gru_np_step, _min_gru_np_backward),
        aliases=("min-gru",),
    )
)

MIN_LSTM = register(
    CellSpec(
        name="minlstm",
        title="minLSTM (Feng et al. 2024, Were RNNs All We Needed?), log-space parallel scan",
        equations="""[k_f, k_i, k_h] = W_ih x_t + b_ih
f = sigmoid(k_f);  i = sigmoid(k_i)
f' = f / (f + i);  i' = i / (f + i)
h~ = g(k_h)                g(a) = a + 0.5 for a >= 0, sigmoid(a) otherwise
h_t = f' * h_{t-1} + i' * h~
y_t = h_t""",
        parameters=_input_only(3),
        step=min_lstm_step,
        sequence=_scan_sequence(_min_lstm_coefficients),
        recurrent_weight=None,
        reference=NumpyCell(_min_lstm_np_step, _min_lstm_np_backward),
        aliases=("min-lstm",),
    )
)
