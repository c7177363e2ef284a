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
from rnnkit.recurrent import register_backend

register_backend("fused", run_fused)


def auto_backend(rnn: RNN, x: Tensor) -> str:
    """The backend ``backend="auto"`` runs for ``rnn`` on input ``x``.

    Rule: ``"native"`` (torch.nn's oneDNN/cuDNN kernels) for every mode and device, as it is the fastest
    correct engine available until a faster one is measured.
    """
    return "native"


def fast_step(rnn: RNN, x_t: Tensor, state):
    """One step of every layer of a unidirectional ``rnn``: ``x_t`` (B, D), validated state -> (y_t (B, H), state).

    Equal to ``rnn(x_t.unsqueeze(1), state)`` with the time axis dropped; this default runs the chosen backend
    on a length-1 sequence.
    """
    from rnnkit.recurrent import _runner

    out, state = _runner(rnn.resolved_backend(x_t))(rnn, x_t.unsqueeze(1), state, None)  # out: (B, 1, H)
    return out.squeeze(1), state
