"""The three cells torch.nn has: Elman, LSTM and GRU, as step functions and table entries.

Parameter names, shapes, gate order and default initialisation are those of ``torch.nn.RNNCell``,
``torch.nn.LSTMCell`` and ``torch.nn.GRUCell`` (and of ``torch.nn.RNN/LSTM/GRU`` per layer), so a ``state_dict``
loads either way. The math of each cell is one plain function (``elman_step``, ``lstm_step``, ``gru_step``) that
takes the weights as arguments; the specs below, the cell modules and ``rnnkit.RNN`` all call it, so there is one
copy of each equation. The NumPy references are those of ``rnnkit.reference``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import reference
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


def _numpy(mode: str) -> NumpyCell:
    """rnnkit.reference's step and step backward in the NumpyCell contract (y_t is h_t for all three)."""

    def step(p, x, state, nonlinearity: str = "tanh"):
        if nonlinearity != "tanh":
            raise ValueError(f"the NumPy reference has the tanh Elman cell only, got nonlinearity={nonlinearity!r}")
        state, cache = reference._step(mode, p, x, state)
        return (state[0] if mode == "lstm" else state), state, cache

    def backward(p, cache, dy, dstate, grads):
        dh, dc = dstate if mode == "lstm" else (dstate, None)
        dx, dh_prev, dc_prev = reference._step_backward(mode, p, cache, dh + dy, dc, grads)
        return dx, ((dh_prev, dc_prev) if mode == "lstm" else dh_prev)

    return NumpyCell(step, backward)


ELMAN = register(
    CellSpec(
        name="elman",
        title="Elman (1990) network, torch.nn.RNN",
        equations="h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)      (or relu)\ny_t = h_t",
        parameters=_gated(1),
        step=_elman,
        options={"nonlinearity": NONLINEARITIES},
        torch_module=nn.RNN,
        reference=_numpy("elman"),
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
        reference=_numpy("lstm"),
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
        reference=_numpy("gru"),
    )
)
