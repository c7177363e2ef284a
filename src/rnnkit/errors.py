"""Errors that users of rnnkit can cause.

Programming errors at the Python API raise plain ``ValueError``/``TypeError`` naming the argument, the
expected and the received value. Errors that come from outside the program (a file, a flag, a config, a
checkpoint) raise an ``RnnkitError``; the CLI turns those into one line ``rnnkit: error: ...`` and exit
status 2. Each subclass is also a ``ValueError`` so callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations


class RnnkitError(Exception):
    """Base class for user errors that the CLI reports in one line."""


class ConfigError(RnnkitError, ValueError):
    """A flag, a config file or a config value is out of range or unknown."""


class DataError(RnnkitError, ValueError):
    """An input file is missing, empty, not text, or too short for the requested batches."""


class CheckpointError(RnnkitError, ValueError):
    """A run folder or checkpoint is missing, corrupt, of another model kind or another format version."""


class OutputError(RnnkitError, ValueError):
    """An output cannot be written: it exists (and no --force), its folder is missing, or the disk is full."""


class ExportError(RnnkitError, ValueError):
    """A model cannot be exported as asked: a recurrence with no torch.nn or ONNX form, or a missing extra."""


class DependencyError(RnnkitError, ImportError):
    """A command needs an optional dependency that is not installed; the message names the extra to install."""


class DivergenceError(RnnkitError):
    """Training diverged: a non-finite or exploding loss (``rnnkit.callbacks.DivergenceGuard`` says which), or a
    model or optimiser state holding NaN or inf; nothing non-finite was saved."""


class BusyError(RnnkitError):
    """Another process holds the run folder (a second ``train`` on the same ``--out``)."""
