"""sequence.py helpers against plain per-row Python."""

from __future__ import annotations

import pytest
import torch

from rnnkit.cells import LSTMCell, LSTMState
from rnnkit.recurrent import Recurrent, Stack
from rnnkit.sequence import (
    check_lengths,
    detach_state,
    flip_padded,
    last_valid,
    lengths_to_mask,
    map_state,
    split_time,
)

LENGTHS = torch.tensor([3, 5, 1, 4])


def test_flip_padded_by_hand():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 2, 3)  # extra feature dimensions are carried along
    got = flip_padded(x, LENGTHS)
    for b, n in enumerate(LENGTHS.tolist()):
        torch.testing.assert_close(got[b, :n], x[b, :n].flip(0), rtol=0, atol=0)
        torch.testing.assert_close(got[b, n:], x[b, n:], rtol=0, atol=0)  # padding stays where it is
    torch.testing.assert_close(flip_padded(got, LENGTHS), x, rtol=0, atol=0)  # an involution
    torch.testing.assert_close(flip_padded(x, None), x.flip(1), rtol=0, atol=0)
    # the docstring's example
    letters = torch.tensor([[1, 2, 3], [4, 5, 0]])
    assert flip_padded(letters, torch.tensor([3, 2])).tolist() == [[3, 2, 1], [5, 4, 0]]


def test_flip_padded_gradient():
    x = torch.randn(4, 5, 3, requires_grad=True)
    w = torch.randn(4, 5, 3)
    (flip_padded(x, LENGTHS) * w).sum().backward()
    torch.testing.assert_close(x.grad, flip_padded(w, LENGTHS), rtol=0, atol=0)


def test_last_valid_by_hand():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 3)
    got = last_valid(x, LENGTHS)
    assert got.shape == (4, 3)
    for b, n in enumerate(LENGTHS.tolist()):
        torch.testing.assert_close(got[b], x[b, n - 1], rtol=0, atol=0)
    torch.testing.assert_close(last_valid(x, None), x[:, -1], rtol=0, atol=0)
    x4 = torch.randn(4, 5, 2, 3)
    torch.testing.assert_close(last_valid(x4, LENGTHS)[1], x4[1, 4], rtol=0, atol=0)


def test_lengths_to_mask_by_hand():
    mask = lengths_to_mask(LENGTHS, 6)
    expected = torch.tensor([[t < n for t in range(6)] for n in LENGTHS.tolist()])
    assert mask.dtype == torch.bool and torch.equal(mask, expected)


def test_check_lengths_accepts_and_normalises():
    for given in ([3, 5, 1, 4], (3, 5, 1, 4), LENGTHS.int(), LENGTHS.to(torch.uint8)):
        got = check_lengths(given, 4, 5)
        assert got.dtype == torch.int64 and got.device.type == "cpu"
        assert got.tolist() == [3, 5, 1, 4]
    assert not check_lengths(LENGTHS.clone().requires_grad_(False), 4, 5).requires_grad


@pytest.mark.parametrize(
    ("lengths", "error", "message"),
    [
        ([3, 5, 1], ValueError, r"lengths must have shape \(B,\)=\(4,\), got \(3,\)"),
        (torch.tensor([[3, 5, 1, 4]]), ValueError, r"lengths must have shape \(B,\)=\(4,\), got \(1, 4\)"),
        (torch.tensor(3), ValueError, r"lengths must have shape \(B,\)=\(4,\), got \(\)"),
        ([3.0, 5.0, 1.0, 4.0], TypeError, r"lengths must hold integers, got dtype torch.float32"),
        (torch.tensor([True, True, True, True]), TypeError, r"lengths must hold integers, got dtype torch.bool"),
        ([3, 6, 1, 4], ValueError, r"lengths must lie in \[1, T=5\], got 6"),
        ([3, 5, 0, 4], ValueError, r"lengths must lie in \[1, T=5\], got 0"),
        ([3, 5, -2, 9], ValueError, r"lengths must lie in \[1, T=5\], got -2"),
        ("abcd", TypeError, r"lengths must be a 1-D Tensor or sequence of ints, got str"),
    ],
)
def test_check_lengths_errors(lengths, error, message):
    with pytest.raises(error, match=message):
        check_lengths(lengths, 4, 5)


