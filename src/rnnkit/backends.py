"""The backends of ``rnnkit.RNN``: one table, the rule behind ``"auto"``, and a plan in, never the module.

A backend runs a whole ``RNN`` forward from its plan (``rnnkit.layers.Plan``): ``runner(plan, x (B, T, D), state,
lengths, weights) -> (output (B, T, K*H), state)``, where ``weights[k]`` holds the parameters of layer ``k // K``,
direction ``k % K`` by kind (after weight-drop). Three exist:

- ``"loop"``: the cell's step function (``CellSpec.step``), stepped in Python: the readable reference;
- ``"native"``: torch.nn's own kernels (oneDNN on CPU, cuDNN on CUDA) on rnnkit's parameters, for the cells
  torch.nn has;
- ``"fused"``: a whole-layer kernel per cell: hand-written BPTT (``rnnkit.kernels``) or the cell's own
  sequence form (``CellSpec.sequence``, the parallel scan of minGRU/minLSTM).

Loop and fused run on the one skeleton of layers, directions, dropout between layers and the state layout
(``rnnkit.layers.run_plan``) and differ only in the function that runs one layer and direction on time-major input.
The kernels never import this module: they provide a table of layers by cell name (``kernels.fused.LAYERS``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import _VF, Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.cells.spec import CellSpec, LSTMState
from rnnkit.kernels.extension import ops as cpp_loops
from rnnkit.kernels.extension import wanted
from rnnkit.kernels.fused import LAYERS, ZONEOUT
from rnnkit.layers import Plan, cell_step, loop_layer, run_plan, zoneout_weights
from rnnkit.sequence import map_state

__all__ = [
    "BACKENDS",
    "auto_backend",
    "available_backends",
    "backends_for",
    "resolve",
    "runner",
    "usable_backends",
]

State = Any
Weights = list[dict[str, Tensor | None]]
BACKENDS = ("auto", "loop", "native", "fused")


# --- the three runners ------------------------------------------------------------------------------------------


def run_loop(plan: Plan, x: Tensor, hx: State, lengths: Tensor | None, weights: Weights):
    """The readable reference: each layer and direction steps the cell's equations in Python."""

    def layer(k, xt, state, mask, reverse):
        return loop_layer(cell_step(plan, weights[k]), xt, state, mask, reverse)

    return run_plan(plan, x, hx, lengths, layer)


def run_fused(plan: Plan, x: Tensor, hx: State, lengths: Tensor | None, weights: Weights):
    """A whole-layer kernel per layer and direction: ``kernels.fused.LAYERS[cell]`` or the cell's sequence form.
    With zoneout, its weights for the layer are drawn just before it runs, where the loop draws them step by step."""
    spec = plan.spec
    fn = LAYERS.get(spec.name, spec.sequence)

    def layer(k, xt, state, mask, reverse):
        options = dict(plan.options)
        if plan.zoned:
            like = (state.h if spec.has_cell else state).expand(xt.size(0), -1, -1)  # (T, B, H)
            options["zoneout"] = zoneout_weights(spec, *plan.zoneout, plan.training, like, reverse)
        return fn(xt, state, mask, reverse, weights[k], **options)

    return run_plan(plan, x, hx, lengths, layer)


_VF_FUNCTIONS = {"lstm": "lstm", "gru": "gru", "tanh": "rnn_tanh", "relu": "rnn_relu"}


def run_native(plan: Plan, x: Tensor, hx: State, lengths: Tensor | None, weights: Weights):
    """torch.nn's own fused kernels (oneDNN on CPU, cuDNN on CUDA), called on our parameters: torch.nn stacks the
    layers and directions itself, with its own dropout between them."""
    name = plan.options["nonlinearity"] if plan.mode == "elman" else plan.mode
    fn = getattr(_VF, _VF_FUNCTIONS[name])
    flat = [w for layer in weights for w in layer.values() if w is not None]
    dropout = plan.dropout if plan.training else 0.0
    args = (flat, plan.bias, plan.num_layers, dropout, plan.training, plan.bidirectional)
    hx_arg = tuple(hx) if plan.spec.has_cell else hx
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
    return out, (LSTMState(*hidden) if plan.spec.has_cell else hidden[0])


RUNNERS = {"loop": run_loop, "native": run_native, "fused": run_fused}


def runner(name: str) -> Callable:
    return RUNNERS[name]


# --- which backends can run a plan ------------------------------------------------------------------------------


def available_backends(spec: CellSpec) -> tuple[str, ...]:
    """The backends that exist for ``spec``: loop always, native where torch.nn has the cell, fused where a kernel
    or a sequence form does."""
    out = ["loop"]
    if spec.torch_module is not None:
        out.append("native")
    if spec.name in LAYERS or spec.sequence is not None:
        out.append("fused")
    return tuple(out)


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


def usable_backends(plan: Plan) -> tuple[str, ...]:
    """The backends that compute what ``plan`` asks for (``backends_for`` on its cell and options)."""
    return backends_for(plan.spec, plan.zoned, plan.locked_dropout and plan.dropout > 0, plan.num_layers)


# --- "auto" ------------------------------------------------------------------------------------------------------

# A cell's sequence form (the parallel scan of minGRU/minLSTM) runs from here down in state values per step (B * H),
# above it its step loop: the scan won on small steps and lost on large ones, whatever T (benchmarks/min_scan.py;
# the figures are in docs/results.md, "The cell table's speed"). A single step always goes to the loop.
SCAN_MAX_VALUES = 1024


