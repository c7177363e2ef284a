"""Layer-normalised LSTM and GRU (Ba, Kiros and Hinton 2016), in the form of haste's LayerNormLSTM/LayerNormGRU.

The input and recurrent products are normalised separately over all their G*H gate pre-activations (a gain per
unit, no shift: the gate biases follow the normalisation), and the LSTM's cell is normalised (gain and shift)
before its tanh. Normalising each product makes the gates' scale independent of the weights' scale, which steadies
training of deep and long recurrences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells.spec import CellSpec, LSTMState, register

__all__ = ["EPS", "LAYERNORM_GRU", "LAYERNORM_LSTM", "layernorm_gru_step", "layernorm_lstm_step"]

EPS = 1e-5


def _ln(a: Tensor, gain: Tensor, shift: Tensor | None = None) -> Tensor:
    """LN(a) = gain * (a - mean(a)) / sqrt(var(a) + eps) (+ shift), over the last axis."""
    return F.layer_norm(a, a.shape[-1:], gain, shift, EPS)


def _plus(a: Tensor, b: Tensor | None) -> Tensor:
    return a if b is None else a + b


def layernorm_lstm_step(x: Tensor, state: LSTMState, w) -> tuple[Tensor, LSTMState]:
    h, c = state
    gates = _plus(_ln(x @ w["weight_ih"].t(), w["ln_ih_weight"]), w.get("bias_ih"))  # (B, 4H)
    gates = gates + _plus(_ln(h @ w["weight_hh"].t(), w["ln_hh_weight"]), w.get("bias_hh"))  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)  # 4 x (B, H)
    i = torch.sigmoid(i)
    f = torch.sigmoid(f)
    g = torch.tanh(g)
    o = torch.sigmoid(o)
    c = f * c + i * g
    h = o * torch.tanh(_ln(c, w["ln_c_weight"], w["ln_c_bias"]))
    return h, LSTMState(h, c)


def layernorm_gru_step(x: Tensor, h: Tensor, w) -> tuple[Tensor, Tensor]:
    gi = _plus(_ln(x @ w["weight_ih"].t(), w["ln_ih_weight"]), w.get("bias_ih"))  # (B, 3H)
    gh = _plus(_ln(h @ w["weight_hh"].t(), w["ln_hh_weight"]), w.get("bias_hh"))  # (B, 3H)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)  # 3 x (B, H)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)  # 3 x (B, H)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    h = (1 - z) * n + z * h
    return h, h


def _layout(G: int, cell_norm: bool):
    def shapes(D: int, H: int) -> dict[str, tuple[int, ...]]:
        out = {"weight_ih": (G * H, D), "weight_hh": (G * H, H), "bias_ih": (G * H,), "bias_hh": (G * H,)}
        out |= {"ln_ih_weight": (G * H,), "ln_hh_weight": (G * H,)}
        if cell_norm:
            out |= {"ln_c_weight": (H,), "ln_c_bias": (H,)}
        return out

    return shapes


def _ones(p: Tensor, H: int) -> None:
    p.fill_(1.0)


def _zeros(p: Tensor, H: int) -> None:
    p.zero_()


_LN_INIT = {"ln_ih_weight": _ones, "ln_hh_weight": _ones, "ln_c_weight": _ones, "ln_c_bias": _zeros}

LAYERNORM_LSTM = register(
    CellSpec(
        name="layernorm-lstm",
        title="LayerNorm LSTM (Ba et al. 2016; haste's LayerNormLSTM)",
        equations="""[i, f, g, o] = LN(W_ih x_t; a_ih) + b_ih + LN(W_hh h_{t-1}; a_hh) + b_hh
i, f, o = sigmoid(i), sigmoid(f), sigmoid(o);  g = tanh(g)
c_t = f * c_{t-1} + i * g
h_t = o * tanh(LN(c_t; a_c, b_c))
y_t = h_t                  LN(v; a, b) = a * (v - mean(v)) / sqrt(var(v) + 1e-5) + b over the units""",
        parameters=_layout(4, cell_norm=True),
        step=layernorm_lstm_step,
        has_cell=True,
        init=_LN_INIT,
        aliases=("ln-lstm",),
    )
)

LAYERNORM_GRU = register(
    CellSpec(
        name="layernorm-gru",
        title="LayerNorm GRU (Ba et al. 2016; haste's LayerNormGRU)",
        equations="""[i_r, i_z, i_n] = LN(W_ih x_t; a_ih) + b_ih
[h_r, h_z, h_n] = LN(W_hh h_{t-1}; a_hh) + b_hh
r = sigmoid(i_r + h_r);  z = sigmoid(i_z + h_z)
n = tanh(i_n + r * h_n)
h_t = (1 - z) * n + z * h_{t-1}
y_t = h_t""",
        parameters=_layout(3, cell_norm=False),
        step=layernorm_gru_step,
        init=_LN_INIT,
        aliases=("ln-gru",),
    )
)
