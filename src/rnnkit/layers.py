"""The one skeleton of recurrent layers: layers x directions x dropout between layers, and the plan that drives it.

``run_layers`` is the only place that stacks: it runs, on time-major input, every direction of every layer through
its layer function, concatenates the directions on the feature axis and applies dropout between layers. Everything
that stacks goes through it: ``rnnkit.RNN``'s loop and fused backends (``run_plan``: the state in torch.nn's layout
(L*K, B, H)) and the combinators ``Recurrent``, ``Bidirectional`` and ``Stack`` (their states nested per layer and
direction). A layer function runs one direction of one layer::

    layer(x (T, B, D), state, mask (T, B, 1) bool or None) -> (y (T, B, H), state)

with ``mask`` True while t < length: past its length a row's state is frozen and its output zero.

A ``Plan`` is what a backend needs to know of an ``RNN``: the cell, the sizes, the directions, the regularisers and
the training flag, as one frozen value. ``RNN`` builds one per forward pass (``RNN.plan()``), so the backends and
their ``"auto"`` rule never see the module.

Shapes: B batch, T time, D input features, H hidden, L layers, K directions (1 or 2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells.spec import CellSpec, LSTMState
from rnnkit.sequence import lengths_to_mask, map_state

__all__ = [
    "Plan",
    "between_layers",
    "cell_step",
    "locked_dropout",
    "loop_layer",
    "run_layers",
    "run_plan",
    "stack_states",
    "state_at",
    "step_mask",
    "zone",
    "zoneout",
    "zoneout_weights",
]

State = Any  # a Tensor or a (named) tuple of Tensors
Step = Callable[[Tensor, State], tuple[Tensor, State]]
Layer = Callable[[Tensor, State, "Tensor | None"], tuple[Tensor, State]]


@dataclass(frozen=True)
class Plan:
    """What a backend runs: one ``RNN``'s configuration, read once per forward pass (``RNN.plan()``).

    ``options`` are the cell's step options (Elman's nonlinearity); ``backend`` the one asked for (``"auto"`` or a
    name); ``training`` the module's mode when the plan was made.
    """

    spec: CellSpec
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    bias: bool = True
    batch_first: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)
    dropout: float = 0.0
    locked_dropout: bool = False
    zoneout: tuple[float, float] = (0.0, 0.0)
    backend: str = "auto"
    training: bool = False

    @property
    def mode(self) -> str:
        return self.spec.name

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def zoned(self) -> bool:
        return self.zoneout != (0.0, 0.0)


# --- the skeleton ------------------------------------------------------------------------------------------------


def run_layers(
    layers: Sequence[Sequence[Layer]],
    x: Tensor,
    states: Sequence[State],
    mask: Tensor | None = None,
    between: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, list[State]]:
    """Every layer and direction over time-major ``x`` (T, B, D): ``layers[l][d]`` runs direction d of layer l from
    ``states[k]``, k counting directions across layers (k = l * K + d for K directions per layer); ``between``
    (dropout) acts on the input of every layer above the first. Returns the last layer's output (T, B, sum of its
    directions' H) and the final states, flat in the order of ``states``."""
    finals: list[State] = []
    for depth, directions in enumerate(layers):
        if depth > 0 and between is not None:
            x = between(x)
        outputs = []
        for layer in directions:
            y, state = layer(x, states[len(finals)], mask)
            outputs.append(y)  # (T, B, H)
            finals.append(state)
        x = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]  # (T, B, K*H)
    return x, finals


def loop_layer(step: Step, x: Tensor, state: State, mask: Tensor | None, reverse: bool) -> tuple[Tensor, State]:
    """``y_t, state = step(x_t, state)`` over time-major ``x`` (T, B, D), visiting T-1..0 when ``reverse``.

    With ``mask`` (T, B, 1), a row's state is frozen and its output zero on the steps past its length, so the
    final state is its last valid one and the reverse direction starts at each row's own end.
    """
    T = x.size(0)
    ys: list[Tensor] = [x] * T  # placeholders, every slot is written
    for t in range(T - 1, -1, -1) if reverse else range(T):
        y, new = step(x[t], state)  # y: (B, H)
        if mask is not None:
            m = mask[t]  # (B, 1)
            if state is None:  # None is the zero state: a row not yet started keeps zeros
                state = map_state(torch.zeros_like, new)
            new = map_state(lambda a, b, m=m: torch.where(m, a, b), new, state)
            y = torch.where(m, y, torch.zeros_like(y))
        ys[t] = y
        state = new
    return torch.stack(ys), state  # (T, B, H)


def step_mask(lengths: Tensor | None, T: int, device: torch.device) -> Tensor | None:
    """(B,) lengths -> the time-major mask (T, B, 1) the layers read, True while t < length; None for None.
    Contiguous: the C++ loops read it as a flat (T, B) array."""
    return None if lengths is None else lengths_to_mask(lengths, T).t().contiguous().unsqueeze(-1).to(device)


# --- RNN's view of the skeleton: torch.nn's state layout ----------------------------------------------------------


def state_at(hx: State, k: int, has_cell: bool) -> State:
    """Layer and direction k's state out of torch.nn's layout (L*K, B, H) (a pair of them with a memory cell)."""
    return LSTMState(hx[0][k], hx[1][k]) if has_cell else hx[k]


