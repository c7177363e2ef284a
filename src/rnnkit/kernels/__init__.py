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

from rnnkit.kernels.fused import run_fused
from rnnkit.kernels.step import fast_step
from rnnkit.recurrent import register_backend

register_backend("fused", run_fused)


# Below this many multiply-adds per recurrent step (B * G*H * H), torch.nn's no-grad forward, a C++ loop,
# beats fused's Python loop: measured fwd ratios 0.50-0.89 at (8, 32)..(8, 256), 1.00 at B=64, H=128 (G=3).
INFERENCE_MIN_STEP_MACS = 2**22


def auto_backend(rnn: RNN, x: Tensor) -> str:
    """The backend ``backend="auto"`` runs for ``rnn`` on input ``x``.

    Rule: off CPU, ``"native"`` (cuDNN). On CPU, ``"native"`` (torch.nn's oneDNN kernel) for LSTM, and for
    Elman and GRU ``"fused"`` when training (grad enabled and the parameters or ``x`` need grad) or when
    one recurrent step has at least ``INFERENCE_MIN_STEP_MACS`` multiply-adds (B * G*H * H), else ``"native"``.

    Measured on the 2-core AMD EPYC (AVX-512, shared with other jobs, so the ranges are wide) this was
    written on, torch 2.13, medians of interleaved runs over several repeated sessions; ratio = torch.nn time
    / fused time (> 1: fused faster), train step = forward + backward of one layer, D = H:

    - Elman, (B, T, H) = (32, 128, 256) / (64, 64, 512): train 1.05-1.27x / 1.39-1.74x, no-grad forward
      1.02-1.24x / 1.62-1.83x; small shapes (8, 16, 32) .. (8, 64, 256): train 1.18-1.47x, forward 0.54-0.89x.
    - GRU, same shapes: train 1.14-1.30x / 1.31-1.44x, forward 1.22-1.41x / 1.68-2.00x; small shapes:
      train 1.12-1.40x, forward 0.50-1.01x.
    - LSTM: fused train 0.59-0.79x, forward 0.44-0.82x: oneDNN's LSTM (360-430 GFLOP/s in its forward, 55-70%
      of the 480 GFLOP/s GEMM peak in a train step) stays ahead, so LSTM keeps ``"native"`` (0.92-1.03x of
      torch.nn, i.e. the same kernel) for training and inference alike.
    - CUDA was not available to measure; cuDNN is the rule there.

    ``rnnkit bench`` re-measures these numbers on the machine at hand.
    """
    if x.device.type != "cpu" or rnn.mode == "lstm":
        return "native"
    training = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in rnn.parameters()))
    G, H = (3 if rnn.mode == "gru" else 1), rnn.hidden_size
    if training or x.size(0) * G * H * H >= INFERENCE_MIN_STEP_MACS:
        return "fused"
    return "native"
