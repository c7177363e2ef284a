"""The fused LayerNorm LSTM and GRU (kernels/layernorm_lstm.py, layernorm_gru.py: hand-written BPTT) equal the
"loop" reference, on their C++ step loops (kernels/extension.py) and on their Python ones."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from conftest import tol
from rnnkit.cells import LSTMState
from rnnkit.kernels import extension, layernorm_gru, layernorm_lstm
from rnnkit.kernels.layernorm_gru import LayerNormGRUFunction, layernorm_gru_layer
from rnnkit.kernels.layernorm_lstm import LayerNormLSTMFunction, layernorm_lstm_layer
from rnnkit.recurrent import RNN

pytestmark = pytest.mark.usefixtures("one_thread")

# Not H = 3: LN over 3 units is so ill-conditioned that float32's loop and fused each miss float64 by 2e-4 there.
B, T, D, H = 3, 5, 8, 16
LENGTHS = torch.tensor([5, 2, 4])


CELLS = ["layernorm-lstm", "layernorm-gru"]


def _model(cell: str, layers: int, bidirectional: bool, bias: bool, dtype: torch.dtype) -> RNN:
    """A LayerNorm LSTM or GRU whose LN gains and shifts are moved off their init (ones, zeros), so that a
    gradient that ignores them cannot pass."""
    torch.manual_seed(0)
    rnn = RNN(cell, D, H, layers, bias=bias, bidirectional=bidirectional, dtype=dtype)
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.3 * torch.randn_like(p))
    return rnn


def _run(rnn: RNN, backend: str, x, state, lengths):
    """Forward and backward of a loss touching every output and the final state(s); returns outputs, final
    states and the gradients of x, the initial state(s) and every parameter."""
    lstm = rnn.spec.has_cell
    rnn.backend = backend
    x = x.clone().requires_grad_(True)
    state = None if state is None else tuple(s.clone().requires_grad_(True) for s in state)
    arg = None if state is None else LSTMState(*state) if lstm else state[0]
    out, final = rnn(x, arg, lengths)
    finals = tuple(final) if lstm else (final,)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    loss = (out * weights).sum() + sum((f * f).sum() for f in finals)
    rnn.zero_grad(set_to_none=True)
    loss.backward()
    grads = [x.grad, *(s.grad for s in state or ())] + [p.grad for p in rnn.parameters()]
    assert all(g is not None for g in grads)
    return [out, *finals], grads


def _tolerance(ref: torch.Tensor) -> dict[str, float]:
    """conftest's tolerances, with float32's 1e-5 absolute taken relative to the tensor's largest value: the
    gradients reach 10-100, and float32's rounding, amplified by each LayerNorm's 1/std, moves both backends
    about that far from a float64 run."""
    out = dict(tol(ref.dtype))
    if ref.dtype == torch.float32:
        out["atol"] *= max(1.0, ref.abs().max().item())
    return out


CASES = list(itertools.product(CELLS, [1, 2], [False, True], [False, True], [torch.float64, torch.float32]))


@pytest.mark.parametrize(("cell", "layers", "bidirectional", "padded", "dtype"), CASES)
def test_fused_equals_loop(cell, layers, bidirectional, padded, dtype, loops):
    K = 2 if bidirectional else 1
    n_state = 2 if cell == "layernorm-lstm" else 1
    for bias, with_state in [(True, False), (False, True)]:
        rnn = _model(cell, layers, bidirectional, bias, dtype)
        x = torch.randn(B, T, D, dtype=dtype)
        state = tuple(torch.randn(layers * K, B, H, dtype=dtype) for _ in range(n_state)) if with_state else None
        lengths = LENGTHS if padded else None
        ref_out, ref_grads = _run(rnn, "loop", x, state, lengths)
        out, grads = _run(rnn, "fused", x, state, lengths)
        for a, b in zip(ref_out + ref_grads, out + grads, strict=True):
            torch.testing.assert_close(b, a, **_tolerance(a))
        if padded:  # nothing leaks past a row's length
            assert out[0][1, 2:].abs().max() == 0


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("slice_steps", [1, 2])
def test_backward_in_time_slices_equals_loop(cell, bidirectional, slice_steps, monkeypatch, loops):
    """The backward recomputes the products and folds each time slice (ops.backward_slices) into the sums before
    the next; with slices of 1 and 2 steps (T = 5: uneven), outputs and every gradient still equal the "loop"
    reference."""
    monkeypatch.setattr(layernorm_lstm, "SLICES", 1)  # so that SLICE_ROWS alone sets the slices
    monkeypatch.setattr(layernorm_lstm, "SLICE_ROWS", slice_steps * B)
    monkeypatch.setattr(layernorm_lstm, "CPP_SLICE_ROWS", slice_steps * B)
    for module in (layernorm_lstm, layernorm_gru):  # both ways of getting P in the backward
        monkeypatch.setattr(module, "KEEP_P", slice_steps == 1)
    assert len(layernorm_lstm.slices(T, B, False)) == -(-T // slice_steps)
    rnn = _model(cell, 2, bidirectional, True, torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64)
    ref_out, ref_grads = _run(rnn, "loop", x, None, LENGTHS)
    out, grads = _run(rnn, "fused", x, None, LENGTHS)
    for a, b in zip(ref_out + ref_grads, out + grads, strict=True):
        torch.testing.assert_close(b, a, **tol(torch.float64))


def _layer_inputs(cell: str, bias: bool):
    """float64 inputs of one fused layer, (T, B, D, H) = (4, 2, 3, 3): x, the initial state(s), the parameters
    in the layer's argument order (biases None without ``bias``), gains near 1."""
    lstm = cell == "layernorm-lstm"
    G = 4 if lstm else 3
    gen = torch.Generator().manual_seed(3)

    def rand(*shape, scale=1.0, shift=0.0):
        v = shift + scale * torch.randn(*shape, generator=gen, dtype=torch.float64)
        return v.requires_grad_(True)

    x, states = rand(4, 2, 3), [rand(2, 3) for _ in range(2 if lstm else 1)]  # (T, B, D), h0 (and c0) (B, H)
    w = [rand(G * 3, 3), rand(G * 3, 3)]  # W_ih, W_hh
    w += [rand(G * 3), rand(G * 3)] if bias else [None, None]
    w += [rand(G * 3, scale=0.3, shift=1.0), rand(G * 3, scale=0.3, shift=1.0)]  # a_ih, a_hh
    if lstm:
        w += [rand(3, scale=0.3, shift=1.0), rand(3)]  # a_c, b_c
    return x, states, w


