"""rnnkit: recurrent neural networks from the equations, with the tools to train and use them."""

from rnnkit import reference
from rnnkit.cells import CELLS, Cell, CellSpec, ElmanCell, GRUCell, LSTMCell, LSTMState
from rnnkit.diagnostics import compare_gradient_flow, gradient_flow, plot_gradient_flow
from rnnkit.errors import CheckpointError, ConfigError, DataError, ExportError, RnnkitError
from rnnkit.init import init_forget_bias_, init_orthogonal_
from rnnkit.recurrent import RNN, Bidirectional, Recurrent, Stack, scan
from rnnkit.sequence import detach_state, flip_padded, last_valid, lengths_to_mask, pad_sequences

__version__ = "0.1.0"

# the estimators (rnnkit.estimators) load the tasks and the trainer: imported when first used, so that importing
# rnnkit for its layers stays light
_ESTIMATORS = ("Classifier", "Forecaster", "LanguageModel", "Seq2Seq", "load")


def __getattr__(name: str):
    if name in _ESTIMATORS:
        import rnnkit.estimators

        return getattr(rnnkit.estimators, name)
    raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_ESTIMATORS])


__all__ = [
    "CELLS",
    "RNN",
    "Bidirectional",
    "Cell",
    "CellSpec",
    "CheckpointError",
    "Classifier",
    "ConfigError",
    "DataError",
    "ElmanCell",
    "ExportError",
    "Forecaster",
    "GRUCell",
    "LSTMCell",
    "LSTMState",
    "LanguageModel",
    "Recurrent",
    "RnnkitError",
    "Seq2Seq",
    "Stack",
    "compare_gradient_flow",
    "detach_state",
    "flip_padded",
    "gradient_flow",
    "init_forget_bias_",
    "init_orthogonal_",
    "last_valid",
    "lengths_to_mask",
    "load",
    "pad_sequences",
    "plot_gradient_flow",
    "reference",
    "scan",
]
