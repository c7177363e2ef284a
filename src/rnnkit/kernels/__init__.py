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


def auto_backend(rnn: RNN, x: Tensor) -> str:
    """The backend ``backend="auto"`` runs for ``rnn`` on input ``x``.

    Rule: on CPU, ``"fused"`` for Elman and GRU and ``"native"`` (torch.nn's oneDNN kernel) for LSTM; on any
    other device ``"native"`` (cuDNN). Measured on the 2-core AMD EPYC (AVX-512) this was written on, torch
    2.13, medians of interleaved runs, fused time vs torch.nn (ratio > 1: fused faster), train step = forward
    + backward, (B, T, H) = (32, 128, 256) and (64, 64, 512):

    - Elman: train 1.15-1.27x and 1.48-1.78x; no-grad forward 1.12-1.15x and 1.62-1.68x.
    - GRU:   train 0.96-1.23x and 1.17-1.31x; no-grad forward 1.21-1.41x and 1.82-1.90x.
    - LSTM:  train 0.63-1.38x and 0.67-0.81x; no-grad forward 0.44-0.48x and 0.65-0.75x: oneDNN's LSTM
      (about 400 GFLOP/s forward) stays ahead, so LSTM keeps ``"native"``, in training and inference alike.

    The same choice holds for inference (eval mode, no grad): fused's forward wins for Elman and GRU there too.
    ``rnnkit bench`` re-measures all of this on the machine at hand.
    """
    if x.device.type != "cpu" or rnn.mode == "lstm":
        return "native"
    return "fused"
