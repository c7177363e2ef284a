"""Helpers for padded batches and recurrent state.

Sequences are batch-first, (B, T, ...), with ``lengths`` (B,) giving each row's valid prefix.
State is a Tensor, a tuple of Tensors (such as ``LSTMState``) or a list of states (one per layer, as ``Stack``
returns); the helpers here map over any nesting of these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_lengths",
    "detach_state",
    "flip_padded",
    "last_valid",
    "lengths_to_mask",
    "map_state",
    "mask_to_lengths",
    "pad_sequences",
    "split_time",
]

State = Any  # a Tensor, a (named) tuple of states or a list of states


def map_state(fn: Callable[..., Tensor], *states: State) -> State:
    """Apply ``fn`` to each Tensor of one or more states of the same structure, keeping the structure."""
    first = states[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return fn(*states)
    if isinstance(first, (tuple, list)):  # a list is the per-layer state of ``Stack``
        parts = [map_state(fn, *parts) for parts in zip(*states, strict=True)]
        if hasattr(first, "_fields"):  # a NamedTuple such as LSTMState keeps its type
            return type(first)(*parts)
        return type(first)(parts)
    raise TypeError(f"state must be a Tensor or a tuple or list of Tensors, got {type(first).__name__}")


def detach_state(state: State) -> State:
    """Cut the graph behind ``state`` (truncated BPTT): same values, no history."""
    return map_state(lambda t: t.detach(), state)


def check_lengths(lengths: Tensor | Sequence[int], batch_size: int, max_time: int) -> Tensor:
    """Validate ``lengths`` and return it as an int64 CPU tensor of shape (B,).

    Every length must lie in [1, T]: a zero-length row has no last state to return.
    """
    if not isinstance(lengths, Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"lengths must be a 1-D Tensor or sequence of ints, got {type(lengths).__name__}") from e
    if lengths.dim() != 1 or lengths.numel() != batch_size:
        raise ValueError(f"lengths must have shape (B,)=({batch_size},), got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
    lengths = lengths.detach().to("cpu", torch.int64)
    if batch_size > 0:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > max_time:
            bad = lo if lo < 1 else hi
            raise ValueError(f"lengths must lie in [1, T={max_time}], got {bad}")
    return lengths


def lengths_to_mask(lengths: Tensor, max_time: int) -> Tensor:
    """(B,) lengths -> (B, T) bool mask, True where t < length."""
    steps = torch.arange(max_time, device=lengths.device)  # (T,)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)


def mask_to_lengths(mask: Tensor, max_time: int | None = None) -> Tensor:
    """(B, T) bool prefix mask (True for the first lengths[b] steps of row b) -> lengths (B,) int64 on the CPU.

    Keras-style masks are accepted only as prefixes: a row with a gap or with padding in front is a ValueError,
    since a recurrence over such a row would read its steps out of order.
    """
    if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.dtype != torch.bool:
        got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a (B, T) bool Tensor, got {got}")
    if max_time is not None and mask.size(1) != max_time:
        raise ValueError(f"mask must have T={max_time} columns like x, got {mask.size(1)}")
    lengths = mask.sum(1).to("cpu", torch.int64)  # (B,)
    if not torch.equal(lengths_to_mask(lengths, mask.size(1)), mask.cpu()):
        bad = int((lengths_to_mask(lengths, mask.size(1)) != mask.cpu()).any(1).nonzero()[0])
        raise ValueError(
            f"mask must be a prefix mask (True for the first lengths[b] steps of each row, then False), "
            f"got row {bad}: {mask[bad].int().tolist()}"
        )
    return lengths


def pad_sequences(sequences: Sequence[Tensor], padding_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """Sequences of shapes (T_i, ...) -> (padded (B, T, ...) batch-first, lengths (B,) int64), T = max T_i.

    >>> x, lengths = pad_sequences([torch.tensor([1, 2, 3]), torch.tensor([4])])
    >>> x.tolist(), lengths.tolist()
    ([[1, 2, 3], [4, 0, 0]], [3, 1])
    """
    if not isinstance(sequences, (list, tuple)) or not sequences:
        raise ValueError(f"sequences must be a non-empty list of Tensors, got {type(sequences).__name__}")
    for i, s in enumerate(sequences):
        if not isinstance(s, Tensor) or s.dim() < 1 or s.size(0) < 1:
            got = f"shape {tuple(s.shape)}" if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"sequences[{i}] must be a Tensor with at least one time step, got {got}")
        if s.shape[1:] != sequences[0].shape[1:]:
            raise ValueError(
                f"sequences must share their feature shape, got {tuple(sequences[0].shape[1:])} and "
                f"{tuple(s.shape[1:])} at index {i}"
            )
    lengths = torch.tensor([s.size(0) for s in sequences], dtype=torch.int64)  # (B,)
    padded = torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True, padding_value=padding_value)
    return padded, lengths


def flip_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each row of ``x`` (B, T, ...) within its own length; padding stays where it is.

    With lengths [3, 2] and T = 3::

        a b c   ->   c b a
        d e _   ->   e d _
    """
    if lengths is None:
        return x.flip(1)
    B, T = x.shape[:2]
    steps = torch.arange(T).unsqueeze(0)  # (1, T)
    L = lengths.to("cpu").unsqueeze(1)  # (B, 1)
    index = torch.where(steps < L, L - 1 - steps, steps)  # (B, T)
    index = index.to(x.device).view(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def last_valid(x: Tensor, lengths: Tensor | None) -> Tensor:
    """The last valid step of each row: (B, T, F) -> (B, F)."""
    if lengths is None:
        return x[:, -1]
    index = (lengths.to(x.device, torch.int64) - 1).view(-1, 1, *([1] * (x.dim() - 2)))
    index = index.expand(-1, 1, *x.shape[2:])  # (B, 1, F)
    return x.gather(1, index).squeeze(1)


def split_time(x: Tensor, chunk: int) -> list[Tensor]:
    """Split (B, T, ...) into chunks of ``chunk`` steps along time (the last may be shorter)."""
    if chunk <= 0:
        raise ValueError(f"chunk must be a positive int, got {chunk}")
    return list(x.split(chunk, dim=1))
