"""The cell specification: what a recurrent cell is, as data, so every layer, backend and tool reads one table.

A ``CellSpec`` says, for one cell:

- ``name`` (what ``RNN(mode=...)`` and ``--mode`` take) and ``title`` (the paper or source);
- ``equations``: the step's math, one equation a line, with the symbols of its ``step`` function;
- ``parameters(D, H)``: each parameter kind of one layer and direction and its shape, in ``flat_weights`` order.
  Kinds named ``bias_*`` disappear with ``bias=False``; ``RNN`` names them ``{kind}_l{layer}[_reverse]`` as
  torch.nn does;
- ``step(x_t, state, w, **options) -> (y_t, state)``: the equations on one step, with ``w`` the layer's
  parameters by kind (a bias kind is None without bias). This is the ``"loop"`` backend and the oracle every other
  backend is tested against;
- ``has_cell``: the state is ``LSTMState(h, c)`` rather than h; ``output_is_state``: y_t is h_t (zoneout then acts
  on the output too);
- ``init``: per kind, how ``reset_parameters`` fills it (default: torch.nn's uniform in [-1/sqrt(H), 1/sqrt(H)]);
- ``options``: the keyword options ``step`` takes, with their allowed values (Elman's nonlinearity);
- ``torch_module``: the torch.nn class with the same parameters (the ``"native"`` backend, ``to_torch``), or None;
- ``sequence``: a whole-sequence form on time-major input, ``sequence(x (T, B, D), state, mask, reverse, w,
  **options) -> (y (T, B, H), state)``, for cells with one (the parallel scan of minGRU): the ``"fused"`` backend
  where the kernels have no hand-written layer for the cell;
- ``recurrent_weight``: the kind weight-drop (DropConnect) masks, or None where the cell has no recurrent matrix;
- ``reference``: the NumPy step and its backward (``rnnkit.cells.reference`` drives them over a sequence).

Adding a cell is one ``CellSpec`` with its equations and NumPy reference, registered with ``register``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import Tensor, nn

__all__ = ["CELLS", "CellSpec", "LSTMState", "NumpyCell", "cell_spec", "register", "uniform_init"]


class LSTMState(NamedTuple):
    """State of a cell with a memory cell (LSTM and its variants): hidden ``h`` and cell ``c``, each (..., B, H)."""

    h: Tensor
    c: Tensor


Step = Callable[..., tuple[Tensor, Any]]
Init = Callable[[Tensor, int], None]


def uniform_init(p: Tensor, hidden_size: int) -> None:
    """torch.nn's default for recurrent parameters: uniform in [-1/sqrt(H), 1/sqrt(H)]."""
    bound = 1.0 / math.sqrt(hidden_size)
    nn.init.uniform_(p, -bound, bound)


@dataclass(frozen=True)
class NumpyCell:
    """A cell's NumPy reference: ``step(p, x, state, **options) -> (y, state, cache)`` and
    ``backward(p, cache, dy, dstate, grads) -> (dx, dstate_prev)``, which adds the parameter gradients into
    ``grads`` (kind -> array). States are h (B, H) or a pair (h, c)."""

    step: Callable[..., tuple[Any, Any, dict]]
    backward: Callable[..., tuple[Any, Any]]


@dataclass(frozen=True, repr=False)
class CellSpec:
    name: str
    title: str
    equations: str
    parameters: Callable[[int, int], dict[str, tuple[int, ...]]]
    step: Step
    has_cell: bool = False
    output_is_state: bool = True
    init: Mapping[str, Init] = field(default_factory=dict)
    options: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    torch_module: type[nn.RNNBase] | None = None
    sequence: Callable[..., tuple[Tensor, Any]] | None = None
    recurrent_weight: str | None = "weight_hh"
    reference: NumpyCell | None = None
    aliases: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"CellSpec({self.name!r})"

    def __reduce__(self):
        # pickled by name: a spec holds functions made inside its module (layouts, references) that pickle cannot
        # write, and the registered spec is the one to come back (torch.save of a whole RNN, Cell or task model)
        return cell_spec, (self.name,)

    def shapes(self, input_size: int, hidden_size: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
        """Parameter kind -> shape for one layer and direction (no ``bias_*`` kinds when ``bias`` is False)."""
        shapes = self.parameters(input_size, hidden_size)
        return {k: s for k, s in shapes.items() if bias or not k.startswith("bias_")}

    def initialise(self, kind: str, p: Tensor, hidden_size: int) -> None:
        self.init.get(kind, uniform_init)(p, hidden_size)

    def check_options(self, **options: Any) -> dict[str, Any]:
        """The step's options, each checked against its allowed values (first value = default)."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"cell {self.name!r} takes options {sorted(self.options)}, got {unknown}")
        out = {}
        for name, allowed in self.options.items():
            value = options.get(name, allowed[0])
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r} (cell {self.name!r})")
            out[name] = value
        return out


CELLS: dict[str, CellSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: CellSpec) -> CellSpec:
    """Add ``spec`` to the table under its name and aliases; returns it."""
    for key in (spec.name, *spec.aliases):
        if key in _ALIASES:
            raise ValueError(f"cell name {key!r} is taken by {_ALIASES[key]!r}")
    CELLS[spec.name] = spec
    for key in (spec.name, *spec.aliases):
        _ALIASES[key] = spec.name
    return spec


def cell_spec(mode: object) -> CellSpec:
    """The spec registered as ``mode`` (a name or alias), or a spec passed through."""
    if isinstance(mode, CellSpec):
        return mode
    if not isinstance(mode, str) or mode not in _ALIASES:
        raise ValueError(f"mode must be one of {tuple(CELLS)}, got {mode!r}")
    return CELLS[_ALIASES[mode]]