def resolve(plan: Plan, x: Tensor, weights: Weights, *, padded: bool = False) -> str:
    """The backend a forward pass of ``plan`` on ``x`` (B, T, D) with ``weights`` runs (``"auto"`` resolved);
    ``padded``: the rows have lengths below T (the pass gets ``lengths``).

    Rule: the cells torch.nn has follow ``auto_backend`` among the backends that can run the options (with
    zoneout, which native lacks: fused; locked dropout between layers: not native); a cell with a hand-written
    fused layer runs it; a cell with a sequence form runs it up to ``SCAN_MAX_VALUES`` state values per step on CPU
    (any size elsewhere) and for more than one step; else the loop.
    """
    if plan.backend != "auto":
        return plan.backend
    usable = usable_backends(plan)
    if "native" in usable:
        choice = auto_backend(plan, x, weights, padded=padded)
        if choice in usable:
            return choice
    if "fused" in usable and plan.mode not in LAYERS:  # the sequence form
        small = x.device.type != "cpu" or x.size(0) * plan.hidden_size <= SCAN_MAX_VALUES
        return "fused" if small and x.size(1) > 1 else "loop"
    return "fused" if "fused" in usable else usable[0]


# With the C++ loops, fused runs inference (no autograd) from this many multiply-adds per recurrent step
# (B * G*H * H) and Elman trains fused from this many state values per step (B * H); GRU always trains fused.
MIN_FORWARD_MACS = 2**19
MIN_ELMAN_TRAIN_VALUES = 512
# Without them (no compiler), fused's Python loop only pays off for Elman/GRU steps this large.
MIN_STEP_MACS = 2**24


def auto_backend(plan: Plan, x: Tensor, weights: Weights, *, padded: bool = False) -> str:
    """The backend ``backend="auto"`` runs for a cell torch.nn has (Elman, LSTM, GRU) on input ``x`` (B, T, D),
    ``padded`` when its rows have lengths below T.

    Rule: off CPU, ``"native"`` (cuDNN). On CPU, ``"native"`` (torch.nn's own kernels: oneDNN's LSTM, a C++
    loop for GRU and Elman under autograd's per-step graph) except, with fused's C++ loops built:

    - GRU training (autograd on): always ``"fused"``;
    - Elman training: ``"fused"`` from ``MIN_ELMAN_TRAIN_VALUES`` state values per step (B * H);
    - GRU and Elman inference: ``"fused"`` from ``MIN_FORWARD_MACS`` multiply-adds per step (B * G*H * H);
    - LSTM: ``"native"``, training and inference (fused trains at the same speed with a third less memory:
      pass ``backend="fused"`` for that), except training under bf16 autocast (or with bf16 parameters):
      ``"fused"``, whose bf16 products with fp32 gates trained faster than oneDNN's bf16 LSTM; oneDNN's stays
      faster for inference, where the CPU has AVX-512 (oneDNN has no bf16 LSTM without it: fused runs then);
      and training on a padded batch: ``"fused"``. torch.nn packs it, and its packed LSTM leaves oneDNN for a
      step loop whose backward adds each step's gradient into a zero tensor of the whole sequence (time
      quadratic in T): a bidirectional LSTM of 128 on 64 x 151 steps took 13 s forward and backward against 2.7 s
      unpadded and 2.1 s fused, padded or not (one thread, a busy machine; the seq2seq encoder's batches).

    Without the C++ loops (no compiler), only Elman/GRU steps of at least ``MIN_STEP_MACS`` multiply-adds go
    to fused's Python loop. "native" is torch.nn's computation on rnnkit's parameters, so "auto" never bets
    against torch.nn. Training means autograd is on and ``x`` or a parameter of ``weights`` needs its gradient.

    Why: timed on CPU (benchmarks/KERNELS.md), fused's C++ loops trained GRUs faster than torch.nn at every
    size tried, and Elman at all but the smallest states; for inference they won only on steps large enough
    that the per-step product outweighs their per-call overhead. torch.nn's oneDNN LSTM was as fast as fused or
    faster, in training and inference. Fused's Python loops won only on large Elman/GRU steps, and not on every
    host, hence ``MIN_STEP_MACS``. There was no GPU to time, so cuDNN is the rule there.

    ``rnnkit bench`` re-measures on the machine at hand; pass ``backend="fused"`` or ``"native"`` to choose.
    """
    if x.device.type != "cpu":
        return "native"
    params = [w for layer in weights for w in layer.values() if w is not None]
    grad = torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in params))
    if plan.mode == "lstm":
        low = weights[0][plan.spec.recurrent_weight].dtype == torch.bfloat16
        mixed = (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16) or low
        if mixed and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "fused"  # oneDNN's bf16 LSTM needs AVX-512: without it torch.nn raises, fused computes
        return "fused" if grad and (mixed or padded) and cpp_loops() is not None else "native"  # x on the CPU
    B, H = x.size(0), plan.hidden_size
    G = 3 if plan.mode == "gru" else 1
    if wanted(x) is None:
        return "fused" if B * G * H * H >= MIN_STEP_MACS else "native"
    if grad:
        return "fused" if plan.mode == "gru" or B * H >= MIN_ELMAN_TRAIN_VALUES else "native"
    return "fused" if B * G * H * H >= MIN_FORWARD_MACS else "native"
