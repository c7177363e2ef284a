"""The backends of ``rnnkit.RNN``: one table, one skeleton.

A backend runs a whole ``RNN`` forward: ``runner(rnn, x (B, T, D), state, lengths, weights) -> (output (B, T,
K*H), state)``, where ``weights[k]`` holds the parameters of layer ``k // K``, direction ``k % K`` by kind (after
weight-drop). Three exist:

- ``"loop"``: the cell's step function (``CellSpec.step``), stepped in Python: the readable reference;
- ``"native"``: torch.nn's own kernels (oneDNN on CPU, cuDNN on CUDA) on rnnkit's parameters, for the cells
  torch.nn has;
- ``"fused"``: a whole-layer kernel per cell: hand-written BPTT (``rnnkit.kernels``) or the cell's own
  sequence form (``CellSpec.sequence``, the parallel scan of minGRU/minLSTM).

Loop and fused share ``run_layers``, the skeleton of layers, directions, dropout between layers and the state
layout, and differ only in the function that runs one layer and direction on time-major input,
``layer(x (T, B, D), state, mask (T, B, 1) or None, reverse) -> (y (T, B, H), state)``. The kernels never
import this module (no import cycle): they provide a table of layers by cell name (``kernels.fused.LAYERS``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import _VF, Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.cells.spec import CellSpec, LSTMState
from rnnkit.kernels import auto_backend
from rnnkit.kernels.fused import LAYERS, ZONEOUT
from rnnkit.sequence import lengths_to_mask, map_state

if TYPE_CHECKING:
    from rnnkit.recurrent import RNN

__all__ = [
    "BACKENDS",
    "available_backends",
    "backends_for",
    "loop_layer",
    "run_layers",
    "runner",
    "step_mask",
    "zoneout",
    "zoneout_weights",
]

State = Any
BACKENDS = ("auto", "loop", "native", "fused")


def available_backends(spec: CellSpec) -> tuple[str, ...]:
    """The backends that exist for ``spec``: loop always, native where torch.nn has the cell, fused where a kernel
    or a sequence form does."""
    out = ["loop"]
    if spec.torch_module is not None:
        out.append("native")
    if spec.name in LAYERS or spec.sequence is not None:
        out.append("fused")
    return tuple(out)


def zone(new: Tensor, old: Tensor, p: float, training: bool) -> Tensor:
    """Zoneout (Krueger et al. 2016): each unit keeps its previous value with probability p while training;
    at evaluation the expectation, p * old + (1 - p) * new."""
    if training:
        keep = torch.rand_like(new) < p  # (B, H), a fresh mask every step
        return torch.where(keep, old, new)
    return torch.lerp(new, old, p)  # new + p * (old - new)


def zoneout(step: Callable, spec: CellSpec, p_h: float, p_c: float, training: bool) -> Callable:
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


def loop_layer(step: Callable, x: Tensor, state: State, mask: Tensor | None, reverse: bool) -> tuple[Tensor, State]:
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


def _state_at(hx: State, k: int, spec: CellSpec) -> State:
    return LSTMState(hx[0][k], hx[1][k]) if spec.has_cell else hx[k]


def _stack_states(finals: list, spec: CellSpec) -> State:
    if spec.has_cell:
        return LSTMState(torch.stack([s[0] for s in finals]), torch.stack([s[1] for s in finals]))
    return torch.stack(finals)  # (L*K, B, H)


def step_mask(lengths: Tensor | None, T: int, device: torch.device) -> Tensor | None:
    """(B,) lengths -> the time-major mask (T, B, 1) the layers read, True while t < length; None for None.
    Contiguous: the C++ loops read it as a flat (T, B) array."""
    return None if lengths is None else lengths_to_mask(lengths, T).t().contiguous().unsqueeze(-1).to(device)


def run_layers(rnn: RNN, x: Tensor, hx: State, lengths: Tensor | None, layer_fn) -> tuple:
    """The skeleton of the loop and fused backends: every layer and direction through ``layer_fn(k, x, state,
    mask, reverse)`` on time-major input, dropout between layers, the final states stacked (L*K, B, H)."""
    mask = step_mask(lengths, x.size(1), x.device)  # (T, B, 1)
    xt = x.transpose(0, 1).contiguous()  # (T, B, D): each step reads a contiguous (B, D) slice
    finals = []
    K = rnn.num_directions
    for layer in range(rnn.num_layers):
        if layer > 0:
            xt = rnn.between_layers(xt)
        outputs = []
        for direction in range(K):
            k = layer * K + direction
            y, state = layer_fn(k, xt, _state_at(hx, k, rnn.spec), mask, direction == 1)
            outputs.append(y)  # (T, B, H)
            finals.append(state)
        xt = torch.cat(outputs, dim=-1) if K > 1 else outputs[0]  # (T, B, K*H)
    return xt.transpose(0, 1).contiguous(), _stack_states(finals, rnn.spec)  # (B, T, K*H)


def run_loop(rnn: RNN, x: Tensor, hx: State, lengths: Tensor | None, weights: list[dict]):
    """The readable reference: each layer and direction steps the cell's equations in Python."""

    def layer(k, xt, state, mask, reverse):
        return loop_layer(rnn.step_with(weights[k]), xt, state, mask, reverse)

    return run_layers(rnn, x, hx, lengths, layer)


