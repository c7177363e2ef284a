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
On CPU the step runs in NumPy on views of the same memory (``Tensor.numpy()`` and ``torch.from_numpy`` copy
nothing): at these sizes both its BLAS product and its small elementwise ops carry less per-call overhead
than torch's (benchmarks/KERNELS.md). Sigmoids are taken as 0.5 tanh(a/2) + 0.5, with the 1/2 folded into the
weights, so all gates of a layer share one ``np.tanh``. From H = 384 on, the NumPy GRU step uses two products,
``x W_ih^T`` and ``h W_hh^T``, rather than the block matrix with its zero blocks.

On CPU with the C++ loops built (kernels/extension.py), batches up to ``CPP_STEP_MAX_BATCH`` take the whole
step of every layer in one C++ call instead (``step`` in csrc/recurrence.cpp): torch's own weight layout, no
prepared copy, hidden units split over the intra-op threads. Batch 1 is bound by reading the weights (a 2x256
GRU step reads 3 MB), so what it saves is the per-op overhead, which makes it faster per token than both the
NumPy step and a ``GRUCell`` loop (benchmarks/KERNELS.md).

The fast path runs only without autograd (``torch.no_grad()`` or tensors that need no grad) and without
training-mode dropout; otherwise the step goes through the module's backend on a length-1 sequence.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import Tensor

from rnnkit.cells.spec import LSTMState
from rnnkit.kernels.extension import wanted

__all__ = ["can_fast", "fast_step", "prepared_step_weights", "torch_step"]

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NP_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
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


def _prepare_numpy(rnn) -> list[tuple[np.ndarray, ...]]:
    """Per layer (W^T (D+H, G*H), b (G*H,), scale, shift) for NumPy: the rows that feed a sigmoid are scaled by
    1/2, and ``scale * tanh(a) + shift`` turns tanh into sigmoid there (LSTM; GRU does it on its r, z slice)."""
    if rnn.mode == "gru" and rnn.hidden_size >= GRU_SPLIT_MIN_HIDDEN:
        return _prepare_numpy_gru(rnn)
    layers = []
    for w_t, b in prepared_step_weights(rnn):
        w = w_t.t().detach().cpu().numpy().copy()  # (G*H, D+H), row-major
        b = np.zeros(w.shape[0], w.dtype) if b is None else b.detach().cpu().numpy().copy()
        H = rnn.hidden_size
        if rnn.mode == "lstm":
            w[2 * H : 3 * H] *= 0.5  # undo the torch path's factor 2 on g: tanh itself is used here
            b[2 * H : 3 * H] *= 0.5
            sig = np.r_[0 : 2 * H, 3 * H : 4 * H]
        else:
            sig = np.arange(2 * H) if rnn.mode == "gru" else np.arange(0)  # GRU: r, z; Elman: none
        w[sig] *= 0.5
        b[sig] *= 0.5
        scale, shift = np.ones(w.shape[0], w.dtype), np.zeros(w.shape[0], w.dtype)
        scale[sig], shift[sig] = 0.5, 0.5
        layers.append((np.ascontiguousarray(w).T, b, scale, shift))  # W^T (D+H, G*H), a view of row-major W
    return layers


# From this width on, the NumPy GRU step reads W_ih and W_hh in two products rather than one block matrix with
# zero blocks: once the weights outgrow the cache the bytes saved pay for the extra calls, while below it the
# extra calls cost more than the bytes saved (benchmarks/KERNELS.md).
GRU_SPLIT_MIN_HIDDEN = 384


def _prepare_numpy_gru(rnn) -> list[tuple[np.ndarray, ...]]:
    """Per layer (W_ih^T (D, 3H), b_ih (3H,), W_hh^T (H, 3H), b_hh (3H,)) with the r, z rows halved.

    Two products instead of one on ``[x, h]``: the block matrix of the torch path carries two zero blocks
    (a quarter of its bytes when D = H), and a batch-1 step is bound by reading the weights.
    """
    layers = []
    H = rnn.hidden_size
    for layer in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = rnn.layer_weights(layer, 0)
        parts = []
        for w, b in ((w_ih, b_ih), (w_hh, b_hh)):
            w = w.detach().cpu().numpy().copy()  # (3H, D) or (3H, H), row-major
            b = np.zeros(3 * H, w.dtype) if b is None else b.detach().cpu().numpy().copy()
            w[: 2 * H] *= 0.5  # sigmoid(a) = 0.5 tanh(a/2) + 0.5 on r, z
            b[: 2 * H] *= 0.5
            parts += [w.T, b]  # W^T, a view of the row-major copy
        layers.append(tuple(parts))
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


