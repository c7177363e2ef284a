"""Recurrent layers: a cell run over time, stacked and in both directions.

- ``scan(step, x, state, lengths, reverse)``: the one time loop, for any ``y, state = step(x_t, state)``.
- ``Recurrent(cell)``: a cell module over time; ``Bidirectional`` and ``Stack`` combine them, so a custom cell
  gets direction, depth and masking for free.
- ``RNN(mode, ...)``: the torch.nn-compatible layer (Elman, LSTM or GRU; stacked; bidirectional; padded or
  packed batches) with a choice of backend.

Shapes: B batch, T time, D input features, H hidden, L layers, K directions (1 or 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.cells import LSTMState, check_nonlinearity, check_size, elman_step, gru_step, lstm_step
from rnnkit.sequence import check_lengths, flip_padded, map_state, mask_to_lengths

__all__ = ["BACKENDS", "MODES", "RNN", "Bidirectional", "Recurrent", "Stack", "register_backend", "scan"]

State = Any  # a Tensor or a (named) tuple of Tensors
Runner = Callable[["RNN", Tensor, State, "Tensor | None"], "tuple[Tensor, State]"]

MODES = ("elman", "lstm", "gru")
MODE_ALIASES = {"elman": "elman", "rnn": "elman", "lstm": "lstm", "gru": "gru"}
GATES = {"elman": 1, "lstm": 4, "gru": 3}
BACKENDS = ("auto", "loop", "native", "fused")


def scan(
    step: Callable[[Tensor, State], tuple[Tensor, State]],
    x: Tensor,
    state: State = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, State]:
    """Run ``y_t, state = step(x_t, state)`` over the time axis of ``x`` (B, T, D).

    Returns the outputs (B, T, H) and the final state. With ``lengths`` (B,), row b stops at step
    ``lengths[b]``: its state is frozen from then on (so the final state is its last valid one) and its
    outputs there are zero. With ``reverse``, each row runs from its own last valid step back to step 0.
    This is the plain loop every backend is checked against::

        for t in range(T):
            y[:, t], state = step(x[:, t], state)
    """
    if lengths is not None:  # scan is public: validate here too (a list, a wrong shape, a zero length)
        lengths = check_lengths(lengths, x.size(0), x.size(1))
    if reverse:
        x = flip_padded(x, lengths)
    T = x.size(1)
    mask = None
    if lengths is not None:
        steps = torch.arange(T).unsqueeze(1)  # (T, 1)
        mask = (steps < lengths.unsqueeze(0)).to(x.device).unsqueeze(-1)  # (T, B, 1)
    ys = []
    for t in range(T):
        y, new_state = step(x[:, t], state)  # y: (B, H)
        if mask is not None and t > 0:  # every length is >= 1, so step 0 is valid for all rows
            m = mask[t]  # (B, 1)
            new_state = map_state(lambda new, old, m=m: torch.where(m, new, old), new_state, state)
            y = torch.where(m, y, torch.zeros_like(y))
        ys.append(y)
        state = new_state
    out = torch.stack(ys, dim=1)  # (B, T, H)
    if reverse:
        out = flip_padded(out, lengths)
    return out, state


def _check_sequence(x: object, feature_size: int, what: str = "x", kinds: str = "a Tensor or PackedSequence") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be {kinds}, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(
            f"{what} must be 3-D (batch, time, features={feature_size}), got shape {tuple(x.shape)}; "
            f"for one unbatched sequence use {what}.unsqueeze(0)"
        )
    if x.size(-1) != feature_size:
        raise ValueError(f"{what}.size(-1) must equal input_size={feature_size}, got {x.size(-1)}")
    if x.size(1) == 0:
        raise ValueError(f"{what} must have at least one time step, got shape {tuple(x.shape)}")
    return x


class Recurrent(nn.Module):
    """Run a cell over time: ``output, state = Recurrent(cell)(x, state, lengths)``.

    ``x`` is (B, T, D), batch first; ``cell`` is any module with ``y, state = cell(x_t, state)`` (``None``
    meaning the zero state) and an ``input_size`` attribute, or leave it out to skip the size check. With
    ``reverse=True`` each row is read from its own end (``lengths``) back to its start.
    """

    def __init__(self, cell: nn.Module, reverse: bool = False) -> None:
        super().__init__()
        if not callable(cell):
            raise TypeError(f"cell must be a callable module, got {type(cell).__name__}")
        self.cell = cell
        self.reverse = bool(reverse)

    def forward(
        self, x: Tensor, state: State = None, lengths: Tensor | Sequence[int] | None = None
    ) -> tuple[Tensor, State]:
        D = getattr(self.cell, "input_size", None)
        kinds = "a padded Tensor (B, T, D) (pass lengths for a ragged batch)"
        _check_sequence(x, D if D is not None else x.size(-1) if isinstance(x, Tensor) else 0, kinds=kinds)
        if lengths is not None:
            lengths = check_lengths(lengths, x.size(0), x.size(1))
        return scan(self.cell, x, state, lengths, self.reverse)

    def extra_repr(self) -> str:
        return "reverse=True" if self.reverse else ""


class Bidirectional(nn.Module):
    """Two ``Recurrent`` layers read in opposite directions; outputs concatenated on the feature axis.

    ``state`` is ``(forward_state, backward_state)`` or ``None``; the same pair comes back.
    """

    def __init__(self, forward_layer: Recurrent, backward_layer: Recurrent) -> None:
        super().__init__()
        if forward_layer.reverse or not backward_layer.reverse:
            raise ValueError(
                "forward_layer must have reverse=False and backward_layer reverse=True, got "
                f"{forward_layer.reverse} and {backward_layer.reverse}"
            )
        self.forward_layer = forward_layer
        self.backward_layer = backward_layer

    def forward(self, x: Tensor, state: State = None, lengths=None) -> tuple[Tensor, State]:
        fwd_state, bwd_state = (None, None) if state is None else state
        y_f, fwd_state = self.forward_layer(x, fwd_state, lengths)  # (B, T, H_f)
        y_b, bwd_state = self.backward_layer(x, bwd_state, lengths)  # (B, T, H_b)
        return torch.cat([y_f, y_b], dim=-1), (fwd_state, bwd_state)  # (B, T, H_f + H_b)


class Stack(nn.Module):
    """Layers applied one after another, with dropout between them; the state is a list, one per layer."""

    def __init__(self, layers: Sequence[nn.Module], dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.layers = nn.ModuleList(layers)
        self.dropout = dropout

    def forward(self, x: Tensor, state: Sequence[State] | None = None, lengths=None):
        states = [None] * len(self.layers) if state is None else list(state)
        if len(states) != len(self.layers):
            raise ValueError(f"state must hold one entry per layer ({len(self.layers)}), got {len(states)}")
        for k, layer in enumerate(self.layers):
            if k > 0:
                x = F.dropout(x, self.dropout, self.training)
            x, states[k] = layer(x, states[k], lengths)
        return x, states


# --- the torch.nn-compatible layer -----------------------------------------------------------------------


def _run_loop(rnn: RNN, x: Tensor, hx: State, lengths: Tensor | None) -> tuple[Tensor, State]:
    """The readable reference: each layer and direction is ``scan`` over the cell's step function."""
    is_lstm = rnn.mode == "lstm"
    finals = []
    for layer in range(rnn.num_layers):
        if layer > 0:
            x = F.dropout(x, rnn.dropout, rnn.training)
        outputs = []
        for direction in range(rnn.num_directions):
            k = layer * rnn.num_directions + direction
            state = LSTMState(hx[0][k], hx[1][k]) if is_lstm else hx[k]
            out, state = scan(rnn.step_function(layer, direction), x, state, lengths, reverse=direction == 1)
            outputs.append(out)
            finals.append(state)
        x = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]  # (B, T, K*H)
    if is_lstm:
        return x, LSTMState(torch.stack([s.h for s in finals]), torch.stack([s.c for s in finals]))
    return x, torch.stack(finals)  # (L*K, B, H)


