"""Recurrent layers: a cell run over time, stacked and in both directions.

- ``scan``, ``Recurrent``, ``Bidirectional``, ``Stack``: a cell module over time and its combinators
  (``rnnkit.combinators``, re-exported here);
- ``RNN(mode, ...)``: the torch.nn-compatible layer for any cell of the table (``rnnkit.cells.CELLS``): stacked,
  bidirectional, padded or packed batches, with zoneout, weight-drop and locked dropout, on a choice of backend
  (``rnnkit.backends``), each run from the RNN's ``Plan`` (``RNN.plan()``) through the skeleton the combinators
  use (``rnnkit.layers``).

Shapes: B batch, T time, D input features, H hidden, L layers, K directions (1 or 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit import backends, twin
from rnnkit.backends import BACKENDS
from rnnkit.cells import CELLS, NONLINEARITIES, CellSpec, LSTMState, cell_spec, check_size
from rnnkit.combinators import Bidirectional, Recurrent, Stack, check_sequence, scan
from rnnkit.kernels.step import can_fast, fast_step
from rnnkit.layers import Plan, cell_step, locked_dropout
from rnnkit.sequence import check_lengths, mask_to_lengths

__all__ = ["BACKENDS", "MODES", "RNN", "TORCH_MODES", "Bidirectional", "Recurrent", "Stack", "scan"]

State = Any  # a Tensor or a (named) tuple of Tensors

MODES = tuple(CELLS)  # every cell in the table (rnnkit.cells registers them on import)
TORCH_MODES = twin.TORCH_MODES  # the cells torch.nn has


# --- the torch.nn-compatible layer -----------------------------------------------------------------------


def _check_rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_zoneout(value: object) -> tuple[float, float]:
    """zoneout: one rate for h and c, or a pair (h, c)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"zoneout must be a number or a pair (h, c) of numbers in [0, 1), got {value!r}")
        return _check_rate("zoneout[0]", value[0]), _check_rate("zoneout[1]", value[1])
    rate = _check_rate("zoneout", value)
    return rate, rate