def stack_states(finals: Sequence[State], has_cell: bool) -> State:
    """``state_at`` undone: per layer and direction states -> (L*K, B, H) (an ``LSTMState`` with a memory cell)."""
    if has_cell:
        return LSTMState(torch.stack([s[0] for s in finals]), torch.stack([s[1] for s in finals]))
    return torch.stack(list(finals))  # (L*K, B, H)


PlanLayer = Callable[[int, Tensor, State, "Tensor | None", bool], tuple[Tensor, State]]


def run_plan(plan: Plan, x: Tensor, hx: State, lengths: Tensor | None, layer: PlanLayer) -> tuple[Tensor, State]:
    """The skeleton on an ``RNN``'s plan: batch-first ``x`` (B, T, D) and ``hx`` in torch.nn's layout, every layer
    and direction through ``layer(k, x (T, B, D), state, mask, reverse)``, dropout between layers as the plan says.
    Returns the output (B, T, K*H) and the final state in ``hx``'s layout."""
    K = plan.num_directions
    layers = [[partial(layer, depth * K + d, reverse=d == 1) for d in range(K)] for depth in range(plan.num_layers)]
    states = [state_at(hx, k, plan.spec.has_cell) for k in range(plan.num_layers * K)]
    between = partial(between_layers, p=plan.dropout, locked=plan.locked_dropout, training=plan.training)
    xt = x.transpose(0, 1).contiguous()  # (T, B, D): each step reads a contiguous (B, D) slice
    out, finals = run_layers(layers, xt, states, step_mask(lengths, x.size(1), x.device), between)
    return out.transpose(0, 1).contiguous(), stack_states(finals, plan.spec.has_cell)  # (B, T, K*H)


# --- the cell's step and the regularisers that act inside the skeleton -------------------------------------------


def cell_step(plan: Plan, weights: Mapping[str, Tensor | None]) -> Step:
    """``y, state = step(x_t, state)``: the cell's equations (``CellSpec.step``) on one layer and direction's
    parameters, with the plan's zoneout."""
    step = partial(_call_step, plan.spec.step, weights, plan.options)
    return zoneout(step, plan.spec, *plan.zoneout, plan.training) if plan.zoned else step


def _call_step(step, weights, options, x_t, state):
    return step(x_t, state, weights, **options)


def between_layers(x: Tensor, p: float, locked: bool, training: bool) -> Tensor:
    """Dropout on the time-major input of a layer above the first (T, B, F): torch.nn's (a fresh mask per step,
    drawn on the batch-first layout so the loop, fused and native backends draw the same masks under one seed)
    or ``locked``, one mask per sequence for all steps (Gal and Ghahramani 2016; Merity et al. 2017)."""
    if p == 0 or not training:
        return x
    if locked:
        return locked_dropout(x, p, True, time_dim=0)
    return F.dropout(x.transpose(0, 1).contiguous(), p, True).transpose(0, 1).contiguous()


def locked_dropout(x: Tensor, p: float, training: bool, time_dim: int = 1) -> Tensor:
    """Dropout with one mask per sequence, shared by all time steps: x (B, T, F) (or time-major with
    ``time_dim=0``), kept units scaled by 1/(1-p)."""
    if p == 0 or not training:
        return x
    shape = list(x.shape)
    shape[time_dim] = 1
    mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - p).div_(1 - p)  # (B, 1, F)
    return x * mask


def zone(new: Tensor, old: Tensor, p: float, training: bool) -> Tensor:
    """Zoneout (Krueger et al. 2016): each unit keeps its previous value with probability p while training;
    at evaluation the expectation, p * old + (1 - p) * new."""
    if training:
        keep = torch.rand_like(new) < p  # (B, H), a fresh mask every step
        return torch.where(keep, old, new)
    return torch.lerp(new, old, p)  # new + p * (old - new)


def zoneout(step: Step, spec: CellSpec, p_h: float, p_c: float, training: bool) -> Step:
    """``step`` with zoneout on h (and on c for cells with a memory cell)."""

    def zoned(x_t: Tensor, state: State) -> tuple[Tensor, State]:
        y, new = step(x_t, state)
        if spec.has_cell:
            new = LSTMState(zone(new.h, state.h, p_h, training), zone(new.c, state.c, p_c, training))
            h = new.h
        else:
            new = h = zone(new, state, p_h, training)
        return (h if spec.output_is_state else y), new

    return zoned


def zoneout_weights(spec: CellSpec, p_h: float, p_c: float, training: bool, like: Tensor, reverse: bool) -> Tensor:
    """Zoneout for one whole layer and direction of the fused kernels, (T, n, B, H) in time order for states
    ``like`` (T, B, H), n = 2 (h, c) for cells with a memory cell, else 1 (h).

    Training: a bool mask, True where the unit keeps its previous value (with probability p), drawn from torch's
    RNG exactly as ``zone`` draws them in the loop backend: one uniform (B, H) per visited step (T-1..0 in the
    reverse direction), h's before c's. One ``torch.rand`` for all steps draws the same numbers as one per step, so
    the two backends zone the same units under one seed. Evaluation: the weight p of the previous value everywhere
    (the expectation), in ``like``'s dtype.
    """
    T, B, H = like.shape
    n = 2 if spec.has_cell else 1
    p = torch.tensor((p_h, p_c)[:n], dtype=like.dtype, device=like.device).view(1, n, 1, 1)
    if not training:
        return p.expand(T, n, B, H).contiguous()
    keep = torch.rand(T, n, B, H, dtype=like.dtype, device=like.device) < p  # as zone's, in the order of the visits
    return keep.flip(0) if reverse else keep  # visit s is step T-1-s
