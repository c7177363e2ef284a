"""Contiguous stream batching for truncated BPTT (pytorch/examples ``word_language_model`` style).

The id stream is cut into ``R = world_size * B`` equal rows; DDP rank ``r`` takes rows ``r*B .. r*B+B-1``, so
every rank reads its own shard. Each row is then read left to right in chunks of ``bptt`` steps. With a stream
``a b c ... x`` (N = 25), B = 4, world_size = 1 and bptt = 3 (each row has M = (N - 1) // R = 6 inputs; the
targets are the same positions shifted by one)::

            chunk 0   chunk 1
    row 0:  a b c  |  d e f         targets  b c d | e f g
    row 1:  g h i  |  j k l                  h i j | k l m
    row 2:  m n o  |  p q r                  n o p | q r s
    row 3:  s t u  |  v w x                  t u v | w x y

Chunk k of every row continues where chunk k-1 stopped, so the recurrent state at the end of chunk k-1 is the
right initial state for chunk k (the trainer carries it, detached). The last chunk may be shorter than
``bptt``. ``position`` (the next chunk index) is all a checkpoint needs to resume mid-epoch.
"""

from __future__ import annotations

import math

from torch import Tensor

from rnnkit.errors import DataError

__all__ = ["TextStream", "batchify"]


def batchify(ids: Tensor, batch_size: int, *, rank: int = 0, world_size: int = 1) -> tuple[Tensor, Tensor]:
    """Ids (N,) -> (inputs, targets), each (B, M): rank ``rank``'s B rows of the R = world_size * B equal rows.

    The trailing ``(N - 1) - R * M`` ids are dropped; DataError when the text is shorter than one row per row.
    """
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D (N,), got shape {tuple(ids.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    R = world_size * batch_size
    M = (ids.numel() - 1) // R
    if M < 1:
        raise DataError(
            f"text of {ids.numel()} characters is shorter than one batch: "
            f"{R} rows (batch_size={batch_size} x world_size={world_size}) need at least {R + 1} characters"
        )
    inputs = ids[: R * M].view(R, M)  # (R, M)
    targets = ids[1 : R * M + 1].view(R, M)  # (R, M), but for each row's last target: the next row's first input
    rows = slice(rank * batch_size, (rank + 1) * batch_size)
    return inputs[rows], targets[rows]  # (B, M) each


class TextStream:
    """Chunks of ``bptt`` steps over the batchified stream, resumable at a chunk position.

    stream = TextStream(ids, batch_size=32, bptt=128)
    for x, y in stream.chunks(start=0):     # x, y: (B, T) int64, T <= bptt
        ...
    """

    def __init__(self, ids: Tensor, batch_size: int, bptt: int, *, rank: int = 0, world_size: int = 1) -> None:
        if bptt < 1:
            raise ValueError(f"bptt must be >= 1, got {bptt}")
        self.inputs, self.targets = batchify(ids, batch_size, rank=rank, world_size=world_size)  # (B, M) each
        self.batch_size, self.bptt = batch_size, bptt

    @property
    def row_length(self) -> int:
        """M: inputs per row."""
        return self.inputs.size(1)

    def __len__(self) -> int:
        """Chunks per epoch (the last may be shorter than bptt)."""
        return math.ceil(self.row_length / self.bptt)

    @property
    def num_chars(self) -> int:
        """Targets per epoch on this rank: B * M."""
        return self.inputs.numel()

    def chunk(self, k: int) -> tuple[Tensor, Tensor]:
        """Chunk k: inputs and targets (B, T), columns k*bptt .. min((k+1)*bptt, M) - 1."""
        if not 0 <= k < len(self):
            raise IndexError(f"chunk index must lie in [0, {len(self)}), got {k}")
        cols = slice(k * self.bptt, (k + 1) * self.bptt)
        return self.inputs[:, cols], self.targets[:, cols]  # (B, T) each

    def chunks(self, start: int = 0):
        """Yield chunks ``start`` .. len - 1 of one epoch."""
        for k in range(start, len(self)):
            yield self.chunk(k)