def test_detach_state_keeps_structure_and_cuts_the_graph():
    w = torch.ones(3, requires_grad=True)
    h, c = w * 2, w * 3
    for state in (h, LSTMState(h, c), (h, c), [LSTMState(h, c), (h, None)], None):
        out = detach_state(state)
        assert type(out) is type(state)
        for a, b in zip(_leaves(state), _leaves(out), strict=True):
            assert torch.equal(a, b) and a.requires_grad and not b.requires_grad and b.grad_fn is None
    assert _leaves([LSTMState(h, c), (h, None)]) == [h, c, h]


def _leaves(state) -> list:
    """The Tensors of a state, in order, by plain recursion (an oracle independent of map_state)."""
    if state is None:
        return []
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for part in state for t in _leaves(part)]


def test_detach_state_of_a_stack():
    """TBPTT through ``Stack``: its state (a list, one entry per layer) detaches like any other."""
    torch.manual_seed(0)
    stack = Stack([Recurrent(LSTMCell(3, 4)), Recurrent(LSTMCell(4, 4))])
    x = torch.randn(2, 6, 3)
    full, _ = stack(x)
    state, outs = None, []
    for chunk in split_time(x, 4):
        y, state = stack(chunk, state)
        state = detach_state(state)
        assert isinstance(state, list) and isinstance(state[1], LSTMState) and not state[1].h.requires_grad
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=1), full)


def test_map_state():
    a = LSTMState(torch.ones(2), torch.zeros(2))
    b = LSTMState(torch.full((2,), 2.0), torch.full((2,), 3.0))
    s = map_state(torch.add, a, b)
    assert isinstance(s, LSTMState) and s.h.tolist() == [3.0, 3.0] and s.c.tolist() == [3.0, 3.0]
    assert map_state(lambda t: t * 2, (torch.ones(1), [torch.ones(1)]))[1][0].item() == 2.0
    assert map_state(torch.neg, None) is None
    with pytest.raises(TypeError, match=r"state must be a Tensor or a tuple or list of Tensors, got dict"):
        map_state(torch.neg, {"h": torch.ones(1)})
    with pytest.raises(ValueError):  # states of different structure
        map_state(torch.add, (torch.ones(1),), (torch.ones(1), torch.ones(1)))


def test_split_time():
    x = torch.arange(2 * 7).view(2, 7)
    chunks = split_time(x, 3)
    assert [c.shape[1] for c in chunks] == [3, 3, 1]
    assert torch.equal(torch.cat(chunks, dim=1), x)
    with pytest.raises(ValueError, match=r"chunk must be a positive int, got 0"):
        split_time(x, 0)


def test_pad_sequences_pads_batch_first_and_returns_lengths():
    from rnnkit.sequence import pad_sequences

    x, lengths = pad_sequences([torch.tensor([1, 2, 3]), torch.tensor([4])])
    assert x.tolist() == [[1, 2, 3], [4, 0, 0]] and lengths.tolist() == [3, 1] and lengths.dtype == torch.int64
    series, lengths = pad_sequences([torch.ones(2, 3), torch.full((4, 3), 2.0)], padding_value=-1.0)
    assert series.shape == (2, 4, 3) and lengths.tolist() == [2, 4]
    assert (series[0, 2:] == -1).all() and (series[1] == 2).all()
    with pytest.raises(ValueError, match="feature shape"):
        pad_sequences([torch.ones(2, 3), torch.ones(2, 4)])
    with pytest.raises(ValueError, match=r"sequences\[1\] must be a Tensor with at least one time step"):
        pad_sequences([torch.ones(2), torch.ones(0)])
    with pytest.raises(ValueError, match="non-empty list"):
        pad_sequences([])


def test_mask_to_lengths_accepts_prefix_masks_only():
    from rnnkit.sequence import mask_to_lengths

    mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    assert mask_to_lengths(mask).tolist() == [2, 3, 1]
    with pytest.raises(ValueError, match=r"prefix mask .* got row 1: \[1, 0, 1\]"):
        mask_to_lengths(torch.tensor([[True, False, False], [True, False, True]]))
    with pytest.raises(ValueError, match="bool Tensor"):
        mask_to_lengths(torch.ones(2, 3))
