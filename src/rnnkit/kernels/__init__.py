"""Fast paths for ``rnnkit.RNN``, each proven equal to the ``"loop"`` reference by the test suite.

``auto_backend`` is the documented rule behind ``backend="auto"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import Tensor

    from rnnkit.recurrent import RNN

__all__ = ["auto_backend", "fast_step"]

from rnnkit.kernels.extension import wanted
from rnnkit.kernels.fused import run_fused
from rnnkit.kernels.step import fast_step
from rnnkit.recurrent import register_backend

register_backend("fused", run_fused)


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
      pass ``backend="fused"`` for that).

    Without the C++ loops (no compiler), only Elman/GRU steps of at least ``MIN_STEP_MACS`` multiply-adds go
    to fused's Python loop. "native" is torch.nn's computation on rnnkit's parameters, so "auto" never bets
    against torch.nn.

    Measured on host B, 2026-11-26 (2-core AMD EPYC, AVX-512, oneDNN GEMM 219 GFLOP/s, torch 2.13, 2 threads;
    medians of interleaved runs; ratio = native time / fused time, > 1: fused faster), (B, T, D, H):

    - LSTM train: (32, 128, 64, 384) 1.00x, (32, 128, 64, 256) 0.99x, (4, 50, 256, 256) 0.71x,
      (1, 100, 64, 128) 0.45x; forward 0.34-0.78x. ``rnnkit bench`` (D = H): train 1.03x at 32x128x256 and 64x64x512.
    - GRU train: 1.57x, 1.65x, 1.91x, 2.82x, and (8, 32, 32, 64) 1.89x, (16, 64, 128, 128) 1.64x; forward 1.60x,
      1.55x, 1.28x, 0.61x, 0.68x, 1.04x (the last three under 2^19 multiply-adds but the last).
    - Elman train: 1.33x, 1.23x, 1.47x, 0.88x (B * H = 128), 1.14x (512), 1.46x; forward 1.35x, 1.40x, 0.79x,
      0.34x, 0.56x, 0.82x (all under 2^19 multiply-adds but the first two).
    - Earlier, with fused's Python loops: host A (oneDNN 462 GFLOP/s) Elman/GRU train 1.05-1.74x; host B
      0.88-1.05x, LSTM 0.59-0.85x everywhere: hence ``MIN_STEP_MACS`` when the C++ loops are missing.
    - CUDA was not available to measure; cuDNN is the rule there.

    ``rnnkit bench`` re-measures on the machine at hand; pass ``backend="fused"`` or ``"native"`` to choose.
    """
    if x.device.type != "cpu" or rnn.mode == "lstm":
        return "native"
    B, H = x.size(0), rnn.hidden_size
    G = 3 if rnn.mode == "gru" else 1
    if wanted(x) is None:
        return "fused" if B * G * H * H >= MIN_STEP_MACS else "native"
    grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in rnn.parameters()))
    if grad:
        return "fused" if rnn.mode == "gru" or B * H >= MIN_ELMAN_TRAIN_VALUES else "native"
    return "fused" if B * G * H * H >= MIN_FORWARD_MACS else "native"