class RNN(nn.Module):
    """Layers of any cell in the table (Elman, LSTM, GRU, LayerNorm LSTM, minGRU...), stacked and optionally
    bidirectional, compatible with torch.nn for the cells torch.nn has.

    ``RNN("lstm", D, H, num_layers=L)`` has the parameters of ``torch.nn.LSTM(D, H, L)`` under the same names
    (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ``..._reverse`` for the backward
    direction) and the same default initialisation, so ``load_state_dict`` works both ways; see also
    ``from_torch`` and ``to_torch``. Other cells name their parameters ``{kind}_l{k}`` by the kinds of their spec
    (``rnnkit.cells.CELLS[mode].parameters``).

    ``forward(x, state=None, lengths=None) -> (output, state)``:
      - ``x``: (B, T, D) with ``batch_first=True`` (the default here, unlike torch.nn), else (T, B, D); or a
        ``PackedSequence``, which gives a ``PackedSequence`` back.
      - ``state``: ``None`` for zeros; h0 (L*K, B, H), or ``(h0, c0)`` for cells with a memory cell (LSTM).
      - ``lengths``: (B,) valid lengths of a padded batch, each in [1, T]. Outputs past a length are zero,
        the final state is each row's last valid state, and the reverse direction starts at each row's end.
      - ``mask``: the Keras-style alternative to ``lengths``, a (B, T) bool tensor ((T, B) when not
        ``batch_first``), True on valid steps; prefix masks only (anything else is a ValueError).
      - ``output``: (B, T, K*H) (or (T, B, K*H)); ``state`` in the layout above (an ``LSTMState`` for LSTM).

    Regularisers (all off by default, all only while training except zoneout's expectation):
      - ``dropout``: between layers, torch.nn's (a fresh mask each step), or one mask per sequence with
        ``locked_dropout=True``;
      - ``dropout_input`` / ``dropout_output``: locked (variational) dropout on the input and the output, one mask
        per sequence for all steps (Gal and Ghahramani 2016; AWD-LSTM, Merity et al. 2017);
      - ``weight_drop``: DropConnect on the recurrent weights, one mask per forward pass (AWD-LSTM);
      - ``zoneout``: each unit of h (and c) keeps its previous value with this probability (Krueger et al. 2016),
        a number or a pair (h, c); at evaluation the expectation.

    ``backend`` picks the engine, all proven equal by tests: ``"loop"`` steps the cell equations in Python
    (the readable reference), ``"native"`` calls torch.nn's fused kernels (oneDNN/cuDNN), ``"fused"`` is
    rnnkit's whole-layer kernel (hand-written BPTT, or the cell's parallel scan), and ``"auto"`` chooses per cell,
    options and device (``rnnkit.backends.resolve``).
    """

    def __init__(
        self,
        mode: str | CellSpec,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bias: bool = True,
        batch_first: bool = True,
        dropout: float = 0.0,
        bidirectional: bool = False,
        nonlinearity: str = "tanh",
        backend: str = "auto",
        zoneout: float | tuple[float, float] = 0.0,
        weight_drop: float = 0.0,
        dropout_input: float = 0.0,
        dropout_output: float = 0.0,
        locked_dropout: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.spec = cell_spec(mode)
        self.mode = self.spec.name
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.num_layers = check_size("num_layers", num_layers)
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        if "nonlinearity" in self.spec.options:
            self.options = self.spec.check_options(nonlinearity=nonlinearity)
        elif nonlinearity != "tanh":
            raise ValueError(f"nonlinearity applies to mode 'elman' only, got {nonlinearity!r} for {self.mode!r}")
        else:
            self.options = self.spec.check_options()
        self.nonlinearity = nonlinearity
        self.dropout = _check_rate("dropout", dropout)
        self.zoneout = _check_zoneout(zoneout)
        self.weight_drop = _check_rate("weight_drop", weight_drop)
        self.dropout_input = _check_rate("dropout_input", dropout_input)
        self.dropout_output = _check_rate("dropout_output", dropout_output)
        self.locked_dropout = bool(locked_dropout)
        if self.weight_drop > 0 and self.spec.recurrent_weight is None:
            raise ValueError(f"weight_drop needs a cell with recurrent weights, and {self.mode!r} has none")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.backend = backend
        usable = backends.usable_backends(self.plan())
        if backend != "auto" and backend not in usable:
            raise ValueError(
                f"backend {backend!r} cannot run this RNN (cell {self.mode!r}"
                + (", zoneout" if self.zoneout != (0.0, 0.0) else "")
                + f"); it can run on {usable}"
            )

        kw = {"device": device, "dtype": dtype}
        self._kinds: list[list[str]] = []  # per layer and direction, the parameter kinds in flat order
        self._flat_weight_names: list[str] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.num_directions
            for direction in range(self.num_directions):
                shapes = self.spec.shapes(layer_input, hidden_size, self.bias)
                for kind, shape in shapes.items():
                    name = self._param_name(kind, layer, direction)
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **kw)))
                    self._flat_weight_names.append(name)
                self._kinds.append(list(shapes))
        self.reset_parameters()

    @staticmethod
    def _param_name(kind: str, layer: int, direction: int) -> str:
        return f"{kind}_l{layer}" + ("_reverse" if direction == 1 else "")

    def reset_parameters(self) -> None:
        """The cell's initialisation: torch.nn's uniform in [-1/sqrt(H), 1/sqrt(H)] unless the spec says otherwise
        (LayerNorm gains 1 and shifts 0)."""
        with torch.no_grad():
            K = self.num_directions
            for k, kinds in enumerate(self._kinds):
                for kind in kinds:
                    p = getattr(self, self._param_name(kind, k // K, k % K))
                    self.spec.initialise(kind, p, self.hidden_size)

    def flat_weights(self) -> list[Tensor]:
        """Parameters in torch.nn's ``_flat_weights`` order: per layer, per direction, w_ih, w_hh, b_ih, b_hh."""
        return [getattr(self, name) for name in self._flat_weight_names]

    def layer_params(self, layer: int, direction: int = 0) -> dict[str, Tensor | None]:
        """One layer and direction's parameters by kind (every kind of the spec; a bias kind None without bias)."""
        kinds = self.spec.parameters(1, 1)
        return {kind: getattr(self, self._param_name(kind, layer, direction), None) for kind in kinds}

    def layer_weights(self, layer: int, direction: int = 0) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(weight_ih, weight_hh, bias_ih, bias_hh) of one layer and direction (biases None without bias)."""
        p = self.layer_params(layer, direction)
        return p["weight_ih"], p.get("weight_hh"), p.get("bias_ih"), p.get("bias_hh")

    def forward_weights(self) -> list[dict[str, Tensor | None]]:
        """Per layer and direction (k = layer * K + direction), the parameters a forward pass uses: with
        ``weight_drop`` while training, the recurrent weight gets a DropConnect mask, one per forward pass."""
        K = self.num_directions
        weights = [self.layer_params(k // K, k % K) for k in range(self.num_layers * K)]
        if self.weight_drop > 0 and self.training:
            kind = self.spec.recurrent_weight
            for w in weights:
                w[kind] = F.dropout(w[kind], self.weight_drop, True)  # kept weights scaled by 1/(1-p)
        return weights

    def step_function(self, layer: int, direction: int = 0) -> Callable[[Tensor, State], tuple[Tensor, State]]:
        """``y, state = step(x_t, state)`` for one layer and direction: the cell's equations (``CellSpec.step``),
        zoneout included."""
        return cell_step(self.plan(), self.layer_params(layer, direction))

    def plan(self) -> Plan:
        """What the backends run, read from this module now (its options may change, its mode does): the cell,
        sizes, directions, regularisers between and inside the layers, the backend asked for, the training flag."""
        return Plan(
            spec=self.spec,
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            bias=self.bias,
            batch_first=self.batch_first,
            options=self.options,
            dropout=self.dropout,
            locked_dropout=self.locked_dropout,
            zoneout=self.zoneout,
            backend=self.backend,
            training=self.training,
        )

    def initial_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        """The zero state: (L*K, B, H), or an LSTMState of two such tensors."""
        ref = self.weight_ih_l0
        shape = (self.num_layers * self.num_directions, batch_size, self.hidden_size)
        zeros = torch.zeros(shape, device=device or ref.device, dtype=dtype or ref.dtype)
        return LSTMState(zeros, zeros.clone()) if self.spec.has_cell else zeros

    def _check_state(self, state: State, batch_size: int) -> State:
        expected = (self.num_layers * self.num_directions, batch_size, self.hidden_size)
        has_cell = self.spec.has_cell
        names = ("state.h", "state.c") if has_cell else ("state",)
        if has_cell:
            if not isinstance(state, tuple) or len(state) != 2:
                raise TypeError(f"state must be an LSTMState(h, c) or a pair of Tensors, got {type(state).__name__}")
            parts = tuple(state)
        else:
            parts = (state,)
        for name, part in zip(names, parts, strict=True):
            if not isinstance(part, Tensor):
                raise TypeError(f"{name} must be a Tensor of shape {expected}, got {type(part).__name__}")
            if tuple(part.shape) != expected:
                raise ValueError(f"{name} must have shape (L*K, B, H)={expected}, got {tuple(part.shape)}")
        return LSTMState(*parts) if has_cell else parts[0]

    def resolved_backend(self, x: Tensor, *, padded: bool = False) -> str:
        """The backend a forward pass on ``x`` (B, T, D) uses (resolves ``"auto"``, ``rnnkit.backends.resolve``);
        ``padded``: with ``lengths`` below T."""
        K = self.num_directions
        weights = [self.layer_params(k // K, k % K) for k in range(self.num_layers * K)]
        return backends.resolve(self.plan(), x, weights, padded=padded)

    def forward(
        self,
        x: Tensor | PackedSequence,
        state: State = None,
        lengths: Tensor | Sequence[int] | None = None,
        *,
        mask: Tensor | None = None,
    ) -> tuple[Tensor | PackedSequence, State]:
        if mask is not None:
            if lengths is not None:
                raise ValueError("give lengths or mask, not both")
            if isinstance(x, PackedSequence):
                raise ValueError("mask must be None for a PackedSequence input (it carries its own lengths)")
            lengths = mask_to_lengths(mask if self.batch_first else mask.transpose(0, 1))
        packed = x if isinstance(x, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ValueError("lengths must be None for a PackedSequence input (it carries its own lengths)")
            x, lengths = pad_packed_sequence(packed, batch_first=True)  # (B, T, D), original order
        elif not self.batch_first and isinstance(x, Tensor):
            x = x.transpose(0, 1)  # (T, B, D) -> (B, T, D)
        x = check_sequence(x, self.input_size)
        B, T = x.shape[:2]
        # export hook (rnnkit.export): a trace records one path, so under torch.jit.trace / torch.onnx / torch.export
        # no shortcut that depends on the values, and torch.nn's kernels, which every exporter knows. torch.compile
        # runs the recurrence eagerly behind a graph break: Inductor unrolls torch.nn's GRU and Elman kernels over T
        # (minutes of compiling), and fused's C++ loops cannot run on its fake tensors
        exporting, compiling = _exporting(), torch.compiler.is_compiling()
        if lengths is not None:
            lengths = check_lengths(lengths, B, T)
            if not (exporting or compiling) and bool((lengths == T).all()):
                lengths = None  # nothing is padded: the unmasked path gives the same result
        state = self.initial_state(B, device=x.device, dtype=x.dtype) if state is None else self._check_state(state, B)
        if compiling and not exporting:
            out, state = _run_eagerly(self, x, state, lengths)  # (B, T, K*H), behind a graph break
        else:
            out, state = self._run(x, state, lengths)  # (B, T, K*H)
        if packed is not None:
            return _repack(out, packed), state
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, state

    def _run(self, x: Tensor, state: State, lengths: Tensor | None) -> tuple[Tensor, State]:
        """The checked, batch-first forward: locked dropout around the backend's run of every layer."""
        x = locked_dropout(x, self.dropout_input, self.training)  # (B, T, D)
        plan, weights = self.plan(), self.forward_weights()
        # export hook: under a tracer or torch.export, torch.nn's kernels wherever they compute this RNN
        native = _exporting() and "native" in backends.usable_backends(plan)
        run = backends.runner("native" if native else backends.resolve(plan, x, weights, padded=lengths is not None))
        out, state = run(plan, x, state, lengths, weights)  # (B, T, K*H)
        return locked_dropout(out, self.dropout_output, self.training), state

    def step(self, x_t: Tensor, state: State = None) -> tuple[Tensor, State]:
        """One time step through every layer, for generation: ``x_t`` (B, D) -> ``y_t`` (B, H), new state.

        The same as ``forward`` on a length-1 sequence (unidirectional layers only), through the fastest
        single-step path (``rnnkit.kernels.fast_step``) where the cell has one. The state layout is that of
        ``forward``.
        """
        if self.bidirectional:
            raise ValueError("step needs a unidirectional RNN (bidirectional=False), got bidirectional=True")
        if not isinstance(x_t, Tensor) or x_t.dim() != 2 or x_t.size(-1) != self.input_size:
            got = tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__
            raise ValueError(f"x_t must have shape (B, input_size={self.input_size}), got {got}")
        B = x_t.size(0)
        state = (
            self.initial_state(B, device=x_t.device, dtype=x_t.dtype) if state is None else self._check_state(state, B)
        )
        if can_fast(self, x_t, state):
            return fast_step(self, x_t, state)
        out, state = self._run(x_t.unsqueeze(1), state, None)  # (B, 1, H)
        return out.squeeze(1), state

    def extra_repr(self) -> str:
        s = f"{self.mode!r}, {self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in [
            ("bias", True),
            ("batch_first", True),
            ("dropout", 0.0),
            ("bidirectional", False),
            ("nonlinearity", "tanh"),
            ("backend", "auto"),
            ("zoneout", (0.0, 0.0)),
            ("weight_drop", 0.0),
            ("dropout_input", 0.0),
            ("dropout_output", 0.0),
            ("locked_dropout", False),
        ]:
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    def __prepare_scriptable__(self) -> nn.Module:
        """Export hook: ``torch.jit.script(rnn)`` scripts the torch.nn twin in rnnkit's contract (``rnnkit.export``):
        ``forward(x, state=None, lengths=None)`` on padded tensors (no ``PackedSequence``, no ``mask``); a cell
        torch.nn lacks, or zoneout, as its step in a loop (``rnnkit.steploop``, the evaluation model)."""
        return twin.scriptable(self, script=False)

    # --- conversion to and from torch.nn ---------------------------------------------------------------

    @classmethod
    def from_torch(cls, module: nn.RNNBase, *, backend: str = "auto") -> RNN:
        """An ``RNN`` with the configuration and (copied) weights of a ``torch.nn.RNN/LSTM/GRU``."""
        kw = twin.plan_kwargs(module)
        rnn = cls(**kw, backend=backend)
        rnn.load_state_dict(module.state_dict())
        return rnn.train(module.training)

    def to_torch(self) -> nn.RNNBase:
        """A ``torch.nn.RNN/LSTM/GRU`` with this configuration and a copy of these weights.

        Raises ValueError for a cell torch.nn does not have, and for zoneout (torch.nn has no equivalent); the
        training-only regularisers (weight-drop, locked dropout) are left behind, which changes nothing at
        evaluation.
        """
        ref = self.weight_ih_l0
        return twin.torch_twin(self.plan(), self.state_dict(), device=ref.device, dtype=ref.dtype)


def _exporting() -> bool:
    """Export hook: whether torch is tracing or exporting this forward (``rnnkit.export``)."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


# export hook: torch.compile's graph break around the recurrence. torch.compiler.disable would import torch._dynamo
# with rnnkit, a slow import for every process; torch's own lazy form imports it at the first call, under compile
_run_eagerly = torch._disable_dynamo(RNN._run)


def _repack(out: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack a padded, batch-first output (original order) with the batch order of ``like``, as torch.nn does."""
    order = like.sorted_indices
    B = int(like.batch_sizes[0])
    lengths = (torch.arange(B).unsqueeze(1) < like.batch_sizes.unsqueeze(0)).sum(1)  # (B,) sorted, descending
    if order is not None:
        out = out.index_select(0, order.to(out.device))  # rows in descending-length order
    data = pack_padded_sequence(out, lengths, batch_first=True, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
