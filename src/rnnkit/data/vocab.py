"""Character vocabulary: the sorted set of characters of a text, saved as JSON with each run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from rnnkit.errors import DataError
from rnnkit.io import atomic_write

__all__ = ["UNKNOWN", "Vocab"]

FORMAT = "rnnkit.vocab/1"
UNKNOWN = "\ufffd"  # U+FFFD REPLACEMENT CHARACTER: stands for any character the training text did not hold


class Vocab:
    """A bijection between characters and ids 0..V-1, ids in sorted (code point) order of the characters.

    >>> v = Vocab.from_text("hello")
    >>> v.encode("hole"), v.decode([2, 1])
    ([2, 3, 2, 1], 'he')
    """

    def __init__(self, chars: Iterable[str]) -> None:
        chars = list(chars)
        if not chars:
            raise DataError("a vocabulary needs at least one character, got none")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise DataError(f"vocabulary entries must be single characters, got {bad[0]!r}")
        if len(set(chars)) != len(chars):
            raise DataError("vocabulary characters must be unique, got duplicates")
        self.chars: list[str] = chars
        self.index: dict[str, int] = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str, *, unknown: bool = False) -> Vocab:
        """The vocabulary of every distinct character in ``text``; with ``unknown``, also ``UNKNOWN`` (U+FFFD).

        A vocabulary with the unknown symbol can encode any text (``encode(..., strict=False)``), so a model
        can score text holding characters it never saw in training; such a character costs what the model
        gives U+FFFD, which it rarely or never saw: a fair price for an unseen symbol.
        """
        if not text:
            raise DataError("cannot build a vocabulary from empty text")
        return cls(sorted(set(text) | ({UNKNOWN} if unknown else set())))

    @property
    def has_unknown(self) -> bool:
        """Whether the vocabulary reserves ``UNKNOWN`` for characters outside it."""
        return UNKNOWN in self.index

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: object) -> bool:
        return char in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    def missing(self, text: str) -> list[str]:
        """The distinct characters of ``text`` that are not in the vocabulary, sorted."""
        return sorted(set(text) - self.index.keys())

    def count_unknown(self, text: str) -> int:
        """How many characters of ``text`` (occurrences, not distinct) are not in the vocabulary."""
        missing = set(self.missing(text))
        return sum(text.count(c) for c in missing) if missing else 0

    def encode(self, text: str, *, tensor: bool = False, strict: bool = True) -> list[int] | Tensor:
        """Characters -> ids (a list, or an int64 Tensor (N,) with ``tensor=True``).

        A character outside the vocabulary is a DataError, or with ``strict=False`` the id of ``UNKNOWN``
        (a DataError too when the vocabulary has none, as in runs made before it was reserved).
        """
        missing = self.missing(text)
        if missing and (strict or not self.has_unknown):
            shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
            why = "" if strict else " (this run's vocabulary reserves no unknown symbol)"
            raise DataError(f"{len(missing)} character(s) not in the vocabulary{why}: {shown}")
        unk = self.index.get(UNKNOWN, -1)
        if tensor:
            # bulk path: map code points through a lookup table instead of a Python loop per character
            if not text:  # torch.frombuffer refuses an empty buffer
                return torch.zeros(0, dtype=torch.long)
            codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()  # (N,)
            table = torch.full((max(codes.max().item() if codes.numel() else 0, *map(ord, self.chars)) + 1,), unk)
            table[torch.tensor([ord(c) for c in self.chars])] = torch.arange(len(self))
            return table[codes]  # (N,)
        return [self.index.get(c, unk) for c in text]

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        """Ids -> string; an id outside [0, V) is a ValueError."""
        if isinstance(ids, Tensor):
            ids = ids.reshape(-1).tolist()
        out = []
        for i in ids:
            if not 0 <= int(i) < len(self):
                raise ValueError(f"ids must lie in [0, {len(self)}), got {i}")
            out.append(self.chars[int(i)])
        return "".join(out)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "chars": self.chars}, ensure_ascii=True)

    @classmethod
    def from_json(cls, s: str) -> Vocab:
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise DataError(f"vocabulary JSON is not valid JSON: {e}") from e
        if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("chars"), list):
            raise DataError(f"vocabulary JSON must be an object with format {FORMAT!r} and a chars list")
        return cls(d["chars"])

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON form atomically (see ``rnnkit.io``)."""
        atomic_write(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise DataError(f"cannot read vocabulary {path}: {e.strerror or e}") from e
