"""Fast paths for ``rnnkit.RNN``, each proven equal to the ``"loop"`` reference by the test suite.

``auto_backend`` is the documented rule behind ``backend="auto"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from rnnkit.recurrent import RNN

__all__ = ["auto_backend", "fast_step"]

from rnnkit.kernels.fused import run_fused
from rnnkit.kernels.step import fast_step
from rnnkit.recurrent import register_backend

register_backend("fused", run_fused)


# Below this many multiply-adds per recurrent step (B * G*H * H), torch.nn's kernels are at least as fast as
# fused's Python-driven loop on the hosts measured (see auto_backend), so "auto" keeps torch.nn's kernels.
MIN_STEP_MACS = 2**24


def auto_backend(rnn: RNN, x: Tensor) -> str:
    """The backend ``backend="auto"`` runs for ``rnn`` on input ``x``.

    Rule: off CPU, ``"native"`` (cuDNN). On CPU, ``"native"`` (torch.nn's own kernels: oneDNN for LSTM, a C++
    loop for GRU and Elman) except for Elman and GRU with at least ``MIN_STEP_MACS`` multiply-adds per
    recurrent step (B * G*H * H, G = 3 for GRU, 1 for Elman), where ``"fused"`` runs, training or not.
    "native" is torch.nn's computation on rnnkit's parameters, so "auto" is never a bet against torch.nn.

    Why, in measurements (ratio = torch.nn time / fused time, > 1: fused faster; train step = forward +
    backward of one layer, D = H; medians of interleaved runs, torch 2.13, 2 threads) on two 2-core AMD EPYC
    (AVX-512) hosts, both shared with other jobs:

    - host A (oneDNN GEMM peak 462 GFLOP/s, torch.mm 215): Elman (B, T, H) = (32, 128, 256) / (64, 64, 512) train
      1.05-1.27x / 1.39-1.74x; GRU train 1.14-1.30x / 1.31-1.47x; forward GRU 1.22-1.41x / 1.68-2.04x.
    - host B (oneDNN GEMM peak 204-216 GFLOP/s, torch.mm 143-172), 2026-11-26: Elman train 0.92x / 1.05x;
      GRU train 0.88-0.90x / 0.93-1.30x, forward 0.89x / 1.13-1.44x; at the char LM's shape (E=64, H=256,
      B=32, T=128) a GRU train step took 109 ms fused vs 82 ms native.
    - LSTM: fused train 0.59-0.85x, forward 0.44-0.98x on both: oneDNN's LSTM kernel (55-82% of the GEMM peak in
      a train step) stays ahead, so LSTM keeps ``"native"`` for training and inference alike.
    - CUDA was not available to measure; cuDNN is the rule there.

    The fused advantage follows the gap between oneDNN's and torch.mm's GEMM speed on the host, so only the
    large shapes, ahead on both hosts or within noise, go to fused. ``rnnkit bench`` re-measures on the machine
    at hand; pass ``backend="fused"`` or ``"native"`` to choose yourself.
    """
    if x.device.type != "cpu" or rnn.mode == "lstm":
        return "native"
    G, H = (3 if rnn.mode == "gru" else 1), rnn.hidden_size
    return "fused" if x.size(0) * G * H * H >= MIN_STEP_MACS else "native"
