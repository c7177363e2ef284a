"""Any cell of the table as TorchScript: the cell's step traced once, the loop over time scripted around it.

``rnnkit.export`` needs a graph in which T stays free. torch.nn's three cells have their own operators (the twin,
``rnnkit.twin``); every other cell of the table, and zoneout on any cell, go out through this module::

    step(x_t (B, D), h (B, H), c (B, H)) -> (y_t, h, c)     torch.jit.trace of the cell's step (CellSpec.step,
                                                            with zoneout), one per layer and direction
    for t in range(T):                                      torch.jit.script: a TorchScript loop, which
        y_t, h', c' = step(x[t], h, c)                      torch.onnx.export writes as an ONNX Loop
        h, c = where(t < length, (h', c'), (h, c))          past its length a row's state is frozen
        y[t] = where(t < length, y_t, 0)                    and its output zero, as in rnnkit.RNN

The step has no control flow that depends on values, so tracing it records the cell's equations exactly and leaves
the batch free; the loop is scripted, so T stays free. Cells without a memory cell carry a ``c`` they pass through
unchanged, so every step has one signature. This is the evaluation model: dropout, locked dropout and weight-drop
act in training only, and zoneout is its expectation ``lerp(new, old, p)`` (``rnnkit.layers.zone``).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional

import torch
from torch import Tensor, nn

from rnnkit.cells.spec import LSTMState
from rnnkit.layers import Plan, cell_step
from rnnkit.twin import LSTMState as ScriptedLSTMState

__all__ = ["LoopLSTM", "LoopRNN", "script_loop"]


class _Step(nn.Module):
    """One layer and direction's step on its own parameters: ``(x_t, h, c) -> (y_t, h, c)`` (the one to trace)."""

    def __init__(self, plan: Plan, params: dict[str, Tensor | None]) -> None:
        super().__init__()
        self.plan = plan
        self.kinds = list(params)
        for kind, p in params.items():
            self.register_parameter(kind, None if p is None else nn.Parameter(p.detach().clone(), requires_grad=False))

    def forward(self, x_t: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        step = cell_step(self.plan, {kind: getattr(self, kind) for kind in self.kinds})
        if self.plan.spec.has_cell:
            y, (h, c) = step(x_t, LSTMState(h, c))
            return y, h, c
        y, h = step(x_t, h)
        return y, h, c


class _Direction(nn.Module):
    """One direction of one layer over time-major ``x`` (T, B, D): the traced step in a scripted loop."""

    __constants__ = ("reverse",)  # a constant: TorchScript folds the branches on it

    def __init__(self, step: nn.Module, reverse: bool) -> None:
        super().__init__()
        self.step = step
        self.reverse = reverse

    def forward(self, x: Tensor, h: Tensor, c: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        T = x.size(0)
        ys: list[Tensor] = []
        for i in range(T):
            t = T - 1 - i if self.reverse else i
            y, h_new, c_new = self.step(x[t], h, c)  # (B, H) each
            m = mask[t]  # (B, 1)
            h = torch.where(m, h_new, h)
            c = torch.where(m, c_new, c)
            ys.append(torch.where(m, y, torch.zeros_like(y)))
        # (T, B, H) in the order visited; the shape restated, as ONNX's shape inference can lose the rank of a
        # Loop's stacked outputs (a stacked bidirectional LSTM's second layer), which the exporter needs for cat
        out = torch.stack(ys).reshape(T, x.size(1), -1)
        if self.reverse:
            out = out.flip([0])  # back in time order
        return out, h, c


class _Forward(nn.Module):
    """A unidirectional layer: x (T, B, D), h0 and c0 (1, B, H) -> y (T, B, H), hn and cn (1, B, H)."""

    def __init__(self, step: nn.Module) -> None:
        super().__init__()
        self.forward_direction = _Direction(step, reverse=False)

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y, h, c = self.forward_direction(x, h0[0], c0[0], mask)
        return y, h.unsqueeze(0), c.unsqueeze(0)


class _Bidirectional(nn.Module):
    """A bidirectional layer: x (T, B, D), h0 and c0 (2, B, H) -> y (T, B, 2H), hn and cn (2, B, H)."""

    def __init__(self, forward_step: nn.Module, backward_step: nn.Module) -> None:
        super().__init__()
        self.forward_direction = _Direction(forward_step, reverse=False)
        self.backward_direction = _Direction(backward_step, reverse=True)

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y_f, h_f, c_f = self.forward_direction(x, h0[0], c0[0], mask)
        y_b, h_b, c_b = self.backward_direction(x, h0[1], c0[1], mask)
        return torch.cat([y_f, y_b], dim=-1), torch.stack([h_f, h_b]), torch.stack([c_f, c_b])


class _Stack(nn.Module):
    """Every layer on batch-first ``x`` (B, T, D) and states (L*K, B, H), layer l's at rows l*K .. l*K+K-1."""

    __constants__ = ("num_directions",)

    def __init__(self, layers: list[nn.Module], num_directions: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.num_directions = num_directions

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor, lengths: Optional[Tensor]):  # noqa: UP045
        T, B = x.size(1), x.size(0)
        if lengths is None:
            mask = torch.ones(T, B, 1, dtype=torch.bool, device=x.device)
        else:
            steps = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
            mask = (steps < lengths.to(x.device).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1), True while t < length
        y = x.transpose(0, 1)  # (T, B, D)
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        K = self.num_directions
        for depth, layer in enumerate(self.layers):  # unrolled: depth is a constant in each copy
            y, h, c = layer(y, h0[depth * K : depth * K + K], c0[depth * K : depth * K + K], mask)  # (T, B, K*H)
            hs.append(h)
            cs.append(c)
        return y.transpose(0, 1), torch.cat(hs), torch.cat(cs)  # (B, T, K*H), (L*K, B, H) x 2


class LoopRNN(nn.Module):
    """``rnnkit.RNN``'s contract for a cell without a memory cell: ``output, hn = rnn(x, h0=None, lengths=None)``.

    x (B, T, D) (batch_first, else (T, B, D)); h0 (L*K, B, H); lengths (B,) int64 in [1, T]. Scriptable.
    """

    __constants__ = ("batch_first", "num_states", "hidden_size")

    def __init__(self, stack: nn.Module, batch_first: bool, num_states: int, hidden_size: int) -> None:
        super().__init__()
        self.stack = stack
        self.batch_first = batch_first
        self.num_states = num_states  # L*K
        self.hidden_size = hidden_size

    def forward(self, x: Tensor, state: Optional[Tensor] = None, lengths: Optional[Tensor] = None):  # noqa: UP045
        if not self.batch_first:
            x = x.transpose(0, 1)  # (B, T, D)
        shape = [self.num_states, x.size(0), self.hidden_size]
        h0 = torch.zeros(shape, dtype=x.dtype, device=x.device) if state is None else state
        out, hn, _ = self.stack(x, h0, torch.zeros_like(h0), lengths)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, hn


class LoopLSTM(nn.Module):
    """``rnnkit.RNN``'s contract for a cell with a memory cell: ``output, LSTMState(hn, cn) = rnn(x, (h0, c0),
    lengths)``. Scriptable."""

    __constants__ = ("batch_first", "num_states", "hidden_size")

    def __init__(self, stack: nn.Module, batch_first: bool, num_states: int, hidden_size: int) -> None:
        super().__init__()
        self.stack = stack
        self.batch_first = batch_first
        self.num_states = num_states  # L*K
        self.hidden_size = hidden_size

    def forward(self, x: Tensor, state: Optional[tuple[Tensor, Tensor]] = None,  # noqa: UP045
                lengths: Optional[Tensor] = None) -> tuple[Tensor, ScriptedLSTMState]:  # noqa: UP045  # fmt: skip
        if not self.batch_first:
            x = x.transpose(0, 1)  # (B, T, D)
        if state is None:
            shape = [self.num_states, x.size(0), self.hidden_size]
            h0 = torch.zeros(shape, dtype=x.dtype, device=x.device)
            c0 = torch.zeros_like(h0)
        else:
            h0, c0 = state
        out, hn, cn = self.stack(x, h0, c0, lengths)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, ScriptedLSTMState(hn, cn)


def _trace_step(step: _Step, input_size: int, hidden_size: int, like: Tensor) -> torch.jit.ScriptModule:
    example = (like.new_zeros(2, input_size), like.new_zeros(2, hidden_size), like.new_zeros(2, hidden_size))
    with warnings.catch_warnings():
        # the tracer warns on Python ints it records (the gates' chunk sizes, the norms' feature size): they are the
        # hidden size, fixed by the weights; the batch is never read
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit, still ships it
        return torch.jit.trace(step.eval(), example, check_trace=False)


def script_loop(rnn: Any, *, script: bool = True) -> nn.Module:
    """An ``rnnkit.RNN`` in evaluation mode as a ``LoopRNN``/``LoopLSTM`` with a copy of its weights, its loop over
    time scripted (``script=False``: nothing scripted yet, for ``torch.jit.script``, which scripts it whole through
    ``RNN.__prepare_scriptable__``). The module scripts, traces, and exports to ONNX with T free.

    Works for every cell of the table and every regulariser (the evaluation model; see the module docstring).
    """
    plan: Plan = dataclasses.replace(rnn.plan(), training=False, dropout=0.0)
    K = plan.num_directions
    layers: list[nn.Module] = []
    for layer in range(plan.num_layers):
        layer_input = plan.input_size if layer == 0 else plan.hidden_size * K
        steps = [_trace_step(_Step(plan, rnn.layer_params(layer, d)), layer_input, plan.hidden_size, rnn.weight_ih_l0)
                 for d in range(K)]  # fmt: skip
        layers.append(_Bidirectional(*steps) if K == 2 else _Forward(*steps))
    stack = _Stack(layers, K)
    cls = LoopLSTM if plan.spec.has_cell else LoopRNN
    if script:
        # the loop scripted, its wrapper not: a trace of the task's graph goes through the wrapper (the zero state
        # and the tuple of an LSTM's state resolved there; the ONNX exporter cannot infer the ranks through their
        # scripted branches) and calls the scripted stack, whose loops it keeps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit, still ships it
            stack = torch.jit.script(stack)
    return cls(stack, plan.batch_first, plan.num_layers * K, plan.hidden_size).eval()
