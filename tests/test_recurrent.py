"""rnnkit.RNN equals torch.nn.RNN/LSTM/GRU, for the "loop" and "native" backends, over a seeded grid of options."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import tol
from rnnkit.cells import LSTMState
from rnnkit.recurrent import RNN

B, T, D, H = 4, 5, 4, 3
LENGTHS = torch.tensor([3, 5, 1, 4])  # unsorted, with a length-1 row and a full row
BACKENDS = ["loop", "native"]
# mode label -> (rnnkit mode, nonlinearity, torch.nn class)
MODES = {
    "elman-tanh": ("elman", "tanh", nn.RNN),
    "elman-relu": ("rnn", "relu", nn.RNN),  # "rnn" is the alias of "elman"
    "lstm": ("lstm", "tanh", nn.LSTM),
    "gru": ("gru", "tanh", nn.GRU),
}


def assert_all_close(got: list, expected: list, dtype: torch.dtype) -> None:
    """assert_close over two lists of tensors (one place, so a script can record the differences)."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, **tol(dtype))


def make_pair(label, layers, bidirectional, batch_first, bias, dtype, backend, ours_first=False):
    """An rnnkit.RNN and a torch.nn module with the same weights (loaded ``ours -> theirs`` or the reverse)."""
    mode, nonlinearity, cls = MODES[label]
    kw = {"nonlinearity": nonlinearity} if cls is nn.RNN else {}
    theirs = cls(D, H, layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, dtype=dtype, **kw)
    ours = RNN(
        mode,
        D,
        H,
        layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
        nonlinearity=nonlinearity,
        backend=backend,
        dtype=dtype,
    )
    if ours_first:
        theirs.load_state_dict(ours.state_dict())
    else:
        ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def random_inputs(rnn: RNN, with_state: bool, dtype: torch.dtype):
    """x in the layout of ``rnn`` and an optional random initial state (a tuple of 1 or 2 tensors)."""
    x = torch.randn(B, T, D, dtype=dtype)
    if not rnn.batch_first:
        x = x.transpose(0, 1).contiguous()  # (T, B, D)
    n = 2 if rnn.mode == "lstm" else 1
    LK = rnn.num_layers * rnn.num_directions
    state = tuple(torch.randn(LK, B, H, dtype=dtype) for _ in range(n)) if with_state else None
    return x, state


def run(module, x, state, lengths, ours: bool):
    """Forward and backward with a loss touching every output and final state.

    Returns ([output (padded), h_n (, c_n)], [grad of x, grads of the initial state, grads of every parameter]).
    torch.nn gets a PackedSequence when there are lengths, as its users do.
    """
    x = x.clone().requires_grad_(True)
    state = None if state is None else tuple(s.clone().requires_grad_(True) for s in state)
    is_lstm = isinstance(module, nn.LSTM) or getattr(module, "mode", None) == "lstm"
    arg = None if state is None else (LSTMState(*state) if ours else state) if is_lstm else state[0]
    if ours:
        out, final = module(x, arg, lengths)
    elif lengths is None:
        out, final = module(x, arg)
    else:
        packed = pack_padded_sequence(x, lengths, batch_first=module.batch_first, enforce_sorted=False)
        out, final = module(packed, arg)
        out, _ = pad_packed_sequence(out, batch_first=module.batch_first, total_length=T)
    finals = list(final) if is_lstm else [final]
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    loss = (out * w).sum() + sum((f * f).sum() for f in finals)
    module.zero_grad(set_to_none=True)
    loss.backward()
    grads = [x.grad, *(s.grad for s in state or ())] + [p.grad for p in module.parameters()]
    return [out, *finals], grads


# --- parity with torch.nn over a seeded grid --------------------------------------------------------------


def _grid(n_per_cell: int, seed: int):
    """For each (mode, layers), ``n_per_cell`` random draws of (bidirectional, batch_first, bias, lengths, state)."""
    rng = random.Random(seed)
    flags = list(itertools.product([False, True], repeat=5))
    cases = []
    for label, layers in itertools.product(MODES, [1, 2, 3]):
        cases += [(label, layers, *f) for f in rng.sample(flags, n_per_cell)]
    return cases


