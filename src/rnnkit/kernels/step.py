"""A fast single step of every layer, for generation (batch 1 and small batches).

Generation calls the network once per token, so per-call overhead rules: ``nn.LSTM`` on one step re-lays-out
its weights each call, and an ``nn.LSTMCell`` loop runs two GEMMs and a handful of ops per layer. Here each
layer is one ``addmm`` on ``[x, h]`` against a weight prepared once, ``[W_ih | W_hh]^T`` (D+H, G*H), with the
biases summed, and then the gate arithmetic:

- LSTM: the g rows are scaled by 2 so that one sigmoid serves all four gates (tanh(a) = 2 sigmoid(2a) - 1).
- GRU: the product gives [r_pre, z_pre, gi_n, gh_n] (B, 4H) from the block matrix
  [[W_ir, W_hr], [W_iz, W_hz], [W_in, 0], [0, W_hn]], as ``n = tanh(gi_n + r * gh_n)`` needs gh_n alone.

The prepared weights are cached per module and rebuilt when any parameter changes: the cache key holds
each parameter's ``data_ptr`` and ``_version``, which in-place optimizer updates and ``load_state_dict`` bump.
Two engines: on CPU with the C++ loops built (kernels/extension.py), batches up to ``CPP_STEP_MAX_BATCH`` take
the whole step of every layer in one C++ call (``step`` in csrc/step.cpp): torch's own weight layout, no prepared
copy, hidden units split over the intra-op threads. Batch 1 is bound by reading the weights (a 2x256 GRU step
reads 3 MB), so what it saves is the per-op overhead, which makes it faster per token than a ``GRUCell`` loop
(benchmarks/KERNELS.md). Everything else takes the torch step on the prepared weights. A third engine, the same
step in NumPy, was dropped: timed beside these two, it won nowhere it would have run (benchmarks/KERNELS.md, "Two
generation engines").

The fast path runs only without autograd (``torch.no_grad()`` or tensors that need no grad) and without
training-mode dropout; otherwise the step goes through the module's backend on a length-1 sequence.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from rnnkit.cells.spec import LSTMState
from rnnkit.kernels.extension import wanted
from rnnkit.sequence import map_state

__all__ = ["can_fast", "fast_step", "prepared_step_weights", "torch_step"]

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CPP_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _key(rnn) -> tuple:
    # ``_parameters`` directly: the module's attribute lookups are much slower, and this runs on every token
    # (benchmarks/KERNELS.md)
    return tuple((p.data_ptr(), p._version) for p in rnn._parameters.values())


@torch.no_grad()
def _prepare(rnn) -> list[tuple[Tensor, Tensor | None]]:
    layers = []
    for layer in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = rnn.layer_weights(layer, 0)
        H = w_hh.size(1)
        b = None if b_ih is None else b_ih + b_hh
        if rnn.mode == "gru":
            D = w_ih.size(1)
            w = w_ih.new_zeros(4 * H, D + H)
            w[: 2 * H, :D], w[: 2 * H, D:] = w_ih[: 2 * H], w_hh[: 2 * H]  # r, z: both sides summed
            w[2 * H : 3 * H, :D], w[3 * H :, D:] = w_ih[2 * H :], w_hh[2 * H :]  # gi_n and gh_n apart
            if b is not None:
                b = torch.cat([b[: 2 * H], b_ih[2 * H :], b_hh[2 * H :]])  # (4H,)
        else:
            w = torch.cat([w_ih, w_hh], dim=1)  # (G*H, D+H)
            if rnn.mode == "lstm":
                w[2 * H : 3 * H] *= 2  # feed 2a to the g gate's sigmoid
                if b is not None:
                    b[2 * H : 3 * H] *= 2
        layers.append((w.t().contiguous(), b))  # (D+H, G*H), (G*H,)
    return layers


def _cached(cache: weakref.WeakKeyDictionary, rnn, prepare):
    """``prepare(rnn)`` from ``cache`` while every parameter keeps its memory and version, else made anew."""
    key = _key(rnn)
    hit = cache.get(rnn)
    if hit is not None and hit[0] == key:
        return hit[1]
    prepared = prepare(rnn)
    cache[rnn] = (key, prepared)
    return prepared


def prepared_step_weights(rnn) -> list[tuple[Tensor, Tensor | None]]:
    """Per layer ``([W_ih | W_hh]^T (D+H, G*H), bias (G*H,) or None)``, from the cache when still valid."""
    return _cached(_CACHE, rnn, _prepare)


# The cells the fast step knows; the others step through their backend on a length-1 sequence.
FAST_STEP_CELLS = ("elman", "lstm", "gru")


def can_fast(rnn, x_t: Tensor, state) -> bool:
    """Whether ``fast_step`` computes ``rnn``'s step: a cell it knows, no zoneout, no autograd, no training-mode
    dropout between layers."""
    if rnn.mode not in FAST_STEP_CELLS or rnn.zoneout != (0.0, 0.0):
        return False
    if rnn.training and rnn.dropout > 0 and rnn.num_layers > 1:
        return False
    if not torch.is_grad_enabled():
        return True
    parts = [x_t, *(state if isinstance(state, tuple) else (state,)), *rnn.flat_weights()]
    return not any(p.requires_grad for p in parts)


# The C++ step (extension.py) serves batches up to this size; larger ones go to the torch step, whose GEMM reuses
# each weight for many rows (the C++ step reads its weights once per row).
CPP_STEP_MAX_BATCH = 4
_STEP_MODES = {("elman", "tanh"): 0, ("elman", "relu"): 1, ("lstm", "tanh"): 2, ("gru", "tanh"): 3}


def _cpp_weights(rnn) -> tuple[list[Tensor], ...]:
    """The parameters as the C++ step takes them: lists of W_ih, W_hh, b_ih, b_hh per layer (empty for none)."""
    return _cached(_CPP_CACHE, rnn, _prepare_cpp)


def _prepare_cpp(rnn) -> tuple[list[Tensor], ...]:
    empty = rnn.weight_hh_l0.new_empty(0)
    layers = [rnn.layer_weights(layer, 0) for layer in range(rnn.num_layers)]
    return tuple([empty if w is None else w.detach().contiguous() for w in ws] for ws in zip(*layers, strict=True))


def _cpp_step(ext, rnn, x_t: Tensor, state):
    """The whole step in one C++ call (csrc/step.cpp, ``step``)."""
    mode = _STEP_MODES[(rnn.mode, "tanh" if rnn.mode != "elman" else rnn.nonlinearity)]
    if rnn.mode == "lstm":
        y, h, c = ext.step(mode, x_t, state[0], state[1], *_cpp_weights(rnn))
        return y, LSTMState(h, c)
    y, h, _ = ext.step(mode, x_t, state, state, *_cpp_weights(rnn))
    return y, h


def fast_step(rnn, x_t: Tensor, state):
    """One step of every layer of a unidirectional ``rnn``: x_t (B, D), validated state -> (y_t (B, H), state).

    Equal to ``rnn(x_t.unsqueeze(1), state)`` with the time axis dropped (tests/test_fused.py checks it).
    The C++ step for batches up to ``CPP_STEP_MAX_BATCH`` on CPU when the extension is built, else the torch step.
    Under autocast the step runs in the parameters' precision: generation is a chain of small products, where
    bf16 saves nothing worth its rounding, and the state keeps its dtype from step to step.
    """
    if torch.is_autocast_enabled(x_t.device.type):
        dtype = rnn.weight_hh_l0.dtype  # the state too: a forward under autocast (oneDNN's bf16 LSTM) returns bf16
        with torch.autocast(x_t.device.type, enabled=False):
            return fast_step(rnn, x_t.to(dtype), map_state(lambda t: t.to(dtype), state))
    if x_t.size(0) <= CPP_STEP_MAX_BATCH and x_t.dtype == rnn.weight_hh_l0.dtype:
        ext = wanted(x_t)  # float32/float64 on CPU, with the C++ loops built
        if ext is not None:
            return _cpp_step(ext, rnn, x_t, state)
    return torch_step(rnn, x_t, state)


def torch_step(rnn, x_t: Tensor, state):
    """The step in torch ops (any device), on the prepared weights: x_t (B, D), state -> (y_t (B, H), state)."""
    H = rnn.hidden_size
    is_lstm = rnn.mode == "lstm"
    hs, cs = [], []
    x = x_t
    for k, (w, b) in enumerate(prepared_step_weights(rnn)):
        h = state[0][k] if is_lstm else state[k]  # (B, H)
        xh = torch.cat([x, h], dim=1)  # (B, D+H)
        a = torch.mm(xh, w) if b is None else torch.addmm(b, xh, w)  # (B, G*H)
        if is_lstm:
            a.sigmoid_()
            i, f, g, o = a.chunk(4, 1)  # 4 x (B, H)
            g.mul_(2).sub_(1)  # tanh of the g gate
            c = torch.mul(i, g).addcmul_(f, state[1][k])
            h = o * torch.tanh(c)
            cs.append(c)
        elif rnn.mode == "gru":
            rz = a[:, : 2 * H].sigmoid_()  # (B, 2H)
            n = torch.addcmul(a[:, 2 * H : 3 * H], rz[:, :H], a[:, 3 * H :]).tanh_()  # (B, H)
            h = torch.lerp(n, h, rz[:, H:])  # n + z * (h - n)
        else:
            h = a.tanh_() if rnn.nonlinearity == "tanh" else a.relu_()
        hs.append(h)
        x = h
    if is_lstm:
        return x, LSTMState(torch.stack(hs), torch.stack(cs))
    return x, torch.stack(hs)  # (L, B, H)
