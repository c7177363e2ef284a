"""The ``"fused"`` layers: one hand-written autograd Function (BPTT by hand) per layer and direction, by cell.

``LAYERS[cell](x (T, B, D), state, mask (T, B, 1) bool or None, reverse, w, **options) -> (y (T, B, H), state)``
runs one direction of one layer on time-major input, with ``w`` the layer's parameters by kind; the skeleton
around it (layers, directions, dropout, state layout) is ``rnnkit.backends.run_layers``. Inside, everything is
time-major, so each step reads and writes contiguous (B, .) slices. The per-cell kernels live in ``elman.py``,
``lstm.py``, ``gru.py``, ``layernorm_lstm.py`` and ``layernorm_gru.py``.
"""

from __future__ import annotations

from torch import Tensor

from rnnkit.cells.spec import LSTMState
from rnnkit.kernels.elman import elman_layer
from rnnkit.kernels.gru import gru_layer
from rnnkit.kernels.layernorm_gru import layernorm_gru_layer
from rnnkit.kernels.layernorm_lstm import layernorm_lstm_layer
from rnnkit.kernels.lstm import lstm_layer

__all__ = ["LAYERS"]


def _w(w: dict) -> tuple:
    return w["weight_ih"], w["weight_hh"], w.get("bias_ih"), w.get("bias_hh")


def _elman(x: Tensor, h: Tensor, mask, reverse: bool, w: dict, nonlinearity: str = "tanh"):
    return elman_layer(x, h, mask, reverse, *_w(w), relu=nonlinearity == "relu")


def _lstm(x: Tensor, state: LSTMState, mask, reverse: bool, w: dict):
    y, h, c = lstm_layer(x, state[0], state[1], mask, reverse, *_w(w))
    return y, LSTMState(h, c)


def _gru(x: Tensor, h: Tensor, mask, reverse: bool, w: dict):
    return gru_layer(x, h, mask, reverse, *_w(w))


def _layernorm_lstm(x: Tensor, state: LSTMState, mask, reverse: bool, w: dict):
    gains = (w["ln_ih_weight"], w["ln_hh_weight"], w["ln_c_weight"], w["ln_c_bias"])
    y, h, c = layernorm_lstm_layer(x, state[0], state[1], mask, reverse, *_w(w), *gains)
    return y, LSTMState(h, c)


def _layernorm_gru(x: Tensor, h: Tensor, mask, reverse: bool, w: dict):
    return layernorm_gru_layer(x, h, mask, reverse, *_w(w), w["ln_ih_weight"], w["ln_hh_weight"])


LAYERS = {
    "elman": _elman,
    "lstm": _lstm,
    "gru": _gru,
    "layernorm-lstm": _layernorm_lstm,
    "layernorm-gru": _layernorm_gru,
}
