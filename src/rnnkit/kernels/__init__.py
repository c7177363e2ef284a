"""Fast paths for ``rnnkit.RNN``, each proven equal to the ``"loop"`` reference by the test suite.

This package imports nothing from ``rnnkit.recurrent`` or ``rnnkit.backends``: the fused layers are a table by
cell name (``fused.LAYERS``) that ``rnnkit.backends`` reads.

``auto_backend`` is the documented rule behind ``backend="auto"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import Tensor

    from rnnkit.recurrent import RNN

__all__ = ["auto_backend", "fast_step"]

from rnnkit.kernels.extension import ops as cpp_loops
from rnnkit.kernels.extension import wanted
from rnnkit.kernels.step import fast_step

# With the C++ loops, fused runs inference (no autograd) from this many multiply-adds per recurrent step
# (B * G*H * H) and Elman trains fused from this many state values per step (B * H); GRU always trains fused.
MIN_FORWARD_MACS = 2**19
MIN_ELMAN_TRAIN_VALUES = 512
# Without them (no compiler), fused's Python loop only pays off for Elman/GRU steps this large.
MIN_STEP_MACS = 2**24


def auto_backend(rnn: RNN, x: Tensor) -> str:
    """The backend ``backend="auto"`` runs for ``rnn`` on input ``x``.

    Rule: off CPU, ``"native"`` (cuDNN). On CPU, ``"native"`` (torch.nn's own kernels: oneDNN's LSTM, a C++
    loop for GRU and Elman under autograd's per-step graph) except, with fused's C++ loops built:

    - GRU training (autograd on): always ``"fused"``;
    - Elman training: ``"fused"`` from ``MIN_ELMAN_TRAIN_VALUES`` state values per step (B * H);
    - GRU and Elman inference: ``"fused"`` from ``MIN_FORWARD_MACS`` multiply-adds per step (B * G*H * H);
    - LSTM: ``"native"``, training and inference (fused trains at the same speed with a third less memory:
      pass ``backend="fused"`` for that), except training under bf16 autocast (or with bf16 parameters):
      ``"fused"``, whose bf16 products with fp32 gates trained faster than oneDNN's bf16 LSTM; oneDNN's stays
      faster for inference.

    Without the C++ loops (no compiler), only Elman/GRU steps of at least ``MIN_STEP_MACS`` multiply-adds go
    to fused's Python loop. "native" is torch.nn's computation on rnnkit's parameters, so "auto" never bets
    against torch.nn.

    Why: timed on CPU (benchmarks/KERNELS.md), fused's C++ loops trained GRUs faster than torch.nn at every
    size tried, and Elman at all but the smallest states; for inference they won only on steps large enough
    that the per-step product outweighs their per-call overhead. torch.nn's oneDNN LSTM was as fast as fused or
    faster, in training and inference. Fused's Python loops won only on large Elman/GRU steps, and not on every
    host, hence ``MIN_STEP_MACS``. There was no GPU to time, so cuDNN is the rule there.

    ``rnnkit bench`` re-measures on the machine at hand; pass ``backend="fused"`` or ``"native"`` to choose.
    """
    if x.device.type != "cpu":
        return "native"
    grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in rnn.parameters()))
    if rnn.mode == "lstm":
        mixed = (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16) or (
            rnn.weight_hh_l0.dtype == torch.bfloat16
        )
        return "fused" if grad and mixed and cpp_loops() is not None else "native"  # x is on the CPU, any float dtype
    B, H = x.size(0), rnn.hidden_size
    G = 3 if rnn.mode == "gru" else 1
    if wanted(x) is None:
        return "fused" if B * G * H * H >= MIN_STEP_MACS else "native"
    if grad:
        return "fused" if rnn.mode == "gru" or B * H >= MIN_ELMAN_TRAIN_VALUES else "native"
    return "fused" if B * G * H * H >= MIN_FORWARD_MACS else "native"
