"""Recurrent cells: one table of specifications (``CELLS``), their step functions and the cell modules.

Every cell has one contract, ``y, state = cell(x_t, state)``: ``x_t`` is (B, D), ``state`` the previous state
(``None`` means zeros) and ``y`` the step's output (B, H). ``rnnkit.RNN(mode=name)`` runs any cell of the table
over time, stacked and in both directions. The modules that define cells are imported here, so importing
``rnnkit.cells`` fills the table.
"""

from rnnkit.cells import classic, layernorm, minimal, seeds  # noqa: F401  (each registers its cells, in this order)
from rnnkit.cells.classic import NONLINEARITIES, elman_step, gru_step, lstm_step
from rnnkit.cells.modules import Cell, ElmanCell, GRUCell, LSTMCell, check_size
from rnnkit.cells.spec import CELLS, CellSpec, LSTMState, NumpyCell, cell_spec, register

__all__ = [
    "CELLS",
    "NONLINEARITIES",
    "Cell",
    "CellSpec",
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "LSTMState",
    "NumpyCell",
    "cell_spec",
    "check_size",
    "elman_step",
    "gru_step",
    "lstm_step",
    "register",
]
