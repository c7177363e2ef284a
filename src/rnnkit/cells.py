"""Recurrent cells: one time step of Elman, LSTM and GRU.

Every cell has one contract, ``y, state = cell(x_t, state)``: ``x_t`` is (B, D), ``state`` is the previous
state (``None`` means zeros) and ``y`` is the step's output (B, H). Parameter names, shapes, gate order and
default initialisation are those of ``torch.nn.RNNCell``, ``torch.nn.LSTMCell`` and ``torch.nn.GRUCell``, so a
``state_dict`` loads either way.

The math of each cell lives in a plain function (``elman_step``, ``lstm_step``, ``gru_step``) that takes the
weights as arguments; the modules own the parameters and call it. ``rnnkit.RNN`` calls the same functions
with its own ``weight_ih_l{k}`` parameters, so there is one copy of each equation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "LSTMState",
    "elman_step",
    "gru_step",
    "lstm_step",
]

NONLINEARITIES = ("tanh", "relu")


class LSTMState(NamedTuple):
    """State of an LSTM: hidden ``h`` and cell ``c``, each (..., B, H)."""

    h: Tensor
    c: Tensor


def elman_step(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """One Elman step, ``h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h)``; returns h_t (B, H).

    In torch's names ``W_xh`` is ``weight_ih`` and ``b_h`` is split into ``bias_ih + bias_hh``.
    """
    pre = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)  # (B, H)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def lstm_step(
    x: Tensor,
    state: LSTMState,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> LSTMState:
    """One LSTM step (gate order i, f, g, o as in torch.nn.LSTM); returns LSTMState(h_t, c_t)."""
    h, c = state
    gates = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)  # 4 x (B, H)
    i = torch.sigmoid(i)
    f = torch.sigmoid(f)
    g = torch.tanh(g)
    o = torch.sigmoid(o)
    c = f * c + i * g
    h = o * torch.tanh(c)
    return LSTMState(h, c)


def gru_step(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> Tensor:
    """One GRU step (gate order r, z, n as in torch.nn.GRU); returns h_t (B, H).

    This is the variant of cuDNN and torch.nn, where the reset gate multiplies ``W_hn h + b_hn`` after the
    matrix product; Cho et al. (2014) apply it to h before the product.
    """
    gi = F.linear(x, weight_ih, bias_ih)  # (B, 3H)
    gh = F.linear(h, weight_hh, bias_hh)  # (B, 3H)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)  # 3 x (B, H)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)  # 3 x (B, H)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def check_size(name: str, value: object) -> int:
    """Validate a positive integer size argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def check_nonlinearity(nonlinearity: object) -> str:
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    return nonlinearity  # type: ignore[return-value]


class _Cell(nn.Module):
    """Parameters ``weight_ih`` (G*H, D), ``weight_hh`` (G*H, H), ``bias_ih``/``bias_hh`` (G*H) for G gates."""

    num_gates = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.bias = bool(bias)
        kw = {"device": device, "dtype": dtype}
        G, H = self.num_gates, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G * H, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(G * H, H, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G * H, **kw))
            self.bias_hh = nn.Parameter(torch.empty(G * H, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's default: every parameter uniform in [-1/sqrt(H), 1/sqrt(H)]."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

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

    def initial_state(self, batch_size: int, *, device=None, dtype=None):
        """The zero state for ``batch_size`` sequences."""
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")


class ElmanCell(_Cell):
    """Elman (vanilla) RNN cell, the same parameters as ``torch.nn.RNNCell``.

    Math::

        h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h)      (or relu)
        y_t = h_t

    ``W_xh`` is ``weight_ih`` (H, D), ``W_hh`` is ``weight_hh`` (H, H) and ``b_h = bias_ih + bias_hh``. The
    output layer ``y_t = W_hy h_t + b_y`` of the textbook form is a separate ``nn.Linear`` in rnnkit.

    Example::

        cell = ElmanCell(8, 16)
        h = None
        for x_t in x.unbind(1):          # x: (B, T, 8)
            y, h = cell(x_t, h)          # y, h: (B, 16)
    """

    num_gates = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        *,
        device=None,
        dtype=None,
    ) -> None:
        self.nonlinearity = check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        if state is None:
            state = self.initial_state(x.size(0), device=x.device, dtype=x.dtype)
        else:
            self._check_hidden("state", state, x)
        h = elman_step(x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity)
        return h, h

    def extra_repr(self) -> str:
        nl = "" if self.nonlinearity == "tanh" else f", nonlinearity={self.nonlinearity!r}"
        return super().extra_repr() + nl


class LSTMCell(_Cell):
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

    num_gates = 4

    def forward(self, x: Tensor, state: LSTMState | tuple[Tensor, Tensor] | None = None):
        self._check_input(x)
        if state is None:
            state = self.initial_state(x.size(0), device=x.device, dtype=x.dtype)
        else:
            if not isinstance(state, tuple) or len(state) != 2:
                raise TypeError(f"state must be an LSTMState(h, c) or a pair of Tensors, got {type(state).__name__}")
            self._check_hidden("state.h", state[0], x)
            self._check_hidden("state.c", state[1], x)
            state = LSTMState(*state)
        state = lstm_step(x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return state.h, state

    def initial_state(self, batch_size: int, *, device=None, dtype=None) -> LSTMState:
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return LSTMState(zeros, zeros.clone())


class GRUCell(_Cell):
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

    num_gates = 3

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        if state is None:
            state = self.initial_state(x.size(0), device=x.device, dtype=x.dtype)
        else:
            self._check_hidden("state", state, x)
        h = gru_step(x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h, h