def _numpy_weights(rnn) -> list[tuple[np.ndarray, ...]]:
    return _cached(_NP_CACHE, rnn, _prepare_numpy)


def _gru_update(rz_pre, gi_n, gh_n, h_prev, h, H: int):
    """GRU gates in place from halved r, z pre-activations (B, 2H) and the n parts (B, H); writes h_t into h.

    r, z = sigmoid(.) = 0.5 tanh(rz_pre) + 0.5;  n = tanh(gi_n + r * gh_n);  h_t = n + z * (h_prev - n)
    """
    rz = np.tanh(rz_pre, out=rz_pre)
    rz *= 0.5
    rz += 0.5
    n = gi_n
    n += rz[:, :H] * gh_n
    np.tanh(n, out=n)
    np.subtract(h_prev, n, out=h)
    h *= rz[:, H:]
    h += n
    return h


def _numpy_step(rnn, x_t: Tensor, state):
    """The step in NumPy on CPU float tensors: same equations, sigmoid(a) = 0.5 tanh(a/2) + 0.5."""
    H = rnn.hidden_size
    is_lstm = rnn.mode == "lstm"
    h_in = (state[0] if is_lstm else state).numpy()  # (L, B, H), shares memory with the tensor
    h_out = np.empty_like(h_in)
    if is_lstm:
        c_in = state[1].numpy()
        c_out = np.empty_like(c_in)
    x = x_t.numpy()  # (B, D)
    for k, weights in enumerate(_numpy_weights(rnn)):
        h = h_out[k]  # (B, H), written in place
        if rnn.mode == "gru" and H >= GRU_SPLIT_MIN_HIDDEN:
            wi_t, bi, wh_t, bh = weights
            gi = x @ wi_t  # (B, 3H): [r, z, n] input parts, r and z halved
            gi += bi
            gh = h_in[k] @ wh_t  # (B, 3H): [r, z, n] recurrent parts
            gh += bh
            rz_pre = gi[:, : 2 * H]
            rz_pre += gh[:, : 2 * H]
            x = _gru_update(rz_pre, gi[:, 2 * H :], gh[:, 2 * H :], h_in[k], h, H)
            continue
        w_t, b, scale, shift = weights
        a = np.concatenate((x, h_in[k]), axis=1) @ w_t  # (B, G*H)
        a += b
        if is_lstm:
            np.tanh(a, out=a)
            a *= scale  # i, f, o: 0.5 tanh(a/2) + 0.5; g: tanh(a)
            a += shift
            i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
            c = c_out[k]
            np.multiply(f, c_in[k], out=c)
            c += i * g
            np.tanh(c, out=h)
            h *= o
        elif rnn.mode == "gru":  # a = [r, z (halved), gi_n, gh_n] from the block matrix
            _gru_update(a[:, : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :], h_in[k], h, H)
        elif rnn.nonlinearity == "tanh":
            np.tanh(a, out=h)
        else:
            np.maximum(a, 0, out=h)
        x = h
    y = torch.from_numpy(x.copy())  # its own memory, apart from the state
    if is_lstm:
        return y, LSTMState(torch.from_numpy(h_out), torch.from_numpy(c_out))
    return y, torch.from_numpy(h_out)


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


# The C++ step (extension.py) serves batches up to this size; larger ones go to the NumPy step, whose GEMM
# reuses each weight for many rows (the C++ step reads its weights once per row).
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
    """The whole step in one C++ call (csrc/recurrence.cpp, ``step``)."""
    mode = _STEP_MODES[(rnn.mode, "tanh" if rnn.mode != "elman" else rnn.nonlinearity)]
    if rnn.mode == "lstm":
        y, h, c = ext.step(mode, x_t, state[0], state[1], *_cpp_weights(rnn))
        return y, LSTMState(h, c)
    y, h, _ = ext.step(mode, x_t, state, state, *_cpp_weights(rnn))
    return y, h


def fast_step(rnn, x_t: Tensor, state):
    """One step of every layer of a unidirectional ``rnn``: x_t (B, D), validated state -> (y_t (B, H), state).

    Equal to ``rnn(x_t.unsqueeze(1), state)`` with the time axis dropped (tests/test_fused.py checks it).
    On CPU: the C++ step for batches up to ``CPP_STEP_MAX_BATCH`` when the extension is built, else NumPy.
    """
    if x_t.device.type == "cpu" and x_t.dtype in (torch.float32, torch.float64) and x_t.dtype == rnn.weight_hh_l0.dtype:
        ext = wanted(x_t) if x_t.size(0) <= CPP_STEP_MAX_BATCH else None
        if ext is not None:
            return _cpp_step(ext, rnn, x_t, state)
        return _numpy_step(rnn, x_t, state)
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
