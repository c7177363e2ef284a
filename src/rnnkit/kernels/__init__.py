"""Fast paths for ``rnnkit.RNN``, each proven equal to the ``"loop"`` reference by the test suite.

This package sits below the layers: it imports nothing from ``rnnkit.recurrent``, ``rnnkit.layers`` or
``rnnkit.backends``, not even for types (tests/test_imports.py). The fused layers are a table by cell name
(``fused.LAYERS``) that ``rnnkit.backends`` reads; the rule behind ``backend="auto"``, which chooses between them
and torch.nn's kernels, is ``rnnkit.backends.auto_backend``.
"""

from __future__ import annotations

from rnnkit.kernels.step import fast_step

__all__ = ["fast_step"]