FUNCTIONS = {"layernorm-lstm": LayerNormLSTMFunction.apply, "layernorm-gru": LayerNormGRUFunction.apply}
LAYER_FNS = {"layernorm-lstm": layernorm_lstm_layer, "layernorm-gru": layernorm_gru_layer}
MASK = (torch.arange(4).unsqueeze(1) < torch.tensor([4, 2]).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(cell, reverse, bias, loops):
    x, states, w = _layer_inputs(cell, bias)
    k = len(states)
    inputs = (x, *states, *(v for v in w if v is not None))

    def fn(x, *rest):
        params = list(rest[k:]) if bias else [*rest[k : k + 2], None, None, *rest[k + 2 :]]
        return FUNCTIONS[cell](x, *rest[:k], MASK, reverse, *params)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("padded", [False, True])
def test_no_grad_forward_equals_grad_forward(cell, padded, loops):
    x, states, w = _layer_inputs(cell, True)
    mask = MASK if padded else None
    for reverse in (False, True):
        with_grad = LAYER_FNS[cell](x, *states, mask, reverse, *w)
        assert with_grad[0].requires_grad
        with torch.no_grad():
            without = LAYER_FNS[cell](x, *states, mask, reverse, *w)
        for a, b in zip(with_grad, without, strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_backward_twice_with_retain_graph(cell, loops):
    rnn = _model(cell, 2, True, True, torch.float32)
    rnn.backend = "fused"
    x = torch.randn(B, T, D, requires_grad=True)
    out, _ = rnn(x, None, LENGTHS)
    out.sum().backward(retain_graph=True)
    first = x.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)


@pytest.mark.parametrize("alias", ["ln-lstm", "ln-gru"])
def test_auto_picks_fused_and_alias_works(alias):
    rnn = RNN(alias, D, H)
    x = torch.randn(B, T, D)
    assert rnn.resolved_backend(x) == "fused"
    out, _ = rnn(x)
    assert out.shape == (B, T, H)


def _cpp_and_python(rnn: RNN, x, state, lengths):
    """The fused backend's outputs and gradients on its C++ loops and on its Python ones."""
    runs = []
    for cpp in (True, False):
        with extension.use_extension(cpp):
            assert extension.available() == cpp
            runs.append(_run(rnn, "fused", x, state, lengths))
    return runs


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias", [True, False])
def test_cpp_loops_equal_python_loops_and_loop(cell, bias):
    """float64, 2 layers, both directions, lengths and a given initial state: the C++ steps, the Python steps and
    the "loop" backend agree on the outputs, the final states and every gradient."""
    if os.environ.get("RNNKIT_EXTENSION") == "0":
        pytest.skip("RNNKIT_EXTENSION=0 turns the C++ loops off")
    rnn = _model(cell, 2, True, bias, torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64)
    state = tuple(torch.randn(4, B, H, dtype=torch.float64) for _ in range(2 if cell == "layernorm-lstm" else 1))
    ref_out, ref_grads = _run(rnn, "loop", x, state, LENGTHS)
    (cpp_out, cpp_grads), (py_out, py_grads) = _cpp_and_python(rnn, x, state, LENGTHS)
    for a, b, c in zip(ref_out + ref_grads, cpp_out + cpp_grads, py_out + py_grads, strict=True):
        torch.testing.assert_close(b, c, **tol(torch.float64))
        torch.testing.assert_close(b, a, **tol(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
def test_extension_turned_off_between_forward_and_backward(cell):
    """A forward on the C++ loops whose backward runs after the loops were turned off still gets every gradient
    right: what the C++ forward kept is for the C++ backward, which runs anyway (extension.loaded)."""
    if os.environ.get("RNNKIT_EXTENSION") == "0":
        pytest.skip("RNNKIT_EXTENSION=0 turns the C++ loops off")
    rnn = _model(cell, 2, True, True, torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64)
    _, ref_grads = _run(rnn, "loop", x, None, LENGTHS)
    rnn.backend = "fused"
    rnn.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    with extension.use_extension(True):
        out, final = rnn(xg, None, LENGTHS)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    loss = (out * weights).sum() + sum((f * f).sum() for f in (tuple(final) if cell == "layernorm-lstm" else (final,)))
    with extension.use_extension(False):
        loss.backward()
    for a, b in zip(ref_grads, [xg.grad] + [p.grad for p in rnn.parameters()], strict=True):
        torch.testing.assert_close(b, a, **tol(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
def test_rows_split_over_threads_equal_loop(cell):
    """A step wide enough that the C++ loops split its rows over two threads (row_grain in recurrence.cpp), with
    H = 200 (not a multiple of the vector width) and lengths."""
    if not extension.available():
        pytest.skip("needs the C++ loops")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        rnn = RNN(cell, 8, 200, bidirectional=True, dtype=torch.float64)
        x = torch.randn(48, 3, 8, dtype=torch.float64)
        lengths = torch.randint(1, 4, (48,))
        ref_out, ref_grads = _run(rnn, "loop", x, None, lengths)
        out, grads = _run(rnn, "fused", x, None, lengths)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(ref_out + ref_grads, out + grads, strict=True):
        torch.testing.assert_close(b, a, **tol(torch.float64))