def run_fused(rnn: RNN, x: Tensor, hx: State, lengths: Tensor | None, weights: list[dict]):
    """A whole-layer kernel per layer and direction: ``kernels.fused.LAYERS[cell]`` or the cell's sequence form.
    With zoneout, its weights for the layer are drawn just before it runs, where the loop draws them step by step."""
    fn = LAYERS.get(rnn.spec.name, rnn.spec.sequence)
    zoned = rnn.zoneout != (0.0, 0.0)

    def layer(k, xt, state, mask, reverse):
        options = dict(rnn.options)
        if zoned:
            like = (state.h if rnn.spec.has_cell else state).expand(xt.size(0), -1, -1)  # (T, B, H)
            options["zoneout"] = zoneout_weights(rnn.spec, *rnn.zoneout, rnn.training, like, reverse)
        return fn(xt, state, mask, reverse, weights[k], **options)

    return run_layers(rnn, x, hx, lengths, layer)


_VF_FUNCTIONS = {"lstm": "lstm", "gru": "gru", "tanh": "rnn_tanh", "relu": "rnn_relu"}


def run_native(rnn: RNN, x: Tensor, hx: State, lengths: Tensor | None, weights: list[dict]):
    """torch.nn's own fused kernels (oneDNN on CPU, cuDNN on CUDA), called on our parameters."""
    name = rnn.options["nonlinearity"] if rnn.mode == "elman" else rnn.mode
    fn = getattr(_VF, _VF_FUNCTIONS[name])
    flat = [w for layer in weights for w in layer.values() if w is not None]
    dropout = rnn.dropout if rnn.training else 0.0
    args = (flat, rnn.bias, rnn.num_layers, dropout, rnn.training, rnn.bidirectional)
    hx_arg = tuple(hx) if rnn.spec.has_cell else hx
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
    return out, (LSTMState(*hidden) if rnn.spec.has_cell else hidden[0])


RUNNERS = {"loop": run_loop, "native": run_native, "fused": run_fused}


def usable_backends(rnn: RNN) -> tuple[str, ...]:
    """The backends that compute what ``rnn`` asks for (``backends_for`` on its cell and options)."""
    return backends_for(rnn.spec, rnn.zoneout != (0.0, 0.0), rnn.locked_dropout and rnn.dropout > 0, rnn.num_layers)


def backends_for(spec: CellSpec, zoneout: bool, locked_between: bool, num_layers: int) -> tuple[str, ...]:
    """The backends that run ``spec`` with these options: zoneout is in the loop and in the fused kernels of
    ``kernels.fused.ZONEOUT`` (Elman, LSTM, GRU), never in torch.nn's; dropout masks shared over time between
    layers (``locked_between``) rule out native, whose dropout is torch.nn's."""
    out = available_backends(spec)
    if zoneout:
        out = tuple(b for b in out if b == "loop" or (b == "fused" and spec.name in ZONEOUT))
    if locked_between and num_layers > 1:
        out = tuple(b for b in out if b != "native")
    return out


# A cell's sequence form (the parallel scan of minGRU/minLSTM) runs from here down in state values per step (B * H),
# above it its step loop: the scan won on small steps and lost on large ones, whatever T (benchmarks/min_scan.py;
# the figures are in the README's cell table). A single step always goes to the loop.
SCAN_MAX_VALUES = 1024


def resolve(rnn: RNN, x: Tensor) -> str:
    """The backend a forward pass of ``rnn`` on ``x`` runs (``"auto"`` resolved).

    Rule: the cells torch.nn has follow ``rnnkit.kernels.auto_backend`` among the backends that can run the
    options (with zoneout, which native lacks: fused; locked dropout between layers: not native); a cell with a
    hand-written fused layer runs it; a cell with a sequence form runs it up to ``SCAN_MAX_VALUES`` state values per
    step on CPU (any size elsewhere) and for more than one step; else the loop.
    """
    usable = usable_backends(rnn)
    if rnn.backend != "auto":
        return rnn.backend
    if "native" in usable:
        choice = auto_backend(rnn, x)
        if choice in usable:
            return choice
    if "fused" in usable and rnn.spec.name not in LAYERS:  # the sequence form
        small = x.device.type != "cpu" or x.size(0) * rnn.hidden_size <= SCAN_MAX_VALUES
        return "fused" if small and x.size(1) > 1 else "loop"
    return "fused" if "fused" in usable else usable[0]


def runner(name: str) -> Callable:
    return RUNNERS[name]


def step_function(rnn: RNN, weights: dict) -> Callable:
    """``y, state = step(x_t, state)``: the cell's equations on one layer and direction's parameters."""
    return partial(_call_step, rnn.spec.step, weights, rnn.options)


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
