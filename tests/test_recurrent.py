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
@pytest.mark.parametrize(GRID_NAMES, _grid(8, seed=0))
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
@pytest.mark.parametrize(GRID_NAMES, _grid(3, seed=1))
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
@pytest.mark.parametrize(("enforce_sorted", "batch_first"), [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize("label", list(MODES))
def test_packed_in_packed_out(label, enforce_sorted, batch_first, backend):
    torch.manual_seed(0)
    dtype = torch.float64
    ours, theirs = make_pair(label, 2, True, batch_first, True, dtype, backend)
    x = torch.randn(B, T, D, dtype=dtype)
    lengths = LENGTHS.sort(descending=True).values if enforce_sorted else LENGTHS
    results = []
    for module in (ours, theirs):
        xg = x.clone().requires_grad_(True)
        xl = xg if batch_first else xg.transpose(0, 1)  # the layout the module expects
        packed = pack_padded_sequence(xl, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
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


@pytest.mark.parametrize("label", list(MODES))
def test_rnn_default_init_matches_torch(label):
    mode, nonlinearity, cls = MODES[label]
    kw = {"nonlinearity": nonlinearity} if cls is nn.RNN else {}
    torch.manual_seed(4)
    ours = RNN(mode, D, 16, 2, bidirectional=True, nonlinearity=nonlinearity)
    torch.manual_seed(4)
    theirs = cls(D, 16, 2, bidirectional=True, **kw)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    for (n, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert a.abs().max() <= 1 / 16**0.5, n
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)  # the same draws in the same order


@pytest.mark.cuda
@pytest.mark.parametrize("label", list(MODES))
def test_native_on_cuda_equals_loop(label):
    """cuDNN (float64 where it supports it) against the loop reference, with lengths and a bidirectional stack."""
    torch.manual_seed(0)
    mode, nonlinearity, _ = MODES[label]
    rnn = RNN(mode, D, H, 2, bidirectional=True, nonlinearity=nonlinearity, device="cuda", dtype=torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64, device="cuda")
    results = []
    for backend in BACKENDS:
        rnn.backend = backend
        xg = x.clone().requires_grad_(True)
        out, final = rnn(xg, None, LENGTHS)
        grads = torch.autograd.grad(out.sum() + _flat(final)[0].sum(), [xg, *rnn.parameters()])
        results.append([out, *_flat(final), *grads])
    assert_all_close(results[1], results[0], torch.float64)


# --- conversion -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", list(MODES))
def test_from_torch_to_torch_round_trip(label):
    torch.manual_seed(0)
    _, nonlinearity, cls = MODES[label]
    kw = {"nonlinearity": nonlinearity} if cls is nn.RNN else {}
    for batch_first, bias, bidirectional in [(False, True, True), (True, False, False)]:
        theirs = cls(D, H, 2, bias=bias, batch_first=batch_first, dropout=0.25, bidirectional=bidirectional, **kw)
        theirs.eval()
        ours = RNN.from_torch(theirs, backend="loop")
        assert (ours.mode, ours.nonlinearity, ours.input_size, ours.hidden_size, ours.num_layers) == (
            MODES[label][0].replace("rnn", "elman"), nonlinearity, D, H, 2,
        )  # fmt: skip
        assert (ours.bias, ours.batch_first, ours.dropout, ours.bidirectional, ours.training) == (
            bias, batch_first, 0.25, bidirectional, False,
        )  # fmt: skip
        back = ours.to_torch()
        assert type(back) is cls
        for name in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional"):
            assert getattr(back, name) == getattr(theirs, name), name
        assert getattr(back, "nonlinearity", None) == getattr(theirs, "nonlinearity", None)
        assert back.training is False
        for (n, a), (m, b) in zip(back.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert n == m
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        # copies, not shared storage
        with torch.no_grad():
            ours.weight_hh_l0.add_(1.0)
        assert not torch.equal(ours.weight_hh_l0, theirs.weight_hh_l0)
        assert torch.equal(back.weight_hh_l0, theirs.weight_hh_l0)
        x = torch.randn(B, T, D) if batch_first else torch.randn(T, B, D)
        torch.testing.assert_close(back(x)[0], theirs(x)[0], rtol=0, atol=0)


def test_from_torch_keeps_dtype():
    theirs = nn.GRU(D, H, dtype=torch.float64)
    ours = RNN.from_torch(theirs)
    assert ours.weight_ih_l0.dtype == torch.float64 and ours.batch_first is False
    assert ours.to_torch().weight_ih_l0.dtype == torch.float64


# --- the loop oracle: every row stepped by hand through rnnkit cells ----------------------------------------


def _cells(rnn: RNN, layer: int, direction: int):
    """An rnnkit cell with the weights of one layer and direction of ``rnn``."""
    from rnnkit.cells import ElmanCell, GRUCell, LSTMCell

    w_ih, w_hh, b_ih, b_hh = rnn.layer_weights(layer, direction)
    cls = {"elman": ElmanCell, "lstm": LSTMCell, "gru": GRUCell}[rnn.mode]
    kw = {"nonlinearity": rnn.nonlinearity} if rnn.mode == "elman" else {}
    cell = cls(w_ih.shape[1], rnn.hidden_size, rnn.bias, dtype=w_ih.dtype, **kw)
    cell.load_state_dict(
        {"weight_ih": w_ih, "weight_hh": w_hh} | ({"bias_ih": b_ih, "bias_hh": b_hh} if rnn.bias else {})
    )
    return cell


def _by_hand(rnn: RNN, x: torch.Tensor, state, lengths: torch.Tensor):
    """Row by row, layer by layer, direction by direction: plain Python loops over the valid steps only."""
    K, is_lstm = rnn.num_directions, rnn.mode == "lstm"
    Bx, Tx = x.shape[:2]
    out = torch.zeros(Bx, Tx, K * H, dtype=x.dtype)
    h_n = torch.zeros(rnn.num_layers * K, Bx, H, dtype=x.dtype)
    c_n = torch.zeros_like(h_n)
    for b in range(Bx):
        n = int(lengths[b])
        inputs = [x[b : b + 1, t] for t in range(n)]  # n x (1, D)
        for layer in range(rnn.num_layers):
            per_direction = []
            for direction in range(K):
                k = layer * K + direction
                cell = _cells(rnn, layer, direction)
                s = LSTMState(state[0][k, b : b + 1], state[1][k, b : b + 1]) if is_lstm else state[0][k, b : b + 1]
                ys = [None] * n
                order = range(n - 1, -1, -1) if direction == 1 else range(n)  # reverse: from the row's own end
                for t in order:
                    ys[t], s = cell(inputs[t], s)
                per_direction.append(ys)
                h_n[k, b] = s.h[0] if is_lstm else s[0]
                if is_lstm:
                    c_n[k, b] = s.c[0]
            inputs = [torch.cat([ys[t] for ys in per_direction], dim=-1) for t in range(n)]  # n x (1, K*H)
        for t in range(n):
            out[b, t] = inputs[t][0]
    return [out, h_n, c_n] if is_lstm else [out, h_n]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("label", list(MODES))
def test_rnn_equals_loop_by_hand(label, bidirectional, backend):
    torch.manual_seed(0)
    mode, nonlinearity, _ = MODES[label]
    rnn = RNN(
        mode, D, H, 2, bidirectional=bidirectional, nonlinearity=nonlinearity, backend=backend, dtype=torch.float64
    )
    x, state = random_inputs(rnn, True, torch.float64)
    arg = LSTMState(*state) if rnn.mode == "lstm" else state[0]
    with torch.no_grad():
        out, final = rnn(x, arg, LENGTHS)
        expected = _by_hand(rnn, x, state, LENGTHS)
        assert_all_close([out, *_flat(final)], expected, torch.float64)
        out, final = rnn(x, arg)  # no lengths: every row runs all T steps
        expected = _by_hand(rnn, x, state, torch.full((B,), T))
        assert_all_close([out, *_flat(final)], expected, torch.float64)


# --- chunked with state equals one pass ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("label", list(MODES))
def test_chunked_with_state_equals_one_pass(label, layers, backend):
    from rnnkit.sequence import split_time

    torch.manual_seed(0)
    mode, nonlinearity, _ = MODES[label]
    rnn = RNN(mode, D, H, layers, nonlinearity=nonlinearity, backend=backend, dtype=torch.float64)
    x = torch.randn(B, 7, D, dtype=torch.float64)
    full, final = rnn(x)
    for chunks in (split_time(x, 3), list(x.split([1, 4, 2], dim=1))):
        state, outs = None, []
        for chunk in chunks:
            y, state = rnn(chunk, state)
            outs.append(y)
        assert_all_close([torch.cat(outs, dim=1), *_flat(state)], [full, *_flat(final)], torch.float64)
    # gradients flow through the carried state exactly as through the one pass
    g_full = torch.autograd.grad(full.sum() + _flat(final)[0].sum(), list(rnn.parameters()))
    state, total = None, 0
    for chunk in split_time(x, 2):
        y, state = rnn(chunk, state)
        total = total + y.sum()
    g_chunked = torch.autograd.grad(total + _flat(state)[0].sum(), list(rnn.parameters()))
    assert_all_close(list(g_chunked), list(g_full), torch.float64)


# --- masking -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("label", list(MODES))
def test_padding_changes_nothing(label, bidirectional, backend):
    torch.manual_seed(0)
    mode, nonlinearity, _ = MODES[label]
    rnn = RNN(
        mode, D, H, 2, bidirectional=bidirectional, nonlinearity=nonlinearity, backend=backend, dtype=torch.float64
    )
    x = torch.randn(B, T, D, dtype=torch.float64)
    pad = ~(torch.arange(T).unsqueeze(0) < LENGTHS.unsqueeze(1))  # (B, T) True past each length
    x_other = torch.where(pad.unsqueeze(-1), 100 * torch.randn(B, T, D, dtype=torch.float64), x)
    assert (x_other != x).any()
    results = []
    for inputs in (x, x_other):
        inputs = inputs.clone().requires_grad_(True)
        out, final = rnn(inputs, None, LENGTHS)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
        loss = loss + sum((f * f).sum() for f in _flat(final))
        grads = torch.autograd.grad(loss, [inputs, *rnn.parameters()])
        assert out[pad].abs().max() == 0  # exactly zero past each length
        assert grads[0][pad].abs().max() == 0  # padded inputs get no gradient
        results.append([out, *_flat(final), *grads[1:]])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # exactly: padded values are never read
    # each row equals that row run alone on its valid prefix: the reverse direction starts at the row's own end
    for b in range(B):
        alone, alone_final = rnn(x[b : b + 1, : LENGTHS[b]])
        torch.testing.assert_close(results[0][0][b : b + 1, : LENGTHS[b]], alone, **tol(torch.float64))
        for f, g in zip(results[0][1:], _flat(alone_final), strict=False):
            torch.testing.assert_close(f[:, b : b + 1], g, **tol(torch.float64))


def test_lengths_all_full_equals_no_lengths():
    torch.manual_seed(0)
    rnn = RNN("lstm", D, H, bidirectional=True, backend="loop", dtype=torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64)
    a, b = rnn(x, None, [T] * B), rnn(x)
    assert_all_close([a[0], *a[1]], [b[0], *b[1]], torch.float64)


# --- generation: step equals forward -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("label", list(MODES))
def test_step_equals_forward(label, layers, dtype):
    torch.manual_seed(0)
    mode, nonlinearity, _ = MODES[label]
    rnn = RNN(mode, D, H, layers, nonlinearity=nonlinearity, backend="loop", dtype=dtype)
    x = torch.randn(B, T, D, dtype=dtype)
    with torch.no_grad():
        _, final = rnn(x)
        for state in (None, final):  # from zeros, and from a given state
            ref, ref_final = rnn(x, state)
            s = state
            for t in range(T):
                y, s = rnn.step(x[:, t], s)
                assert y.shape == (B, H)
                torch.testing.assert_close(y, ref[:, t], **tol(dtype))
            assert type(s) is type(ref_final)
            assert_all_close(_flat(s), _flat(ref_final), dtype)
    # step keeps the autograd graph when gradients are wanted
    y, _ = rnn.step(x[:, 0])
    assert y.requires_grad


# --- Recurrent, Bidirectional, Stack ------------------------------------------------------------------------


class TinyElman(nn.Module):
    """A user-written cell: ``h_t = tanh(U h_{t-1} + W x_t + b)`` with its own parameter names."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.W = nn.Parameter(torch.randn(hidden_size, input_size, dtype=torch.float64))
        self.U = nn.Parameter(torch.randn(hidden_size, hidden_size, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(hidden_size, dtype=torch.float64))

    def forward(self, x, h=None):
        if h is None:
            h = x.new_zeros(x.size(0), self.U.size(0))
        h = torch.tanh(x @ self.W.T + h @ self.U.T + self.b)
        return h, h


def _to_rnn(rnn: RNN, layer: int, direction: int, cell: TinyElman) -> None:
    with torch.no_grad():
        w_ih, w_hh, b_ih, b_hh = rnn.layer_weights(layer, direction)
        w_ih.copy_(cell.W)
        w_hh.copy_(cell.U)
        b_ih.copy_(cell.b)
        b_hh.zero_()


@pytest.mark.parametrize(("label", "custom"), [(label, False) for label in MODES] + [("elman-tanh", True)])
def test_stack_of_bidirectional_recurrent_equals_rnn(label, custom):
    from rnnkit.recurrent import Bidirectional, Recurrent, Stack

    torch.manual_seed(0)
    mode, nonlinearity, _ = MODES[label]
    rnn = RNN(mode, D, H, 2, bidirectional=True, nonlinearity=nonlinearity, backend="native", dtype=torch.float64)
    layers = []
    for layer in range(2):
        cells = []
        for direction in range(2):
            if custom:
                cell = TinyElman(D if layer == 0 else 2 * H, H)
                _to_rnn(rnn, layer, direction, cell)
            else:
                cell = _cells(rnn, layer, direction)
            cells.append(cell)
        layers.append(Bidirectional(Recurrent(cells[0]), Recurrent(cells[1], reverse=True)))
    stack = Stack(layers)
    x, state = random_inputs(rnn, True, torch.float64)
    # (L*K, B, H) -> per layer (forward_state, backward_state)
    if mode == "lstm":
        per_layer = [
            (LSTMState(state[0][2 * k], state[1][2 * k]), LSTMState(state[0][2 * k + 1], state[1][2 * k + 1]))
            for k in range(2)
        ]
    else:
        per_layer = [(state[0][2 * k], state[0][2 * k + 1]) for k in range(2)]
    arg = LSTMState(*state) if mode == "lstm" else state[0]
    for lengths in (None, LENGTHS):
        out, final = rnn(x, arg, lengths)
        got, got_states = stack(x, per_layer, lengths)
        flat = [s for pair in got_states for s in pair]  # k = layer * K + direction
        if mode == "lstm":
            got_final = [torch.stack([s.h for s in flat]), torch.stack([s.c for s in flat])]
        else:
            got_final = [torch.stack(flat)]
        assert_all_close([got, *got_final], [out, *_flat(final)], torch.float64)
        # gradients reach the user's parameters
        params = list(stack.parameters())
        grads = torch.autograd.grad(got.sum(), params)
        ref = torch.autograd.grad(out.sum(), list(rnn.parameters()))
        if not custom:
            assert_all_close(list(grads), list(ref), torch.float64)
        else:
            assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("reverse", [False, True])
def test_recurrent_custom_cell_equals_rnn(reverse):
    from rnnkit.recurrent import Recurrent

    torch.manual_seed(0)
    cell = TinyElman(D, H)
    rnn = RNN("elman", D, H, bidirectional=True, backend="loop", dtype=torch.float64)
    _to_rnn(rnn, 0, int(reverse), cell)
    x = torch.randn(B, T, D, dtype=torch.float64)
    out, final = rnn(x, None, LENGTHS)
    got, got_final = Recurrent(cell, reverse=reverse)(x, None, LENGTHS)
    half = slice(H, 2 * H) if reverse else slice(0, H)
    assert_all_close([got, got_final], [out[..., half], final[int(reverse)]], torch.float64)


# --- gradcheck ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend", [pytest.param(b, marks=[pytest.mark.slow] if b == "loop" else []) for b in BACKENDS]
)  # the loop is torch's autograd through the step: the slow tier (.ci/run) checks it
@pytest.mark.parametrize("label", list(MODES))
def test_rnn_gradcheck(label, backend):
    torch.manual_seed(0)
    mode, nonlinearity, _ = MODES[label]
    rnn = RNN(mode, 3, 2, 2, bidirectional=True, nonlinearity=nonlinearity, backend=backend, dtype=torch.float64)
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    n = 2 if mode == "lstm" else 1
    state = [torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True) for _ in range(n)]
    names = [name for name, _ in rnn.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in rnn.parameters()]
    lengths = torch.tensor([3, 2])

    def f(x, *args):
        s, ps = args[:n], args[n:]
        arg = LSTMState(*s) if n == 2 else s[0]
        out, final = torch.func.functional_call(rnn, dict(zip(names, ps, strict=True)), (x, arg, lengths))
        return (out, *_flat(final))

    assert torch.autograd.gradcheck(f, (x, *state, *params), fast_mode=False)


# --- errors --------------------------------------------------------------------------------------------------


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"mode must be one of \('elman', 'lstm', 'gru'.*\), got 'transformer'"):
        RNN("transformer", D, H)
    with pytest.raises(ValueError, match=r"nonlinearity must be one of \('tanh', 'relu'\), got 'gelu'"):
        RNN("elman", D, H, nonlinearity="gelu")
    with pytest.raises(ValueError, match=r"nonlinearity applies to mode 'elman' only, got 'relu' for 'lstm'"):
        RNN("lstm", D, H, nonlinearity="relu")
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'loop', 'native', 'fused'\), got 'cuda'"):
        RNN("gru", D, H, backend="cuda")
    with pytest.raises(ValueError, match=r"num_layers must be a positive int, got 0"):
        RNN("gru", D, H, 0)
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int, got -2"):
        RNN("gru", D, -2)
    with pytest.raises(TypeError, match=r"input_size must be an int, got float 4\.5"):
        RNN("gru", 4.5, H)
    for bad in (-0.1, 1.0, True, "0.5"):
        with pytest.raises(ValueError, match=rf"dropout must be a number in \[0, 1\), got {bad!r}"):
            RNN("gru", D, H, 2, dropout=bad)
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'loop', 'native', 'fused'\), got 'mine'"):
        RNN("gru", D, H, backend="mine")
    with pytest.raises(
        ValueError, match=r"backend 'native' cannot run this RNN \(cell 'gru', zoneout\).*\('loop', 'fused'\)"
    ):
        RNN("gru", D, H, backend="native", zoneout=0.1)


def test_forward_errors():
    rnn = RNN("gru", D, H, 2)
    with pytest.raises(TypeError, match=r"x must be a Tensor or PackedSequence, got list"):
        rnn([[1.0]])
    with pytest.raises(ValueError, match=r"x must be 3-D \(batch, time, features=4\), got shape \(5, 4\).*unsqueeze"):
        rnn(torch.randn(T, D))
    with pytest.raises(ValueError, match=r"x.size\(-1\) must equal input_size=4, got 7"):
        rnn(torch.randn(B, T, 7))
    with pytest.raises(ValueError, match=r"x must have at least one time step, got shape \(4, 0, 4\)"):
        rnn(torch.randn(B, 0, D))
    x = torch.randn(B, T, D)
    with pytest.raises(ValueError, match=r"state must have shape \(L\*K, B, H\)=\(2, 4, 3\), got \(1, 4, 3\)"):
        rnn(x, torch.zeros(1, B, H))
    with pytest.raises(TypeError, match=r"state must be a Tensor of shape \(2, 4, 3\), got tuple"):
        rnn(x, (torch.zeros(2, B, H),))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=5\], got 6"):
        rnn(x, None, [1, 2, 6, 3])
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=5\], got 0"):
        rnn(x, None, torch.tensor([0, 2, 5, 3]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(B,\)=\(4,\), got \(3,\)"):
        rnn(x, None, [1, 2, 3])
    with pytest.raises(TypeError, match=r"lengths must hold integers, got dtype torch.float32"):
        rnn(x, None, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    packed = pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
    with pytest.raises(ValueError, match=r"lengths must be None for a PackedSequence input"):
        rnn(packed, None, LENGTHS)


def test_lstm_state_errors():
    rnn = RNN("lstm", D, H)
    x = torch.randn(B, T, D)
    with pytest.raises(TypeError, match=r"state must be an LSTMState\(h, c\) or a pair of Tensors, got Tensor"):
        rnn(x, torch.zeros(1, B, H))
    with pytest.raises(ValueError, match=r"state.c must have shape \(L\*K, B, H\)=\(1, 4, 3\), got \(1, 2, 3\)"):
        rnn(x, (torch.zeros(1, B, H), torch.zeros(1, 2, H)))
    with pytest.raises(TypeError, match=r"state.h must be a Tensor of shape \(1, 4, 3\), got NoneType"):
        rnn(x, (None, torch.zeros(1, B, H)))


def test_step_and_conversion_errors():
    with pytest.raises(
        ValueError, match=r"step needs a unidirectional RNN \(bidirectional=False\), got bidirectional=True"
    ):
        RNN("gru", D, H, bidirectional=True).step(torch.randn(B, D))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, input_size=4\), got \(4, 1, 4\)"):
        RNN("gru", D, H).step(torch.randn(B, 1, D))
    with pytest.raises(TypeError, match=r"module must be a torch.nn.RNN, LSTM or GRU, got Linear"):
        RNN.from_torch(nn.Linear(D, H))
    with pytest.raises(ValueError, match=r"module.proj_size must be 0 \(projections are not supported\), got 2"):
        RNN.from_torch(nn.LSTM(D, H, proj_size=2))


def test_combinator_errors():
    from rnnkit.cells import GRUCell
    from rnnkit.recurrent import Bidirectional, Recurrent, Stack

    with pytest.raises(TypeError, match=r"cell must be a callable module, got int"):
        Recurrent(3)
    fwd, bwd = Recurrent(GRUCell(D, H)), Recurrent(GRUCell(D, H), reverse=True)
    with pytest.raises(
        ValueError, match=r"forward_layer must have reverse=False and backward_layer reverse=True, got True and False"
    ):
        Bidirectional(bwd, fwd)
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\), got 1.5"):
        Stack([fwd], dropout=1.5)
    with pytest.raises(ValueError, match=r"state must hold one entry per layer \(1\), got 2"):
        Stack([fwd])(torch.randn(B, T, D), [None, None])
    with pytest.raises(ValueError, match=r"x.size\(-1\) must equal input_size=4, got 2"):
        fwd(torch.randn(B, T, 2))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=5\], got 9"):
        fwd(torch.randn(B, T, D), None, [9, 1, 1, 1])
    packed = pack_padded_sequence(torch.randn(B, T, D), LENGTHS, batch_first=True, enforce_sorted=False)
    with pytest.raises(TypeError, match=r"x must be a padded Tensor \(B, T, D\) .*, got PackedSequence"):
        fwd(packed)


def test_stack_dropout_between_layers():
    from rnnkit.cells import GRUCell
    from rnnkit.recurrent import Recurrent, Stack

    torch.manual_seed(0)
    layers = [Recurrent(GRUCell(D, H, dtype=torch.float64)), Recurrent(GRUCell(H, H, dtype=torch.float64))]
    stack = Stack(layers, dropout=0.5)
    x = torch.randn(B, T, D, dtype=torch.float64)
    torch.manual_seed(3)
    got, _ = stack(x, None, LENGTHS)
    torch.manual_seed(3)
    y0, _ = layers[0](x, None, LENGTHS)
    y1, _ = layers[1](torch.nn.functional.dropout(y0, 0.5, training=True), None, LENGTHS)  # not before layer 0
    torch.testing.assert_close(got, y1, rtol=0, atol=0)
    assert (got - layers[1](y0, None, LENGTHS)[0]).abs().max() > 1e-3  # the mask did something
    stack.eval()
    torch.testing.assert_close(stack(x, None, LENGTHS)[0], layers[1](y0, None, LENGTHS)[0], rtol=0, atol=0)


def test_scan_is_the_plain_loop():
    from rnnkit.cells import GRUCell
    from rnnkit.recurrent import scan

    torch.manual_seed(0)
    cell = GRUCell(D, H, dtype=torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64)
    out, h = scan(cell, x, None, LENGTHS.tolist(), reverse=True)  # a list of lengths is accepted
    for b, n in enumerate(LENGTHS.tolist()):
        hb = None
        for t in reversed(range(n)):
            y, hb = cell(x[b : b + 1, t], hb)
            torch.testing.assert_close(out[b : b + 1, t], y, **tol(torch.float64))
        torch.testing.assert_close(h[b : b + 1], hb, **tol(torch.float64))
        assert (out[b, n:] == 0).all()
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=5\], got 0"):
        scan(cell, x, None, [0, 1, 2, 3])


@pytest.mark.parametrize("batch_first", [True, False])
def test_mask_is_the_same_as_lengths(batch_first):
    from rnnkit.sequence import lengths_to_mask

    torch.manual_seed(0)
    rnn = RNN("gru", 3, 5, num_layers=2, bidirectional=True, batch_first=batch_first, backend="loop")
    x = torch.randn(4, 6, 3)
    lengths = torch.tensor([6, 3, 1, 4])
    mask = lengths_to_mask(lengths, 6)  # (B, T)
    if not batch_first:
        x, mask = x.transpose(0, 1), mask.transpose(0, 1)
    out_l, h_l = rnn(x, lengths=lengths)
    out_m, h_m = rnn(x, mask=mask)
    torch.testing.assert_close(out_m, out_l, rtol=0, atol=0)
    torch.testing.assert_close(h_m, h_l, rtol=0, atol=0)
    with pytest.raises(ValueError, match="lengths or mask, not both"):
        rnn(x, lengths=lengths, mask=mask)
    gap = mask.clone()
    gap[(0, 1) if batch_first else (1, 0)] = False  # row 0, step 1: valid steps after a gap
    with pytest.raises(ValueError, match="prefix mask"):
        rnn(x, mask=gap)


def test_stack_runs_any_layer_with_the_contract():
    """A layer that is not a Recurrent or Bidirectional (here a nested Stack) runs as one direction of the skeleton,
    called batch-first with the lengths: the stack equals its layers called one by one."""
    from rnnkit.cells import GRUCell
    from rnnkit.recurrent import Recurrent, Stack

    torch.manual_seed(0)
    inner = Stack([Recurrent(GRUCell(D, H, dtype=torch.float64))])
    top = Recurrent(GRUCell(H, H, dtype=torch.float64), reverse=True)
    x = torch.randn(B, T, D, dtype=torch.float64)
    got, (s_inner, s_top) = Stack([inner, top])(x, None, LENGTHS)
    y0, e_inner = inner(x, None, LENGTHS)
    y1, e_top = top(y0, None, LENGTHS)
    torch.testing.assert_close([got, *s_inner, s_top], [y1, *e_inner, e_top], rtol=0, atol=0)
