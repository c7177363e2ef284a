"""Cell modules: one step of any cell in the table, ``y, state = cell(x_t, state)``.

``Cell(mode, input_size, hidden_size)`` owns one layer's parameters, named by kind (``weight_ih``, ``weight_hh``,
``bias_ih``, ``bias_hh`` and whatever else the spec lists) and calls the spec's step function. ``ElmanCell``,
``LSTMCell`` and ``GRUCell`` are the same with the mode fixed; their parameters, gate order and initialisation
are those of ``torch.nn.RNNCell``, ``LSTMCell`` and ``GRUCell``, so a ``state_dict`` loads either way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit.cells.spec import CellSpec, LSTMState, cell_spec

__all__ = ["Cell", "ElmanCell", "GRUCell", "LSTMCell", "check_size"]


def check_size(name: str, value: object) -> int:
    """Validate a positive integer size argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


class Cell(nn.Module):
    """One step of the cell ``mode`` (a name from ``rnnkit.CELLS`` or a ``CellSpec``).

    ``forward(x_t (B, D), state=None) -> (y_t (B, H), state)``; ``None`` is the zero state, and the state is h
    (B, H) or ``LSTMState(h, c)`` for cells with a memory cell. Options of the cell (Elman's ``nonlinearity``)
    are keyword arguments.

    Example::

        cell = Cell("lstm", 8, 16)
        state = None
        for x_t in x.unbind(1):          # x: (B, T, 8)
            y, state = cell(x_t, state)  # y: (B, 16)
    """

    def __init__(
        self,
        mode: str | CellSpec,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **options,
    ) -> None:
        super().__init__()
        self.spec = cell_spec(mode)
        self.mode = self.spec.name
        self.options = self.spec.check_options(**options)
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.bias = bool(bias)
        for kind, shape in self.spec.shapes(input_size, hidden_size, self.bias).items():
            self.register_parameter(kind, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        for kind in self.spec.parameters(input_size, hidden_size):
            if not hasattr(self, kind):
                self.register_parameter(kind, None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The spec's initialisation (torch.nn's uniform in [-1/sqrt(H), 1/sqrt(H)] unless it says otherwise)."""
        with torch.no_grad():
            for kind, p in self.named_parameters():
                self.spec.initialise(kind, p, self.hidden_size)

    def weights(self) -> dict[str, Tensor | None]:
        return {kind: getattr(self, kind) for kind in self.spec.parameters(self.input_size, self.hidden_size)}

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor of shape (B, {self.input_size}), got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"x must be 2-D (B, input_size={self.input_size}), got shape {tuple(x.shape)}")
        if x.size(-1) != self.input_size:
            raise ValueError(f"x.size(-1) must equal input_size={self.input_size}, got {x.size(-1)}")

    def _check_hidden(self, name: str, h: Tensor, x: Tensor) -> None:
        expected = (x.size(0), self.hidden_size)
        if not isinstance(h, Tensor):
            raise TypeError(f"{name} must be a Tensor of shape {expected}, got {type(h).__name__}")
        if tuple(h.shape) != expected:
            raise ValueError(f"{name} must have shape (B, H)={expected}, got {tuple(h.shape)}")

    def _check_state(self, state, x: Tensor):
        if not self.spec.has_cell:
            self._check_hidden("state", state, x)
            return state
        if not isinstance(state, tuple) or len(state) != 2:
            raise TypeError(f"state must be an LSTMState(h, c) or a pair of Tensors, got {type(state).__name__}")
        self._check_hidden("state.h", state[0], x)
        self._check_hidden("state.c", state[1], x)
        return LSTMState(*state)

    def initial_state(self, batch_size: int, *, device=None, dtype=None):
        """The zero state for ``batch_size`` sequences."""
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return LSTMState(zeros, zeros.clone()) if self.spec.has_cell else zeros

    def forward(self, x: Tensor, state=None):
        self._check_input(x)
        if state is None:
            state = self.initial_state(x.size(0), device=x.device, dtype=x.dtype)
        else:
            state = self._check_state(state, x)
        return self.spec.step(x, state, self.weights(), **self.options)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")
        defaults = {name: allowed[0] for name, allowed in self.spec.options.items()}
        s += "".join(f", {k}={v!r}" for k, v in self.options.items() if v != defaults[k])
        return s if type(self) is not Cell else f"{self.mode!r}, " + s


class ElmanCell(Cell):
    """Elman (vanilla) RNN cell, the same parameters as ``torch.nn.RNNCell``.

    Math::

        h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h)      (or relu)
        y_t = h_t

    ``W_xh`` is ``weight_ih`` (H, D), ``W_hh`` is ``weight_hh`` (H, H) and ``b_h = bias_ih + bias_hh``. The
    output layer ``y_t = W_hy h_t + b_y`` of the textbook form is a separate ``nn.Linear`` in rnnkit.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh", *,
                 device=None, dtype=None) -> None:  # fmt: skip
        super().__init__("elman", input_size, hidden_size, bias, device=device, dtype=dtype, nonlinearity=nonlinearity)

    @property
    def nonlinearity(self) -> str:
        return self.options["nonlinearity"]


class LSTMCell(Cell):
    """Long short-term memory cell, the same parameters and gate order (i, f, g, o) as ``torch.nn.LSTMCell``.

    Math::

        i = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)     input gate
        f = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf)     forget gate
        g = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)        candidate
        o = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho)     output gate
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)
        y_t = h_t

    ``weight_ih`` is (4H, D) = [W_ii; W_if; W_ig; W_io] and ``weight_hh`` is (4H, H). The state is
    ``LSTMState(h, c)``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, device=None, dtype=None) -> None:
        super().__init__("lstm", input_size, hidden_size, bias, device=device, dtype=dtype)


class GRUCell(Cell):
    """Gated recurrent unit, the same parameters and gate order (r, z, n) as ``torch.nn.GRUCell``.

    Math::

        r = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)     reset gate
        z = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)     update gate
        n = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn))  candidate
        h_t = (1 - z) * n + z * h_{t-1}
        y_t = h_t

    This is the cuDNN/torch.nn variant (reset applied after the product with W_hn); Cho et al. (2014) put
    ``r * h_{t-1}`` inside the product.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, device=None, dtype=None) -> None:
        super().__init__("gru", input_size, hidden_size, bias, device=device, dtype=dtype)
