"""Combinators: a cell module over time, two of them in opposite directions, layers stacked.

- ``scan(step, x, state, lengths, reverse)``: the one time loop, for any ``y, state = step(x_t, state)``.
- ``Recurrent(cell)``: a cell module over time; ``Bidirectional`` and ``Stack`` combine them, so a custom cell
  gets direction, depth and masking for free.

All three are views over the one skeleton, ``rnnkit.layers.run_layers``, which ``rnnkit.RNN``'s loop and fused
backends run too: each combinator hands it its layer functions (time-major, one per direction) and its state nested
per layer and direction. Shapes: B batch, T time, D input features, H hidden.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.layers import loop_layer, run_layers, step_mask
from rnnkit.sequence import check_lengths

__all__ = ["Bidirectional", "Recurrent", "Stack", "check_sequence", "scan"]

State = Any  # a Tensor or a (named) tuple of Tensors
Layer = Callable[[Tensor, State, "Tensor | None"], tuple[Tensor, State]]  # time-major: rnnkit.layers.run_layers


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
    mask = None
    if lengths is not None:  # scan is public: validate here too (a list, a wrong shape, a zero length)
        lengths = check_lengths(lengths, x.size(0), x.size(1))
        mask = step_mask(lengths, x.size(1), x.device)  # (T, B, 1)
    out, state = loop_layer(step, x.transpose(0, 1), state, mask, reverse)  # (T, B, H)
    return out.transpose(0, 1), state


def check_sequence(x: object, feature_size: int, what: str = "x", kinds: str = "a Tensor or PackedSequence") -> Tensor:
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


def _over_time(
    layers: list[list[Layer]], x: object, states: list[State], lengths, between=None
) -> tuple[Tensor, list[State]]:
    """Batch-first ``x`` (B, T, D) through ``run_layers``: checked, time-major inside, (B, T, F) out."""
    kinds = "a padded Tensor (B, T, D) (pass lengths for a ragged batch)"
    x = check_sequence(x, x.size(-1) if isinstance(x, Tensor) else 0, kinds=kinds)
    mask = None
    if lengths is not None:
        mask = step_mask(check_lengths(lengths, x.size(0), x.size(1)), x.size(1), x.device)  # (T, B, 1)
    out, finals = run_layers(layers, x.transpose(0, 1), states, mask, between)  # (T, B, F)
    return out.transpose(0, 1), finals


def _directions(module: nn.Module, lengths) -> list[Layer]:
    """A combinator's layer functions for the skeleton, one per direction; any other module with the contract
    ``y, state = module(x (B, T, D), state, lengths)`` is one direction, run batch-first as it is."""
    if isinstance(module, (Recurrent, Bidirectional)):
        return module.directions()

    def layer(x: Tensor, state: State, mask) -> tuple[Tensor, State]:
        y, state = module(x.transpose(0, 1), state, lengths)
        return y.transpose(0, 1), state

    return [layer]


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

    def directions(self) -> list[Layer]:
        return [self.layer]

    def layer(self, x: Tensor, state: State, mask: Tensor | None) -> tuple[Tensor, State]:
        """The skeleton's layer function: the cell over time-major ``x`` (T, B, D)."""
        D = getattr(self.cell, "input_size", None)
        if D is not None and x.size(-1) != D:
            raise ValueError(f"x.size(-1) must equal input_size={D}, got {x.size(-1)}")
        return loop_layer(self.cell, x, state, mask, self.reverse)

    def forward(
        self, x: Tensor, state: State = None, lengths: Tensor | Sequence[int] | None = None
    ) -> tuple[Tensor, State]:
        out, (state,) = _over_time([self.directions()], x, [state], lengths)
        return out, state

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

    def directions(self) -> list[Layer]:
        return [self.forward_layer.layer, self.backward_layer.layer]

    def forward(self, x: Tensor, state: State = None, lengths=None) -> tuple[Tensor, State]:
        states = [None, None] if state is None else list(state)
        out, finals = _over_time([self.directions()], x, states, lengths)  # (B, T, H_f + H_b)
        return out, tuple(finals)


class Stack(nn.Module):
    """Layers applied one after another, with dropout between them; the state is a list, one per layer (a
    ``Bidirectional`` layer's a pair). Dropout is torch.nn's, a fresh mask per step, on each layer's output."""

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
        layers = [_directions(layer, lengths) for layer in self.layers]
        flat = [s for dirs, st in zip(layers, states, strict=True) for s in (_split(st) if len(dirs) == 2 else [st])]
        between = partial(_dropout, p=self.dropout, training=self.training)
        out, finals = _over_time(layers, x, flat, lengths, between)
        per_layer, k = [], 0
        for dirs in layers:  # flat finals back into one entry per layer
            per_layer.append(tuple(finals[k : k + 2]) if len(dirs) == 2 else finals[k])
            k += len(dirs)
        return out, per_layer


def _split(state: State) -> list[State]:
    return [None, None] if state is None else list(state)


def _dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """torch.nn's dropout on the batch-first view of a layer's time-major output (T, B, F), in that view's memory
    order: the masks of ``F.dropout(layer(x)[0], p)``, so a ``Stack`` equals its layers called one by one."""
    return F.dropout(x.transpose(0, 1), p, training).transpose(0, 1)
