"""The fused LayerNorm LSTM (kernels/layernorm_lstm.py, hand-written BPTT) equals the "loop" reference."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import tol
from rnnkit.backends import resolve
from rnnkit.cells import LSTMState
from rnnkit.kernels import layernorm_lstm, ops
from rnnkit.kernels.layernorm_lstm import LayerNormLSTMFunction, layernorm_lstm_layer
from rnnkit.recurrent import RNN

pytestmark = pytest.mark.usefixtures("one_thread")

# Not H = 3: LN over 3 units is so ill-conditioned that float32's loop and fused each miss float64 by 2e-4 there.
B, T, D, H = 3, 5, 8, 16
LENGTHS = torch.tensor([5, 2, 4])


def _model(layers: int, bidirectional: bool, bias: bool, dtype: torch.dtype) -> RNN:
    """A LayerNorm LSTM whose LN gains and shifts are moved off their init (ones, zeros), so that a gradient
    that ignores them cannot pass."""
    torch.manual_seed(0)
    rnn = RNN("layernorm-lstm", D, H, layers, bias=bias, bidirectional=bidirectional, dtype=dtype)
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.3 * torch.randn_like(p))
    return rnn


def _run(rnn: RNN, backend: str, x, state, lengths):
    """Forward and backward of a loss touching every output and both final states; returns outputs, final
    states and the gradients of x, h0, c0 and every parameter."""
    rnn.backend = backend
    x = x.clone().requires_grad_(True)
    state = None if state is None else tuple(s.clone().requires_grad_(True) for s in state)
    out, final = rnn(x, None if state is None else LSTMState(*state), lengths)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    loss = (out * weights).sum() + sum((f * f).sum() for f in final)
    rnn.zero_grad(set_to_none=True)
    loss.backward()
    grads = [x.grad, *(s.grad for s in state or ())] + [p.grad for p in rnn.parameters()]
    assert all(g is not None for g in grads)
    return [out, *final], grads


def _tolerance(ref: torch.Tensor) -> dict[str, float]:
    """conftest's tolerances, with float32's 1e-5 absolute taken relative to the tensor's largest value: the
    gradients reach 10-100, and float32's rounding, amplified by each LayerNorm's 1/std, moves both backends
    about that far from a float64 run."""
    out = dict(tol(ref.dtype))
    if ref.dtype == torch.float32:
        out["atol"] *= max(1.0, ref.abs().max().item())
    return out


CASES = list(itertools.product([1, 2], [False, True], [False, True], [torch.float64, torch.float32]))


@pytest.mark.parametrize(("layers", "bidirectional", "padded", "dtype"), CASES)
def test_fused_equals_loop(layers, bidirectional, padded, dtype):
    K = 2 if bidirectional else 1
    for bias, with_state in [(True, False), (False, True)]:
        rnn = _model(layers, bidirectional, bias, dtype)
        x = torch.randn(B, T, D, dtype=dtype)
        state = tuple(torch.randn(layers * K, B, H, dtype=dtype) for _ in range(2)) if with_state else None
        lengths = LENGTHS if padded else None
        ref_out, ref_grads = _run(rnn, "loop", x, state, lengths)
        out, grads = _run(rnn, "fused", x, state, lengths)
        for a, b in zip(ref_out + ref_grads, out + grads, strict=True):
            torch.testing.assert_close(b, a, **_tolerance(a))
        if padded:  # nothing leaks past a row's length
            assert out[0][1, 2:].abs().max() == 0


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("slice_steps", [1, 2])
def test_backward_in_time_slices_equals_loop(bidirectional, slice_steps, monkeypatch):
    """The backward recomputes the products and folds each time slice (ops.backward_slices) into the sums before
    the next; with slices of 1 and 2 steps (T = 5: uneven), outputs and every gradient still equal the "loop"
    reference."""
    monkeypatch.setattr(layernorm_lstm, "SLICE_ROWS", slice_steps * B)
    assert len(ops.backward_slices(T, B, False, layernorm_lstm.SLICE_ROWS)) == -(-T // slice_steps)
    rnn = _model(2, bidirectional, True, torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64)
    ref_out, ref_grads = _run(rnn, "loop", x, None, LENGTHS)
    out, grads = _run(rnn, "fused", x, None, LENGTHS)
    for a, b in zip(ref_out + ref_grads, out + grads, strict=True):
        torch.testing.assert_close(b, a, **tol(torch.float64))


def _layer_inputs(bias: bool):
    gen = torch.Generator().manual_seed(3)

    def rand(*shape, scale=1.0, shift=0.0):
        v = shift + scale * torch.randn(*shape, generator=gen, dtype=torch.float64)
        return v.requires_grad_(True)

    x, h0, c0 = rand(4, 2, 3), rand(2, 3), rand(2, 3)  # (T, B, D), (B, H)
    w = [rand(12, 3), rand(12, 3)]  # W_ih, W_hh (4H, D), (4H, H)
    w += [rand(12), rand(12)] if bias else [None, None]
    w += [rand(12, scale=0.3, shift=1.0), rand(12, scale=0.3, shift=1.0), rand(3, scale=0.3, shift=1.0), rand(3)]
    return x, h0, c0, w


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(reverse, bias):
    x, h0, c0, w = _layer_inputs(bias)
    mask = (torch.arange(4).unsqueeze(1) < torch.tensor([4, 2]).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)
    inputs = (x, h0, c0, *(v for v in w if v is not None))

    def fn(x, h0, c0, *rest):
        weights = list(rest) if bias else [*rest[:2], None, None, *rest[2:]]
        return LayerNormLSTMFunction.apply(x, h0, c0, mask, reverse, *weights)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("padded", [False, True])
def test_no_grad_forward_equals_grad_forward(padded):
    x, h0, c0, w = _layer_inputs(True)
    mask = (torch.arange(4).unsqueeze(1) < torch.tensor([4, 2]).unsqueeze(0)).unsqueeze(-1) if padded else None
    for reverse in (False, True):
        with_grad = layernorm_lstm_layer(x, h0, c0, mask, reverse, *w)
        assert with_grad[0].requires_grad
        with torch.no_grad():
            without = layernorm_lstm_layer(x, h0, c0, mask, reverse, *w)
        for a, b in zip(with_grad, without, strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_backward_twice_with_retain_graph():
    rnn = _model(2, True, True, torch.float32)
    rnn.backend = "fused"
    x = torch.randn(B, T, D, requires_grad=True)
    out, _ = rnn(x, None, LENGTHS)
    out.sum().backward(retain_graph=True)
    first = x.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)


def test_auto_picks_fused_and_alias_works():
    rnn = RNN("ln-lstm", D, H)
    x = torch.randn(B, T, D)
    assert resolve(rnn, x) == "fused"
    out, _ = rnn(x)
    assert out.shape == (B, T, H)
