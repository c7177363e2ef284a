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

    Rule: ``"native"`` (torch.nn's oneDNN/cuDNN kernels) for every mode and device, as it is the fastest
    correct engine available until a faster one is measured.
    """
    return "native"