_VF_FUNCTIONS = {"lstm": "lstm", "gru": "gru", "tanh": "rnn_tanh", "relu": "rnn_relu"}


def _run_native(rnn: RNN, x: Tensor, hx: State, lengths: Tensor | None) -> tuple[Tensor, State]:
    """torch.nn's own fused kernels (oneDNN on CPU, cuDNN on CUDA), called on our parameters."""
    fn = getattr(_VF, _VF_FUNCTIONS[rnn.nonlinearity if rnn.mode == "elman" else rnn.mode])
    args = (rnn.flat_weights(), rnn.bias, rnn.num_layers, rnn.dropout, rnn.training, rnn.bidirectional)
    hx_arg = tuple(hx) if rnn.mode == "lstm" else hx
    if lengths is None:
        result = fn(x, hx_arg, *args, True)  # batch_first=True
        out, hidden = result[0], result[1:]
    else:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        order, unorder = packed.sorted_indices, packed.unsorted_indices
        hx_arg = map_state(lambda h: h.index_select(1, order), hx_arg)
        result = fn(packed.data, packed.batch_sizes, hx_arg, *args)
        out_packed = PackedSequence(result[0], packed.batch_sizes, order, unorder)
        out, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=x.size(1))
        hidden = tuple(h.index_select(1, unorder) for h in result[1:])
    return out, (LSTMState(*hidden) if rnn.mode == "lstm" else hidden[0])


