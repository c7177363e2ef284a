"""The ``"fused"`` backend: each layer and direction is one hand-written autograd Function (BPTT by hand).

The runner follows the backend contract of ``rnnkit.recurrent``: x (B, T, D) batch first, a validated state,
lengths (B,) in [1, T] or None -> output (B, T, K*H) and the final state. Inside, everything is time-major
(T, B, .), so each step reads and writes contiguous (B, .) slices; the lengths become one mask (T, B, 1) shared by
all layers and directions. The per-mode kernels live in ``elman.py``, ``lstm.py`` and ``gru.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells import LSTMState
from rnnkit.kernels.elman import elman_layer
from rnnkit.kernels.gru import gru_layer
from rnnkit.kernels.lstm import lstm_layer

__all__ = ["run_fused"]


def run_fused(rnn, x: Tensor, hx, lengths: Tensor | None):
    """Runner for ``RNN(..., backend="fused")``: (B, T, D), state, lengths -> (B, T, K*H), final state."""
    _B, T, _ = x.shape
    mask = None
    if lengths is not None:
        steps = torch.arange(T).unsqueeze(1)  # (T, 1)
        mask = (steps < lengths.unsqueeze(0)).unsqueeze(-1).to(x.device)  # (T, B, 1) bool
    is_lstm = rnn.mode == "lstm"
    xt = x.transpose(0, 1).contiguous()  # (T, B, D)
    finals = []
    for layer in range(rnn.num_layers):
        if layer > 0 and rnn.dropout > 0 and rnn.training:
            # drawn on the batch-first layout, so the masks equal the "loop" backend's under the same seed
            xt = F.dropout(xt.transpose(0, 1).contiguous(), rnn.dropout, True).transpose(0, 1).contiguous()
        outputs = []
        for direction in range(rnn.num_directions):
            k = layer * rnn.num_directions + direction
            w = rnn.layer_weights(layer, direction)
            reverse = direction == 1
            if is_lstm:
                y, h, c = lstm_layer(xt, hx[0][k], hx[1][k], mask, reverse, *w)
                finals.append((h, c))
            elif rnn.mode == "gru":
                y, h = gru_layer(xt, hx[k], mask, reverse, *w)
                finals.append(h)
            else:
                y, h = elman_layer(xt, hx[k], mask, reverse, *w, relu=rnn.nonlinearity == "relu")
                finals.append(h)
            outputs.append(y)  # (T, B, H)
        xt = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]  # (T, B, K*H)
    out = xt.transpose(0, 1).contiguous()  # (B, T, K*H)
    if is_lstm:
        return out, LSTMState(torch.stack([h for h, _ in finals]), torch.stack([c for _, c in finals]))
    return out, torch.stack(finals)  # (L*K, B, H)