GRID_NAMES = ("label", "layers", "bidirectional", "batch_first", "bias", "padded", "with_state")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(GRID_NAMES, _grid(4, seed=0))
def test_rnn_equals_torch_float64(label, layers, bidirectional, batch_first, bias, padded, with_state, backend):
    torch.manual_seed(0)
    dtype = torch.float64
    ours, theirs = make_pair(label, layers, bidirectional, batch_first, bias, dtype, backend, ours_first=layers == 2)
    x, state = random_inputs(ours, with_state, dtype)
    lengths = LENGTHS if padded else None
    out_a, grads_a = run(ours, x, state, lengths, ours=True)
    out_b, grads_b = run(theirs, x, state, lengths, ours=False)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert out_a[0].shape == out_b[0].shape
    assert isinstance(out_a[1], torch.Tensor) and len(out_a) == (3 if ours.mode == "lstm" else 2)
    assert_all_close(out_a + grads_a, out_b + grads_b, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(GRID_NAMES, _grid(1, seed=1))
def test_rnn_equals_torch_float32(label, layers, bidirectional, batch_first, bias, padded, with_state, backend):
    torch.manual_seed(0)
    dtype = torch.float32
    ours, theirs = make_pair(label, layers, bidirectional, batch_first, bias, dtype, backend)
    x, state = random_inputs(ours, with_state, dtype)
    lengths = LENGTHS if padded else None
    out_a, grads_a = run(ours, x, state, lengths, ours=True)
    out_b, grads_b = run(theirs, x, state, lengths, ours=False)
    assert_all_close(out_a + grads_a, out_b + grads_b, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("label", list(MODES))
def test_packed_in_packed_out(label, enforce_sorted, backend):
    torch.manual_seed(0)
    dtype = torch.float64
    ours, theirs = make_pair(label, 2, True, True, True, dtype, backend)
    x = torch.randn(B, T, D, dtype=dtype)
    lengths = LENGTHS.sort(descending=True).values if enforce_sorted else LENGTHS
    results = []
    for module in (ours, theirs):
        xg = x.clone().requires_grad_(True)
        packed = pack_padded_sequence(xg, lengths, batch_first=True, enforce_sorted=enforce_sorted)
        out, final = module(packed)
        assert isinstance(out, type(packed))
        finals = list(final) if label == "lstm" else [final]
        loss = (out.data * torch.linspace(-1, 1, out.data.numel(), dtype=dtype).view_as(out.data)).sum()
        module.zero_grad()
        (loss + sum((f * f).sum() for f in finals)).backward()
        results.append((out, finals, [xg.grad] + [p.grad for p in module.parameters()]))
    (a, fa, ga), (b, fb, gb) = results
    torch.testing.assert_close(a.batch_sizes, b.batch_sizes, rtol=0, atol=0)
    for ia, ib in [(a.sorted_indices, b.sorted_indices), (a.unsorted_indices, b.unsorted_indices)]:
        assert (ia is None) == (ib is None) == enforce_sorted
        if ia is not None:
            torch.testing.assert_close(ia, ib, rtol=0, atol=0)
    assert_all_close([a.data, *fa, *ga], [b.data, *fb, *gb], dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label", list(MODES))
def test_dropout_eval_equals_torch(label, backend):
    torch.manual_seed(0)
    _, nonlinearity, cls = MODES[label]
    kw = {"nonlinearity": nonlinearity} if cls is nn.RNN else {}
    theirs = cls(D, H, 3, dropout=0.5, batch_first=True, dtype=torch.float64, **kw).eval()
    ours = RNN.from_torch(theirs, backend=backend)
    assert not ours.training and ours.dropout == 0.5
    x = torch.randn(B, T, D, dtype=torch.float64)
    out_a, grads_a = run(ours, x, None, LENGTHS, ours=True)
    out_b, grads_b = run(theirs, x, None, LENGTHS, ours=False)
    assert_all_close(out_a + grads_a, out_b + grads_b, torch.float64)


@pytest.mark.parametrize("label", list(MODES))
def test_dropout_train(label):
    """Train-mode dropout: torch.nn's semantics (between layers only, scaled by 1/(1-p)), zero past lengths.

    The two backends draw their masks from the same generator but over tensors of different layouts ("loop"
    drops (B, T, K*H) batch-first, torch.nn's kernel (T, B, K*H)), so they agree draw for draw only when B = 1;
    for B > 1 each is checked against its own oracle.
    """
    mode, nonlinearity, _ = MODES[label]
    torch.manual_seed(0)
    rnn = RNN(mode, D, H, 2, dropout=0.5, bidirectional=True, nonlinearity=nonlinearity, dtype=torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64)

    def forward(backend, seed, x=x, lengths=None):
        rnn.backend = backend
        torch.manual_seed(seed)
        return rnn(x, None, lengths)

    # native in train mode is exactly torch.nn's kernel in train mode: same seed, same masks
    theirs = rnn.to_torch()
    assert theirs.training and theirs.dropout == 0.5
    torch.manual_seed(5)
    expected = theirs(x)
    got = forward("native", 5)
    assert_all_close([got[0], *_flat(got[1])], [expected[0], *_flat(expected[1])], torch.float64)

    # loop: layer 0 as in eval, then F.dropout on its output (one draw over (B, T, K*H)), then layer 1
    first, second = _layer(rnn, 0), _layer(rnn, 1)
    torch.manual_seed(7)
    y0, s0 = first(x)
    y0 = torch.nn.functional.dropout(y0, 0.5, training=True)
    y1, s1 = second(y0)
    got = forward("loop", 7)
    assert_all_close([got[0], *_flat(got[1])], [y1, *_cat(s0, s1)], torch.float64)

    # B = 1: the two layouts coincide, so the backends agree draw for draw
    one = forward("loop", 3, x[:1])
    torch.testing.assert_close(forward("native", 3, x[:1])[0], one[0], **tol(torch.float64))
    # the masks are random: another seed gives other outputs, and train differs from eval
    for backend in BACKENDS:
        a, b = forward(backend, 1, lengths=LENGTHS)[0], forward(backend, 2, lengths=LENGTHS)[0]
        assert (a - b).abs().max() > 1e-3
        rnn.eval()
        e = forward(backend, 1, lengths=LENGTHS)[0]
        rnn.train()
        assert (a - e).abs().max() > 1e-3
        assert a[2, 1:].abs().max() == 0 and a[0, 3:].abs().max() == 0  # nothing past a length
    # one layer: torch.nn applies dropout between layers only, so nothing changes
    single = RNN(mode, D, H, 1, dropout=0.5, nonlinearity=nonlinearity, dtype=torch.float64)
    for backend in BACKENDS:
        single.backend = backend
        a = single(x)[0]
        single.eval()
        torch.testing.assert_close(single(x)[0], a, rtol=0, atol=0)
        single.train()


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def _layer(rnn: RNN, layer: int) -> RNN:
    """A one-layer RNN with the weights of ``rnn``'s layer ``layer`` (both directions)."""
    D_in = rnn.input_size if layer == 0 else rnn.hidden_size * rnn.num_directions
    one = RNN(
        rnn.mode, D_in, rnn.hidden_size, bidirectional=rnn.bidirectional, nonlinearity=rnn.nonlinearity,
        backend="loop", dtype=rnn.weight_ih_l0.dtype,
    )  # fmt: skip
    own = {n.replace(f"_l{layer}", "_l0"): p for n, p in rnn.named_parameters() if f"_l{layer}" in n}
    one.load_state_dict(own)
    return one


def _cat(*states):
    """Stack the per-layer final states of one-layer RNNs into the (L*K, B, H) layout."""
    parts = [_flat(s) for s in states]
    return [torch.cat(group) for group in zip(*parts, strict=True)]
