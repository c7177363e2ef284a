"""Fused layers for the two seed cells (``rnnkit.cells.seeds``), built from the fused Elman layer.

Both cells' states are Elman recurrences, and their outputs read nothing the recurrence does not already give
for all steps at once, so each layer is the Elman kernel (C++ loops, hand-written BPTT) followed by one batched
product in plain autograd ops. Time-major, one direction; m_t (B, 1) is 1 while t is inside a row's length.

``elman-io`` (weight_ih = [W_xh; W_xo], bias_ih = [b_xh; b_o])::

    h_t = tanh(W_xh x_t + b_xh + b_hh + W_hh h_{t-1})       # the Elman layer
    o_t = sigmoid(W_ho h_t + W_xo x_t + b_o)                  # all steps in one product, (T, B, H)
    y_t = m_t * o_t

``i2h`` (weight_ih = [W_xh; W_xy], weight_hh = [W_hh; W_hy], bias_ih = [b_h; b_y])::

    h_t = W_xh x_t + b_h + W_hh h_{t-1}                       # the Elman layer with the identity activation
    y_t = m_t * (W_xy x_t + b_y + W_hy h_{t-1})               # all steps in one product over the previous states

The previous states are [h_{-1}, h_0, ..., h_{T-2}] in the forward direction; in the reverse one step t reads
h_{t+1}, or h_{-1} (the initial state) at each row's own last step, since the reverse direction starts there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.kernels.elman import elman_layer

__all__ = ["elman_io_layer", "i2h_layer"]


def _linear(x: Tensor, w: Tensor, b: Tensor | None, lowp: torch.dtype | None) -> Tensor:
    """``x @ w^T + b`` (..., O) in x's dtype, the product in ``lowp`` (mixed precision, ``ops.lower``) when given."""
    if lowp is None:
        return F.linear(x, w, b)
    y = F.linear(x.to(lowp), w.to(lowp)).to(x.dtype)
    return y if b is None else y + b


def _split(t: Tensor | None, H: int) -> tuple[Tensor | None, Tensor | None]:
    return (None, None) if t is None else tuple(t.split(H))  # two blocks of H rows


def _previous(hs: Tensor, h0: Tensor, mask: Tensor | None, reverse: bool) -> Tensor:
    """h_{t-1} of every valid step in the direction's own order, from the outputs hs = m * h (T, B, H) and h0."""
    if not reverse:
        return torch.cat([h0.unsqueeze(0), hs[:-1]])  # (T, B, H): step t reads h_{t-1}
    after = torch.cat([hs[1:], h0.unsqueeze(0)])  # (T, B, H): step t reads h_{t+1}
    if mask is None:
        return after
    started = torch.cat([mask[1:], torch.zeros_like(mask[:1])])  # (T, B, 1): whether step t+1 is inside the row
    return torch.where(started, after, h0)  # a row's last step reads the initial state


def elman_io_layer(x: Tensor, h0: Tensor, mask: Tensor | None, reverse: bool, w: dict, lowp=None):
    """One direction of one ``elman-io`` layer on time-major x (T, B, D): -> (y (T, B, H), h_T (B, H))."""
    H = h0.size(-1)
    w_xh, w_xo = w["weight_ih"].split(H)  # 2 x (H, D)
    b_xh, b_o = _split(w.get("bias_ih"), H)
    hs, h_last = elman_layer(x, h0, mask, reverse, w_xh, w["weight_hh"], b_xh, w.get("bias_hh"), lowp=lowp)
    o = torch.sigmoid(_linear(hs, w["weight_ho"], None, lowp) + _linear(x, w_xo, b_o, lowp))  # (T, B, H)
    return (o if mask is None else o * mask), h_last


def i2h_layer(x: Tensor, h0: Tensor, mask: Tensor | None, reverse: bool, w: dict, lowp=None):
    """One direction of one ``i2h`` layer on time-major x (T, B, D): -> (y (T, B, H), h_T (B, H))."""
    H = h0.size(-1)
    w_xh, w_xy = w["weight_ih"].split(H)  # 2 x (H, D)
    w_hh, w_hy = w["weight_hh"].split(H)  # 2 x (H, H)
    b_h, b_y = _split(w.get("bias_ih"), H)
    hs, h_last = elman_layer(x, h0, mask, reverse, w_xh, w_hh, b_h, None, activation="identity", lowp=lowp)
    y = _linear(x, w_xy, b_y, lowp) + _linear(_previous(hs, h0, mask, reverse), w_hy, None, lowp)  # (T, B, H)
    return (y if mask is None else y * mask), h_last
