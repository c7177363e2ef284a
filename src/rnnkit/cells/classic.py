"""The three cells torch.nn has: Elman, LSTM and GRU, as step functions and table entries.

Parameter names, shapes, gate order and default initialisation are those of ``torch.nn.RNNCell``,
``torch.nn.LSTMCell`` and ``torch.nn.GRUCell`` (and of ``torch.nn.RNN/LSTM/GRU`` per layer), so a ``state_dict``
loads either way. The math of each cell is one plain function (``elman_step``, ``lstm_step``, ``gru_step``) that
takes the weights as arguments; the specs below, the cell modules and ``rnnkit.RNN`` all call it, so there is one
copy of each equation. Each spec's NumPy reference (a step and its hand-written backward, float64) sits beside
it; ``rnnkit.reference`` walks them through a small language model, min-char-rnn style.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.cells.spec import CellSpec, LSTMState, NumpyCell, register

__all__ = ["ELMAN", "GRU", "LSTM", "NONLINEARITIES", "elman_step", "gru_step", "lstm_step"]

NONLINEARITIES = ("tanh", "relu")


def elman_step(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """One Elman step, ``h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h)``; returns h_t (B, H).

    In torch's names ``W_xh`` is ``weight_ih`` and ``b_h`` is split into ``bias_ih + bias_hh``.
    """
    pre = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)  # (B, H)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def lstm_step(
    x: Tensor,
    state: LSTMState,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> LSTMState:
    """One LSTM step (gate order i, f, g, o as in torch.nn.LSTM); returns LSTMState(h_t, c_t)."""
    h, c = state
    gates = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)  # 4 x (B, H)
    i = torch.sigmoid(i)
    f = torch.sigmoid(f)
    g = torch.tanh(g)
    o = torch.sigmoid(o)
    c = f * c + i * g
    h = o * torch.tanh(c)
    return LSTMState(h, c)


def gru_step(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> Tensor:
    """One GRU step (gate order r, z, n as in torch.nn.GRU); returns h_t (B, H).

    This is the variant of cuDNN and torch.nn, where the reset gate multiplies ``W_hn h + b_hn`` after the
    matrix product; Cho et al. (2014) apply it to h before the product.
    """
    gi = F.linear(x, weight_ih, bias_ih)  # (B, 3H)
    gh = F.linear(h, weight_hh, bias_hh)  # (B, 3H)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)  # 3 x (B, H)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)  # 3 x (B, H)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def _gated(G: int):
    """torch.nn's layout for G gates: weight_ih (G*H, D), weight_hh (G*H, H), bias_ih and bias_hh (G*H,)."""

    def shapes(D: int, H: int) -> dict[str, tuple[int, ...]]:
        return {"weight_ih": (G * H, D), "weight_hh": (G * H, H), "bias_ih": (G * H,), "bias_hh": (G * H,)}

    return shapes


def _w(w) -> tuple:
    return w["weight_ih"], w["weight_hh"], w.get("bias_ih"), w.get("bias_hh")


def _elman(x: Tensor, h: Tensor, w, nonlinearity: str = "tanh") -> tuple[Tensor, Tensor]:
    h = elman_step(x, h, *_w(w), nonlinearity=nonlinearity)
    return h, h


def _lstm(x: Tensor, state: LSTMState, w) -> tuple[Tensor, LSTMState]:
    state = lstm_step(x, state, *_w(w))
    return state.h, state


def _gru(x: Tensor, h: Tensor, w) -> tuple[Tensor, Tensor]:
    h = gru_step(x, h, *_w(w))
    return h, h


# --- NumPy references (float64, hand-written backward; rnnkit.reference walks them through a model) ------------


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _products_backward(p: dict, s: dict, dgi: np.ndarray, dgh: np.ndarray, grads: dict) -> tuple:
    """Backward through ``W_ih x + b_ih`` (gradient dgi) and ``W_hh h_prev + b_hh`` (dgh), both (B, G*H): adds the
    four parameter gradients into ``grads``; returns dx (B, D) and the gradient reaching h_prev through W_hh."""
    grads["weight_ih"] += dgi.T @ s["x"]  # (G*H, D)
    grads["weight_hh"] += dgh.T @ s["h_prev"]  # (G*H, H)
    grads["bias_ih"] += dgi.sum(axis=0)  # (G*H,)
    grads["bias_hh"] += dgh.sum(axis=0)  # (G*H,)
    return dgi @ p["weight_ih"], dgh @ p["weight_hh"]  # (B, D), (B, H)


def _elman_np_step(p: dict, x: np.ndarray, h_prev: np.ndarray, nonlinearity: str = "tanh") -> tuple:
    if nonlinearity != "tanh":
        raise ValueError(f"the NumPy reference has the tanh Elman cell only, got nonlinearity={nonlinearity!r}")
    a = x @ p["weight_ih"].T + p["bias_ih"] + h_prev @ p["weight_hh"].T + p["bias_hh"]  # (B, H)
    h = np.tanh(a)  # (B, H)
    return h, h, {"x": x, "h_prev": h_prev, "h": h}


def _elman_np_backward(p: dict, s: dict, dy: np.ndarray, dh: np.ndarray, grads: dict) -> tuple:
    dh = dh + dy  # h_t reaches the loss as y_t and through h_{t+1}
    da = dh * (1 - s["h"] ** 2)  # (B, H)  tanh' = 1 - tanh^2
    return _products_backward(p, s, da, da, grads)  # dx, dh_prev


