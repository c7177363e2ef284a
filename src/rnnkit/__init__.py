"""rnnkit: recurrent neural networks from the equations, with the tools to train and use them."""

from rnnkit.cells import ElmanCell, GRUCell, LSTMCell, LSTMState
from rnnkit.errors import CheckpointError, ConfigError, DataError, RnnkitError
from rnnkit.init import init_forget_bias_, init_orthogonal_
from rnnkit.recurrent import RNN, Bidirectional, Recurrent, Stack, scan
from rnnkit.sequence import detach_state, flip_padded, last_valid, lengths_to_mask

__version__ = "0.1.0"

__all__ = [
    "RNN",
    "Bidirectional",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "LSTMState",
    "Recurrent",
    "RnnkitError",
    "Stack",
    "detach_state",
    "flip_padded",
    "init_forget_bias_",
    "init_orthogonal_",
    "last_valid",
    "lengths_to_mask",
    "scan",
]
