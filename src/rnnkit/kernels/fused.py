"""The ``"fused"`` layers: one hand-written autograd Function (BPTT by hand) per layer and direction, by cell.

``LAYERS[cell](x (T, B, D), state, mask (T, B, 1) bool or None, reverse, w, **options) -> (y (T, B, H), state)``
runs one direction of one layer on time-major input, with ``w`` the layer's parameters by kind; the skeleton
around it (layers, directions, dropout, state layout) is ``rnnkit.layers.run_plan``. Inside, everything is
time-major, so each step reads and writes contiguous (B, .) slices. The per-cell kernels live in ``elman.py``,
``lstm.py``, ``gru.py``, ``layernorm_lstm.py`` and ``layernorm_gru.py``; the seed cells (elman-io, i2h) are the
Elman kernel and one batched product (``seeds.py``).

Zoneout: the layers of ``ZONEOUT`` also take ``zoneout``, a (T, n, B, H) tensor in time order holding per step,
state (h, or h and c for the LSTM), row and unit while training a bool mask, True where the unit keeps its previous
value, and at evaluation the weight p of the previous value (``rnnkit.layers.zoneout_weights`` makes them).

Mixed precision (``product_dtype``): under ``torch.autocast`` with bfloat16 (or float16), or with bf16
parameters, the matrix products run in bf16 and everything else in float32 (``ops.lower``).
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

from rnnkit import precision
from rnnkit.cells.spec import LSTMState
from rnnkit.kernels.elman import elman_layer
from rnnkit.kernels.gru import gru_layer
from rnnkit.kernels.layernorm_gru import layernorm_gru_layer
from rnnkit.kernels.layernorm_lstm import layernorm_lstm_layer
from rnnkit.kernels.lstm import lstm_layer
from rnnkit.kernels.seeds import elman_io_layer, i2h_layer
from rnnkit.sequence import map_state

__all__ = ["LAYERS", "ZONEOUT", "product_dtype"]

log = logging.getLogger(__name__)

_LOW = (torch.bfloat16, torch.float16)
_warned: list[bool] = []  # the warning above, once per process


def product_dtype(x: Tensor, w: dict) -> torch.dtype | None:
    """The dtype the layer's matrix products run in when it is lower than float32, else None: autocast's
    (``torch.autocast(device, dtype=torch.bfloat16)``) when it is on for x's device, or the parameters' or the
    input's own when they are bfloat16/float16.

    Under autocast on a CPU without bf16 instructions (``rnnkit.precision.bf16_supported``), float32: emulated
    bf16 products are slower than float32 ones and no more accurate (logged once)."""
    if x.dtype == torch.float64:
        return None
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        if dtype == torch.bfloat16 and x.device.type == "cpu" and not precision.bf16_supported(x.device):
            if not _warned:
                _warned.append(True)
                log.warning("bf16 autocast on a CPU without avx512_bf16 or AMX: the fused kernels run float32")
            return None
        if dtype in _LOW:
            return dtype
    for t in (x, *w.values()):
        if t is not None and t.dtype in _LOW:
            return t.dtype
    return None


def _mixed(layer, products: bool = True):
    """``layer`` under mixed precision: states, gates and the values kept for the gradient sums in float32, the
    matrix products in ``product_dtype`` (passed as ``lowp``; with ``products=False`` in float32 too), autocast
    off inside (the kernels choose each op's precision themselves), outputs and states in x's dtype; zoneout's
    weights in float32 too."""

    @functools.wraps(layer)
    def run(x: Tensor, state, mask, reverse: bool, w: dict, **options):
        lowp = product_dtype(x, w)
        if lowp is None and not torch.is_autocast_enabled(x.device.type):
            return layer(x, state, mask, reverse, w, **options)
        dtype = x.dtype

        def wide(t):
            return t.float() if t is not None and t.dtype in _LOW else t

        if "zoneout" in options and options["zoneout"].is_floating_point():  # weights; masks stay bool
            options["zoneout"] = wide(options["zoneout"])

        with torch.autocast(x.device.type, enabled=False):
            y, state = layer(
                wide(x),
                map_state(wide, state),
                mask,
                reverse,
                {k: wide(v) for k, v in w.items()},
                **({"lowp": lowp} if products and lowp is not None else {}),
                **options,
            )
        return y.to(dtype), map_state(lambda t: t.to(dtype), state)

    return run


def _w(w: dict) -> tuple:
    return w["weight_ih"], w["weight_hh"], w.get("bias_ih"), w.get("bias_hh")


def _one(zoneout: Tensor | None) -> Tensor | None:
    return None if zoneout is None else zoneout.squeeze(1)  # (T, 1, B, H) -> (T, B, H)


def _elman(x: Tensor, h: Tensor, mask, reverse: bool, w: dict, nonlinearity: str = "tanh", lowp=None, zoneout=None):
    return elman_layer(x, h, mask, reverse, *_w(w), activation=nonlinearity, lowp=lowp, zoneout=_one(zoneout))


def _lstm(x: Tensor, state: LSTMState, mask, reverse: bool, w: dict, lowp=None, zoneout=None):
    y, h, c = lstm_layer(x, state[0], state[1], mask, reverse, *_w(w), lowp=lowp, zoneout=zoneout)
    return y, LSTMState(h, c)


def _gru(x: Tensor, h: Tensor, mask, reverse: bool, w: dict, lowp=None, zoneout=None):
    return gru_layer(x, h, mask, reverse, *_w(w), lowp=lowp, zoneout=_one(zoneout))


def _layernorm_lstm(x: Tensor, state: LSTMState, mask, reverse: bool, w: dict):
    gains = (w["ln_ih_weight"], w["ln_hh_weight"], w["ln_c_weight"], w["ln_c_bias"])
    y, h, c = layernorm_lstm_layer(x, state[0], state[1], mask, reverse, *_w(w), *gains)
    return y, LSTMState(h, c)


def _layernorm_gru(x: Tensor, h: Tensor, mask, reverse: bool, w: dict):
    return layernorm_gru_layer(x, h, mask, reverse, *_w(w), w["ln_ih_weight"], w["ln_hh_weight"])


# The LayerNorm cells' kernels take no ``lowp`` yet: under autocast they run in float32 throughout.
LAYERS = {
    "elman": _mixed(_elman),
    "lstm": _mixed(_lstm),
    "gru": _mixed(_gru),
    "layernorm-lstm": _mixed(_layernorm_lstm, products=False),
    "layernorm-gru": _mixed(_layernorm_gru, products=False),
    "elman-io": _mixed(elman_io_layer),
    "i2h": _mixed(i2h_layer),
}

# The layers that take zoneout (the C++ and Python loops of elman.py, gru.py and lstm.py).
ZONEOUT = ("elman", "lstm", "gru")
