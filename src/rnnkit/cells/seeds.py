"""Two Elman-type cells from the project's seed articles, whose output is not their state.

- ``"elman-io"``: the Elman cell with an output that reads the input as well as the new state,
  ``o_t = sigmoid(W_ho h_t + W_xo x_t + b_o)``, the textbook form where y_t is computed from h_t and x_t;
- ``"i2h"``: the RNN module of the PyTorch tutorial "NLP From Scratch: Classifying Names with a Character-Level
  RNN": two linear maps ``i2h`` and ``i2o`` of ``combined = [x_t; h_{t-1}]``, the next state with no
  nonlinearity, exactly as the tutorial writes it. The tutorial's ``LogSoftmax`` on the output belongs to the
  task head (a classifier's loss), not to the cell, and the output has size H so that layers stack.

Both keep ``weight_ih`` for everything that multiplies x_t and ``weight_hh`` for what multiplies h_{t-1}, with
the blocks stacked in the order of the equations, so a fused product per step serves both the state and the
output.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells.spec import CellSpec, NumpyCell, register

__all__ = ["ELMAN_IO", "I2H", "elman_io_step", "i2h_step"]


def elman_io_step(x: Tensor, h: Tensor, w) -> tuple[Tensor, Tensor]:
    k_h, k_o = F.linear(x, w["weight_ih"], w.get("bias_ih")).chunk(2, dim=-1)  # 2 x (B, H): W_xh x, W_xo x
    h = torch.tanh(k_h + F.linear(h, w["weight_hh"], w.get("bias_hh")))  # (B, H)
    o = torch.sigmoid(F.linear(h, w["weight_ho"]) + k_o)  # (B, H)
    return o, h


def i2h_step(x: Tensor, h: Tensor, w) -> tuple[Tensor, Tensor]:
    combined = F.linear(x, w["weight_ih"], w.get("bias_ih")) + F.linear(h, w["weight_hh"])  # (B, 2H)
    h_new, y = combined.chunk(2, dim=-1)  # i2h([x; h]), i2o([x; h]): 2 x (B, H)
    return y, h_new


# --- NumPy references (float64, hand-written backward) ----------------------------------------------------


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _elman_io_np_step(p: dict, x: np.ndarray, h_prev: np.ndarray) -> tuple:
    k_h, k_o = np.split(x @ p["weight_ih"].T + p["bias_ih"], 2, axis=1)  # 2 x (B, H)
    h = np.tanh(k_h + h_prev @ p["weight_hh"].T + p["bias_hh"])  # (B, H)
    o = _sigmoid(h @ p["weight_ho"].T + k_o)  # (B, H)
    return o, h, {"x": x, "h_prev": h_prev, "h": h, "o": o}


def _elman_io_np_backward(p: dict, s: dict, dy: np.ndarray, dh: np.ndarray, grads: dict) -> tuple:
    h, o = s["h"], s["o"]
    da_o = dy * o * (1 - o)  # o = sigmoid(W_ho h + W_xo x + b_o)
    grads["weight_ho"] += da_o.T @ h  # (H, H)
    dh = dh + da_o @ p["weight_ho"]  # h_t reaches the loss through o_t and through h_{t+1}
    da_h = dh * (1 - h**2)  # h = tanh(W_xh x + b_xh + W_hh h_prev + b_hh)
    dk = np.concatenate([da_h, da_o], axis=1)  # (B, 2H)
    grads["weight_ih"] += dk.T @ s["x"]  # (2H, D)
    grads["bias_ih"] += dk.sum(axis=0)
    grads["weight_hh"] += da_h.T @ s["h_prev"]  # (H, H)
    grads["bias_hh"] += da_h.sum(axis=0)
    return dk @ p["weight_ih"], da_h @ p["weight_hh"]  # dx (B, D), dh_prev (B, H)


def _i2h_np_step(p: dict, x: np.ndarray, h_prev: np.ndarray) -> tuple:
    combined = x @ p["weight_ih"].T + p["bias_ih"] + h_prev @ p["weight_hh"].T  # (B, 2H)
    h, y = np.split(combined, 2, axis=1)  # 2 x (B, H)
    return y, h, {"x": x, "h_prev": h_prev}


def _i2h_np_backward(p: dict, s: dict, dy: np.ndarray, dh: np.ndarray, grads: dict) -> tuple:
    dk = np.concatenate([dh, dy], axis=1)  # (B, 2H): [h_t; y_t] is linear in [x_t; h_{t-1}]
    grads["weight_ih"] += dk.T @ s["x"]  # (2H, D)
    grads["bias_ih"] += dk.sum(axis=0)
    grads["weight_hh"] += dk.T @ s["h_prev"]  # (2H, H)
    return dk @ p["weight_ih"], dk @ p["weight_hh"]  # dx (B, D), dh_prev (B, H)


def _elman_io_shapes(D: int, H: int) -> dict[str, tuple[int, ...]]:
    return {"weight_ih": (2 * H, D), "weight_hh": (H, H), "weight_ho": (H, H), "bias_ih": (2 * H,), "bias_hh": (H,)}


def _i2h_shapes(D: int, H: int) -> dict[str, tuple[int, ...]]:
    # One bias per linear map, as the tutorial's two nn.Linear: a second bias on h (torch.nn's bias_hh) would only
    # add a redundant copy of the same sum.
    return {"weight_ih": (2 * H, D), "weight_hh": (2 * H, H), "bias_ih": (2 * H,)}


ELMAN_IO = register(
    CellSpec(
        name="elman-io",
        title="Elman network with an output that reads the input: o_t = sigmoid(W_ho h_t + W_xo x_t + b_o)",
        equations="""h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h)
y_t = o_t = sigmoid(W_ho h_t + W_xo x_t + b_o)
weight_ih = [W_xh; W_xo], bias_ih = [b_xh; b_o], b_h = b_xh + bias_hh""",
        parameters=_elman_io_shapes,
        step=elman_io_step,
        output_is_state=False,
        reference=NumpyCell(_elman_io_np_step, _elman_io_np_backward),
    )
)

I2H = register(
    CellSpec(
        name="i2h",
        title='The RNN of the PyTorch tutorial "NLP From Scratch: Classifying Names with a Character-Level RNN"',
        equations="""combined = [x_t; h_{t-1}]
h_t = i2h(combined) = W_i2h combined + b_i2h          (linear: no nonlinearity, as in the tutorial)
y_t = i2o(combined) = W_i2o combined + b_i2o          (size H; the tutorial's log-softmax is the task head's)
weight_ih = [W_i2h_x; W_i2o_x], weight_hh = [W_i2h_h; W_i2o_h], bias_ih = [b_i2h; b_i2o]""",
        parameters=_i2h_shapes,
        step=i2h_step,
        output_is_state=False,
        reference=NumpyCell(_i2h_np_step, _i2h_np_backward),
    )
)