def _lstm_np_step(p: dict, x: np.ndarray, state: tuple) -> tuple:
    h_prev, c_prev = state
    gates = x @ p["weight_ih"].T + p["bias_ih"] + h_prev @ p["weight_hh"].T + p["bias_hh"]  # (B, 4H)
    a_i, a_f, a_g, a_o = np.split(gates, 4, axis=1)  # 4 x (B, H)
    i = _sigmoid(a_i)  # input gate
    f = _sigmoid(a_f)  # forget gate
    g = np.tanh(a_g)  # candidate
    o = _sigmoid(a_o)  # output gate
    c = f * c_prev + i * g  # (B, H)
    tc = np.tanh(c)
    h = o * tc  # (B, H)
    return h, (h, c), {"x": x, "h_prev": h_prev, "c_prev": c_prev, "i": i, "f": f, "g": g, "o": o, "tc": tc}


def _lstm_np_backward(p: dict, s: dict, dy: np.ndarray, dstate: tuple, grads: dict) -> tuple:
    dh, dc = dstate
    dh = dh + dy  # h_t reaches the loss as y_t and through step t+1
    i, f, g, o, tc = s["i"], s["f"], s["g"], s["o"], s["tc"]
    do = dh * tc  # h = o * tanh(c)
    dc = dc + dh * o * (1 - tc**2)  # c reaches the loss through h_t and through c_{t+1}
    di = dc * g  # c = f * c_prev + i * g
    df = dc * s["c_prev"]
    dg = dc * i
    da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2), do * o * (1 - o)], axis=1)  # (B, 4H)
    dx, dh_prev = _products_backward(p, s, da, da, grads)
    return dx, (dh_prev, dc * f)


def _gru_np_step(p: dict, x: np.ndarray, h_prev: np.ndarray) -> tuple:
    gi = x @ p["weight_ih"].T + p["bias_ih"]  # (B, 3H)
    gh = h_prev @ p["weight_hh"].T + p["bias_hh"]  # (B, 3H)
    i_r, i_z, i_n = np.split(gi, 3, axis=1)  # 3 x (B, H)
    h_r, h_z, h_n = np.split(gh, 3, axis=1)  # 3 x (B, H)
    r = _sigmoid(i_r + h_r)  # reset gate
    z = _sigmoid(i_z + h_z)  # update gate
    n = np.tanh(i_n + r * h_n)  # candidate: the reset applied to (W_hn h + b_hn), as torch.nn and cuDNN
    h = (1 - z) * n + z * h_prev  # (B, H)
    return h, h, {"x": x, "h_prev": h_prev, "r": r, "z": z, "n": n, "h_n": h_n}


def _gru_np_backward(p: dict, s: dict, dy: np.ndarray, dh: np.ndarray, grads: dict) -> tuple:
    dh = dh + dy  # h_t reaches the loss as y_t and through h_{t+1}
    r, z, n = s["r"], s["z"], s["n"]
    dn = dh * (1 - z)  # h = (1 - z) * n + z * h_prev
    dz = dh * (s["h_prev"] - n)
    da_n = dn * (1 - n**2)  # n = tanh(i_n + r * h_n)
    dr = da_n * s["h_n"]
    da_r = dr * r * (1 - r)
    da_z = dz * z * (1 - z)
    dgi = np.concatenate([da_r, da_z, da_n], axis=1)  # (B, 3H)
    dgh = np.concatenate([da_r, da_z, da_n * r], axis=1)  # (B, 3H)
    dx, dh_prev = _products_backward(p, s, dgi, dgh, grads)
    return dx, dh_prev + dh * z  # and the direct path z * h_prev


ELMAN = register(
    CellSpec(
        name="elman",
        title="Elman (1990) network, torch.nn.RNN",
        equations="h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)      (or relu)\ny_t = h_t",
        parameters=_gated(1),
        step=_elman,
        options={"nonlinearity": NONLINEARITIES},
        torch_module=nn.RNN,
        reference=NumpyCell(_elman_np_step, _elman_np_backward),
        aliases=("rnn",),
    )
)

LSTM = register(
    CellSpec(
        name="lstm",
        title="LSTM (Hochreiter and Schmidhuber 1997; forget gate Gers et al. 2000), torch.nn.LSTM",
        equations="""[i, f, g, o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
i, f, o = sigmoid(i), sigmoid(f), sigmoid(o);  g = tanh(g)
c_t = f * c_{t-1} + i * g
h_t = o * tanh(c_t)
y_t = h_t""",
        parameters=_gated(4),
        step=_lstm,
        has_cell=True,
        torch_module=nn.LSTM,
        reference=NumpyCell(_lstm_np_step, _lstm_np_backward),
    )
)

GRU = register(
    CellSpec(
        name="gru",
        title="GRU (Cho et al. 2014), the cuDNN/torch.nn.GRU variant",
        equations="""r = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
z = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
n = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn))
h_t = (1 - z) * n + z * h_{t-1}
y_t = h_t""",
        parameters=_gated(3),
        step=_gru,
        torch_module=nn.GRU,
        reference=NumpyCell(_gru_np_step, _gru_np_backward),
    )
)