_RUNNERS: dict[str, Runner] = {"loop": _run_loop, "native": _run_native}


def register_backend(name: str, runner: Runner) -> None:
    """Plug a fast path in as ``RNN(..., backend=name)``; it must agree with ``"loop"`` (see tests)."""
    if name not in BACKENDS or name == "auto":
        raise ValueError(f"name must be one of {BACKENDS[1:]}, got {name!r}")
    _RUNNERS[name] = runner


def _runner(name: str) -> Runner:
    if name not in _RUNNERS:
        import rnnkit.kernels  # noqa: F401  (registers the hand-written backends)
    if name not in _RUNNERS:
        raise ValueError(f"backend {name!r} is not available in this build")
    return _RUNNERS[name]


class RNN(nn.Module):
    """Elman, LSTM or GRU layers, stacked and optionally bidirectional, compatible with torch.nn.

    ``RNN("lstm", D, H, num_layers=L)`` has the parameters of ``torch.nn.LSTM(D, H, L)`` under the same names
    (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ``..._reverse`` for the backward
    direction) and the same default initialisation, so ``load_state_dict`` works both ways; see also
    ``from_torch`` and ``to_torch``.

    ``forward(x, state=None, lengths=None) -> (output, state)``:
      - ``x``: (B, T, D) with ``batch_first=True`` (the default here, unlike torch.nn), else (T, B, D); or a
        ``PackedSequence``, which gives a ``PackedSequence`` back.
      - ``state``: ``None`` for zeros; h0 (L*K, B, H) for Elman and GRU; ``(h0, c0)`` for LSTM.
      - ``lengths``: (B,) valid lengths of a padded batch, each in [1, T]. Outputs past a length are zero,
        the final state is each row's last valid state, and the reverse direction starts at each row's end.
      - ``mask``: the Keras-style alternative to ``lengths``, a (B, T) bool tensor ((T, B) when not
        ``batch_first``), True on valid steps; prefix masks only (anything else is a ValueError).
      - ``output``: (B, T, K*H) (or (T, B, K*H)); ``state`` in the layout above (an ``LSTMState`` for LSTM).

    ``backend`` picks the engine, all proven equal by tests: ``"loop"`` steps the cell equations in Python
    (the readable reference), ``"native"`` calls torch.nn's fused kernels (oneDNN/cuDNN), ``"fused"`` is
    rnnkit's hand-written BPTT, and ``"auto"`` chooses per mode and device (``rnnkit.kernels.auto_backend``).
    """

    def __init__(
        self,
        mode: str,
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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODE_ALIASES:
            raise ValueError(f"mode must be one of {tuple(MODE_ALIASES)}, got {mode!r}")
        self.mode = MODE_ALIASES[mode]
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.num_layers = check_size("num_layers", num_layers)
        self.nonlinearity = check_nonlinearity(nonlinearity)
        if self.mode != "elman" and nonlinearity != "tanh":
            raise ValueError(f"nonlinearity applies to mode 'elman' only, got {nonlinearity!r} for {self.mode!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.backend = backend

        G, H = GATES[self.mode], hidden_size
        kw = {"device": device, "dtype": dtype}
        self._flat_weight_names: list[str] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else H * self.num_directions
            for direction in range(self.num_directions):
                shapes = {"weight_ih": (G * H, layer_input), "weight_hh": (G * H, H)}
                if bias:
                    shapes |= {"bias_ih": (G * H,), "bias_hh": (G * H,)}
                for kind, shape in shapes.items():
                    name = self._param_name(kind, layer, direction)
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **kw)))
                    self._flat_weight_names.append(name)
        self.reset_parameters()

    @staticmethod
    def _param_name(kind: str, layer: int, direction: int) -> str:
        return f"{kind}_l{layer}" + ("_reverse" if direction == 1 else "")

    def reset_parameters(self) -> None:
        """torch.nn's default: every parameter uniform in [-1/sqrt(H), 1/sqrt(H)]."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def flat_weights(self) -> list[Tensor]:
        """Parameters in torch.nn's ``_flat_weights`` order: per layer, per direction, w_ih, w_hh, b_ih, b_hh."""
        return [getattr(self, name) for name in self._flat_weight_names]

    def layer_weights(self, layer: int, direction: int = 0) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(weight_ih, weight_hh, bias_ih, bias_hh) of one layer and direction (biases None without bias)."""
        get = partial(lambda kind: getattr(self, self._param_name(kind, layer, direction), None))
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def step_function(self, layer: int, direction: int = 0) -> Callable[[Tensor, State], tuple[Tensor, State]]:
        """``y, state = step(x_t, state)`` for one layer and direction: the cell equations of ``rnnkit.cells``."""
        w = self.layer_weights(layer, direction)
        if self.mode == "lstm":

            def step(x_t: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
                state = lstm_step(x_t, state, *w)
                return state.h, state

        elif self.mode == "gru":

            def step(x_t: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
                h = gru_step(x_t, h, *w)
                return h, h

        else:

            def step(x_t: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
                h = elman_step(x_t, h, *w, nonlinearity=self.nonlinearity)
                return h, h

        return step

    def initial_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        """The zero state: (L*K, B, H), or an LSTMState of two such tensors."""
        ref = self.weight_hh_l0
        shape = (self.num_layers * self.num_directions, batch_size, self.hidden_size)
        zeros = torch.zeros(shape, device=device or ref.device, dtype=dtype or ref.dtype)
        return LSTMState(zeros, zeros.clone()) if self.mode == "lstm" else zeros

    def _check_state(self, state: State, batch_size: int) -> State:
        expected = (self.num_layers * self.num_directions, batch_size, self.hidden_size)
        names = ("state.h", "state.c") if self.mode == "lstm" else ("state",)
        if self.mode == "lstm":
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
        return LSTMState(*parts) if self.mode == "lstm" else parts[0]

    def resolved_backend(self, x: Tensor) -> str:
        """The backend a forward pass on ``x`` uses (resolves ``"auto"``)."""
        if self.backend != "auto":
            return self.backend
        from rnnkit.kernels import auto_backend

        return auto_backend(self, x)

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
        x = _check_sequence(x, self.input_size)
        B, T = x.shape[:2]
        if lengths is not None:
            lengths = check_lengths(lengths, B, T)
            if bool((lengths == T).all()):
                lengths = None  # nothing is padded: the unmasked path gives the same result
        state = self.initial_state(B, device=x.device, dtype=x.dtype) if state is None else self._check_state(state, B)
        out, state = _runner(self.resolved_backend(x))(self, x, state, lengths)  # (B, T, K*H)
        if packed is not None:
            return _repack(out, packed), state
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, state

    def step(self, x_t: Tensor, state: State = None) -> tuple[Tensor, State]:
        """One time step through every layer, for generation: ``x_t`` (B, D) -> ``y_t`` (B, H), new state.

        The same as ``forward`` on a length-1 sequence (unidirectional layers only), through the fastest
        single-step path (``rnnkit.kernels.fast_step``). The state layout is that of ``forward``.
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
        from rnnkit.kernels import fast_step

        return fast_step(self, x_t, state)

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
        ]:
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    # --- conversion to and from torch.nn ---------------------------------------------------------------

    @classmethod
    def from_torch(cls, module: nn.RNNBase, *, backend: str = "auto") -> RNN:
        """An ``RNN`` with the configuration and (copied) weights of a ``torch.nn.RNN/LSTM/GRU``."""
        if not isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
            raise TypeError(f"module must be a torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
        if getattr(module, "proj_size", 0):
            raise ValueError(f"module.proj_size must be 0 (projections are not supported), got {module.proj_size}")
        mode = {nn.RNN: "elman", nn.LSTM: "lstm", nn.GRU: "gru"}[type(module)]
        ref = module.weight_ih_l0
        rnn = cls(
            mode,
            module.input_size,
            module.hidden_size,
            module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            dropout=float(module.dropout),
            bidirectional=module.bidirectional,
            nonlinearity=getattr(module, "nonlinearity", "tanh"),
            backend=backend,
            device=ref.device,
            dtype=ref.dtype,
        )
        rnn.load_state_dict(module.state_dict())
        return rnn.train(module.training)

    def to_torch(self) -> nn.RNNBase:
        """A ``torch.nn.RNN/LSTM/GRU`` with this configuration and a copy of these weights."""
        cls = {"elman": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[self.mode]
        kw: dict[str, Any] = {"nonlinearity": self.nonlinearity} if self.mode == "elman" else {}
        ref = self.weight_ih_l0
        module = cls(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
            device=ref.device,
            dtype=ref.dtype,
            **kw,
        )
        module.load_state_dict(self.state_dict())
        return module.train(self.training)


def _repack(out: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack a padded, batch-first output (original order) with the batch order of ``like``, as torch.nn does."""
    order = like.sorted_indices
    B = int(like.batch_sizes[0])
    lengths = (torch.arange(B).unsqueeze(1) < like.batch_sizes.unsqueeze(0)).sum(1)  # (B,) sorted, descending
    if order is not None:
        out = out.index_select(0, order.to(out.device))  # rows in descending-length order
    data = pack_padded_sequence(out, lengths, batch_first=True, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
