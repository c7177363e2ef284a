"""Cells equal torch.nn.RNNCell/LSTMCell/GRUCell: weights load both ways; outputs, states and gradients agree."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import tol
from rnnkit.cells import ElmanCell, GRUCell, LSTMCell, LSTMState

B, D, H = 3, 4, 5

# (rnnkit cell, torch cell, constructor keyword arguments)
CASES = {
    "elman-tanh": (ElmanCell, nn.RNNCell, {"nonlinearity": "tanh"}),
    "elman-relu": (ElmanCell, nn.RNNCell, {"nonlinearity": "relu"}),
    "lstm": (LSTMCell, nn.LSTMCell, {}),
    "gru": (GRUCell, nn.GRUCell, {}),
}


def _pair(name: str, bias: bool, dtype: torch.dtype, ours_first: bool):
    """An rnnkit cell and a torch cell with the same weights, loaded in the given direction."""
    ours_cls, theirs_cls, kw = CASES[name]
    ours = ours_cls(D, H, bias, dtype=dtype, **kw)
    theirs = theirs_cls(D, H, bias, dtype=dtype, **kw)
    if ours_first:
        theirs.load_state_dict(ours.state_dict())
    else:
        ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _run(cell, x, state, is_lstm: bool, ours: bool):
    """One step with a loss touching the output and every state; returns outputs and gradients."""
    x = x.clone().requires_grad_(True)
    state = tuple(s.clone().requires_grad_(True) for s in state)
    if ours:
        y, new = cell(x, LSTMState(*state) if is_lstm else state[0])
        new = tuple(new) if is_lstm else (new,)
    else:
        new = cell(x, state if is_lstm else state[0])
        new = tuple(new) if is_lstm else (new,)
        y = new[0]
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    loss = (y * w).sum() + sum((s * s).sum() for s in new)
    loss.backward()
    grads = [x.grad, *(s.grad for s in state)] + [p.grad for p in cell.parameters()]
    return [y, *new], grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ours_first", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_cell_equals_torch(name, ours_first, bias, dtype):
    torch.manual_seed(0)
    ours, theirs = _pair(name, bias, dtype, ours_first)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    is_lstm = name == "lstm"
    x = torch.randn(B, D, dtype=dtype)
    state = tuple(torch.randn(B, H, dtype=dtype) for _ in range(2 if is_lstm else 1))
    out_a, grads_a = _run(ours, x, state, is_lstm, ours=True)
    out_b, grads_b = _run(theirs, x, state, is_lstm, ours=False)
    assert len(grads_a) == len(grads_b) == 1 + len(state) + (4 if bias else 2)
    for a, b in zip(out_a + grads_a, out_b + grads_b, strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, **tol(dtype))


@pytest.mark.parametrize("name", list(CASES))
def test_cell_zero_state_is_default(name):
    torch.manual_seed(0)
    ours, theirs = _pair(name, True, torch.float64, ours_first=True)
    x = torch.randn(B, D, dtype=torch.float64)
    y, state = ours(x)
    expected = theirs(x)
    expected = tuple(expected) if name == "lstm" else (expected,)
    got = tuple(state) if name == "lstm" else (state,)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **tol(torch.float64))
    torch.testing.assert_close(y, expected[0], **tol(torch.float64))


@pytest.mark.parametrize("name", list(CASES))
def test_cell_default_init_matches_torch(name):
    ours_cls, theirs_cls, kw = CASES[name]
    torch.manual_seed(0)
    ours = ours_cls(D, 16, **kw)
    theirs = theirs_cls(D, 16, **kw)
    shapes = {n: p.shape for n, p in theirs.named_parameters()}
    assert {n: p.shape for n, p in ours.named_parameters()} == shapes
    bound = 1 / math.sqrt(16)
    for n, p in ours.named_parameters():
        assert p.abs().max() <= bound, n
        # uniform on [-b, b]: spread over the interval, not a constant or a narrow band
        assert p.min() < -0.5 * bound and p.max() > 0.5 * bound, n
    # same generator draws, same values: torch.nn's reset_parameters order is reproduced
    torch.manual_seed(1)
    ours = ours_cls(D, 16, **kw)
    torch.manual_seed(1)
    theirs = theirs_cls(D, 16, **kw)
    for (n, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)


def test_lstm_state_is_named_tuple():
    cell = LSTMCell(D, H)
    y, state = cell(torch.randn(B, D))
    assert isinstance(state, LSTMState)
    assert state.h is y and state.c.shape == (B, H)
    _, state2 = cell(torch.randn(B, D), (state.h, state.c))  # a plain pair is accepted too
    assert isinstance(state2, LSTMState)


@pytest.mark.parametrize("name", list(CASES))
def test_cell_gradcheck(name):
    torch.manual_seed(0)
    ours_cls, _, kw = CASES[name]
    cell = ours_cls(3, 2, dtype=torch.float64, **kw)
    n_state = 2 if name == "lstm" else 1
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    state = [torch.randn(2, 2, dtype=torch.float64, requires_grad=True) for _ in range(n_state)]
    if name == "elman-relu":  # keep pre-activations away from the kink at 0, where relu has no derivative
        with torch.no_grad():
            pre = torch.nn.functional.linear(x, cell.weight_ih, cell.bias_ih) + torch.nn.functional.linear(
                state[0], cell.weight_hh, cell.bias_hh
            )
            assert pre.abs().min() > 1e-3
    params = list(cell.parameters())

    def f(x, *args):
        s, ps = args[:n_state], args[n_state:]
        names = [n for n, _ in cell.named_parameters()]
        y, new = torch.func.functional_call(
            cell, dict(zip(names, ps, strict=True)), (x, LSTMState(*s) if n_state == 2 else s[0])
        )
        return (y, *new) if n_state == 2 else y

    assert torch.autograd.gradcheck(f, (x, *state, *params))


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ElmanCell, LSTMCell, GRUCell])
def test_cell_errors(cls):
    with pytest.raises(TypeError, match=r"input_size must be an int, got float 4\.0"):
        cls(4.0, H)
    with pytest.raises(TypeError, match=r"hidden_size must be an int, got bool True"):
        cls(D, True)
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int, got 0"):
        cls(D, 0)
    with pytest.raises(ValueError, match=r"input_size must be a positive int, got -1"):
        cls(-1, H)
    cell = cls(D, H)
    with pytest.raises(TypeError, match=r"x must be a Tensor of shape \(B, 4\), got list"):
        cell([1.0, 2.0])
    with pytest.raises(ValueError, match=r"x must be 2-D \(B, input_size=4\), got shape \(2, 3, 4\)"):
        cell(torch.randn(2, 3, D))
    with pytest.raises(ValueError, match=r"x.size\(-1\) must equal input_size=4, got 6"):
        cell(torch.randn(B, 6))
    name = "state.h" if cls is LSTMCell else "state"
    bad = torch.randn(B, H + 1)
    with pytest.raises(ValueError, match=rf"{name} must have shape \(B, H\)=\(3, 5\), got \(3, 6\)"):
        cell(torch.randn(B, D), (bad, bad) if cls is LSTMCell else bad)
    with pytest.raises(TypeError, match=rf"{name} must be a Tensor of shape \(3, 5\), got float"):
        cell(torch.randn(B, D), (1.0, 1.0) if cls is LSTMCell else 1.0)


def test_lstm_cell_state_errors():
    cell = LSTMCell(D, H)
    with pytest.raises(TypeError, match=r"state must be an LSTMState\(h, c\) or a pair of Tensors, got Tensor"):
        cell(torch.randn(B, D), torch.randn(B, H))
    good = torch.randn(B, H)
    with pytest.raises(ValueError, match=r"state.c must have shape \(B, H\)=\(3, 5\), got \(2, 5\)"):
        cell(torch.randn(B, D), (good, torch.randn(2, H)))


def test_elman_nonlinearity_error():
    with pytest.raises(ValueError, match=r"nonlinearity must be one of \('tanh', 'relu'\), got 'sigmoid'"):
        ElmanCell(D, H, nonlinearity="sigmoid")
