"""Labelled sequences for classification: reading the files, token vocabularies, and length-bucketed batches.

Files, chosen by extension:

- ``.tsv``: one example a line, ``text<TAB>label``: exactly one tab where labels are required (a text or label
  holding a tab is ambiguous, so such a line is refused: use ``.csv``, whose quoting can hold one; where labels are
  optional, for prediction, a line splits at its last tab); ``.csv``: two columns ``text,label`` with CSV
  quoting. An optional header line is detected (``text<TAB>label``, ``sentence,class``, ...); a header-like line
  anywhere else (a second file appended with its header) is refused rather than read as an example. Blank lines
  are skipped. Without labels (``labels="optional"``, for prediction) a line without a tab is all text.

Labels (of every format) are normalised to Unicode NFC, so ``é`` typed as one code point or as ``e`` plus a
combining accent is one class, not two classes that look alike.
- ``.ts``: the UEA/UCR time-series format (``rnnkit.data.ts``); missing values only where the file declares them.
- ``.npz``: arrays ``X`` (N, T, D) float, ``y`` (N,) and optionally ``lengths`` (N,) (default: all T).

A text example becomes token ids (characters, or whitespace-separated words); a series example a (T, D) float
array. ``LengthBuckets`` makes each epoch's batches from a seeded permutation, grouping examples of similar
length so little compute goes to padding.
"""

from __future__ import annotations

import csv
import io
import math
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rnnkit.data.text import check_line, read_text
from rnnkit.datasets import resolve
from rnnkit.errors import DataError
from rnnkit.io import check_input

__all__ = [
    "EXTENSIONS",
    "BucketBatches",
    "Examples",
    "LengthBuckets",
    "TokenVocab",
    "read_examples",
    "stratified_split",
]

EXTENSIONS = (".tsv", ".csv", ".ts", ".npz")
HEADER_TEXT = {"text", "sentence", "sequence", "word", "name", "input", "x", "document", "review"}
HEADER_LABEL = {"label", "labels", "class", "category", "target", "y", "language", "lang", "sentiment"}
MAX_EXAMPLE_BYTES = 2**31  # a data file far beyond this is not a data set we can hold


@dataclass
class Examples:
    """What a data file holds: texts (``kind == "text"``) or float arrays (T_i, D) (``kind == "series"``)."""

    kind: str  # "text" or "series"
    inputs: list  # list[str] or list[np.ndarray (T_i, D) float32]
    labels: list[str] | None  # None when the file has none (prediction input)
    source: str
    declared_labels: list[str] | None = None  # a .ts file's @classLabel list, in its order

    def __len__(self) -> int:
        return len(self.inputs)


def _is_header(fields: list[str]) -> bool:
    return len(fields) == 2 and fields[0].strip().lower() in HEADER_TEXT and fields[1].strip().lower() in HEADER_LABEL


def _read_delimited(path: Path, labels: str) -> Examples:
    text = read_text(path)
    if path.suffix.lower() == ".csv":
        reader = csv.reader(io.StringIO(text))
        try:
            rows = [(reader.line_num, row) for row in reader if row and any(f.strip() for f in row)]
        except csv.Error as e:  # a field over the csv module's limit (131,072 characters), a stray quote
            raise DataError(f"{path}, line {reader.line_num}: not readable as CSV ({e})") from None
        for i, row in rows:
            check_line(str(path), i, ",".join(row))
    else:
        rows = []
        # only \n, \r\n, \r end a line: str.splitlines would also split a text at U+2028, NEL, form feed, ...
        for i, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
            if not line.strip():
                continue
            check_line(str(path), i, line)
            if line.count("\t") > 1 and labels == "required":
                raise DataError(f"{path}: line {i}: {line.count(chr(9))} tabs; a .tsv line is text<TAB>label with one "
                                "tab (for text or labels holding tabs, use a .csv file with quoting)")  # fmt: skip
            rows.append((i, line.rsplit("\t", 1) if "\t" in line else [line]))
    if rows and _is_header(rows[0][1]):
        rows = rows[1:]
    repeated = next((i for i, fields in rows if _is_header(fields)), None)
    if repeated is not None:
        raise DataError(f"{path}: line {repeated} is a header line (text, label) after the first line (two files "
                        "joined?); remove it")  # fmt: skip
    if not rows:
        raise DataError(f"{path}: holds no examples")
    inputs, found = [], []
    sep = "a comma" if path.suffix.lower() == ".csv" else "a tab"
    layout = "text,label" if path.suffix.lower() == ".csv" else "text<TAB>label"
    for i, fields in rows:
        if len(fields) > 2:
            raise DataError(f"{path}: line {i}: expected 2 columns (text, label), found {len(fields)}")
        if len(fields) == 1 and labels == "required":
            raise DataError(f"{path}: line {i}: expected {layout}, found no label ({sep} is missing)")
        text_field = fields[0]
        if not text_field.strip():
            raise DataError(f"{path}: line {i}: empty text")
        if len(fields) == 2:
            label = fields[1].strip()
            if not label and labels == "required":
                raise DataError(f"{path}: line {i}: empty label")
            found.append(label)
        inputs.append(text_field)
    has_labels = len(found) == len(inputs) and all(found)
    if labels == "required" and not has_labels:
        raise DataError(f"{path}: every line needs a label")
    return Examples("text", inputs, found if has_labels else None, str(path))


def _check_finite(path: Path, series: list[np.ndarray], allow_nan: bool) -> None:
    for i, x in enumerate(series):
        if np.isinf(x).any():
            raise DataError(f"{path}: example {i + 1} holds an infinite value")
        if not allow_nan and np.isnan(x).any():
            raise DataError(f"{path}: example {i + 1} holds NaN, and the file does not declare missing values")


def _read_npz(path: Path, labels: str) -> Examples:
    check_input(path, expected="an .npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    if "X" not in arrays:
        raise DataError(f"{path}: expected an array X (N, T, D), found {sorted(arrays) or 'none'}")
    X = arrays["X"]
    if X.ndim == 2:
        X = X[:, :, None]  # (N, T) univariate -> (N, T, 1)
    if X.ndim != 3 or not np.issubdtype(X.dtype, np.number) or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{path}: X must be a non-empty numeric array (N, T, D), got shape {X.shape} {X.dtype}")
    N, T = X.shape[:2]
    lengths = arrays.get("lengths", np.full(N, T))
    if lengths.shape != (N,) or not np.issubdtype(lengths.dtype, np.integer) or lengths.min() < 1 or lengths.max() > T:
        numeric = lengths.size and np.issubdtype(lengths.dtype, np.number)  # the range, not every value: one line
        got = f"{lengths.shape} {lengths.dtype}" + (f" in [{lengths.min()}, {lengths.max()}]" if numeric else "")
        raise DataError(f"{path}: lengths must be (N,)=({N},) integers in [1, T={T}], got {got}")
    finite = X[np.isfinite(X)] if np.issubdtype(X.dtype, np.floating) else X
    if finite.size and float(np.abs(finite).max()) > float(np.finfo(np.float32).max):
        raise DataError(f"{path}: X holds values outside float32's range (+/-3.4e38), up to {np.abs(finite).max():.3g}")
    series = [np.asarray(X[i, : lengths[i]], dtype=np.float32) for i in range(N)]
    _check_finite(path, series, allow_nan=False)
    y = arrays.get("y")
    if y is None and labels == "required":
        raise DataError(f"{path}: expected an array y (N,) of labels, found {sorted(arrays)}")
    if y is not None and y.shape != (N,):
        raise DataError(f"{path}: y must have shape (N,)=({N},), got {y.shape}")
    found = None if y is None else [_label_str(v) for v in y.tolist()]
    return Examples("series", series, found, str(path))


def _label_str(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _read_ts(path: Path, labels: str) -> Examples:
    from rnnkit.data.ts import read_ts

    ts = read_ts(path)
    if ts.labels is None and labels == "required":
        raise DataError(f"{path}: the file has no class labels (@classLabel false)")
    series = [np.asarray(x, dtype=np.float32) for x in ts.series]
    return Examples("series", series, ts.labels, str(path), ts.class_labels)


def read_examples(path: str | os.PathLike, *, labels: str = "required") -> Examples:
    """Read a classification data file (see the module docstring) or a built-in dataset (``rnnkit.datasets``);
    ``labels``: "required" or "optional"."""
    if labels not in ("required", "optional"):
        raise ValueError(f"labels must be 'required' or 'optional', got {labels!r}")
    p = resolve(path)
    suffix = p.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(
            f"{p}: expected a data file ending in {', '.join(EXTENSIONS)}, got {suffix or 'no extension'!r}"
        )
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if not p.is_file():
        raise DataError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty")
    read = _read_npz if suffix == ".npz" else _read_ts if suffix == ".ts" else _read_delimited
    examples = read(p, labels)
    if examples.labels is not None:  # one class per label however it was typed (see the module docstring)
        examples.labels = [unicodedata.normalize("NFC", y) for y in examples.labels]
    if examples.declared_labels is not None:
        examples.declared_labels = [unicodedata.normalize("NFC", y) for y in examples.declared_labels]
    return examples


def stratified_split(labels: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): about ``fraction`` of each class to validation (seeded; a class of one stays in train)."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    train, val = [], []
    for members in by_class.values():
        order = [members[j] for j in torch.randperm(len(members), generator=g).tolist()]
        n_val = min(len(members) - 1, round(fraction * len(members)))
        val += order[:n_val]
        train += order[n_val:]
    return sorted(train), sorted(val)


class TokenVocab:
    """Tokens (characters or words) <-> ids, with 0 for padding and 1 for any token outside the vocabulary."""

    PAD, UNK = "<pad>", "<unk>"

    def __init__(self, tokens: list[str]) -> None:
        if tokens[:2] != [self.PAD, self.UNK] or len(set(tokens)) != len(tokens):
            raise DataError("a token vocabulary must start with <pad>, <unk> and hold each token once")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, token_lists: list[list[str]], max_size: int, specials: tuple[str, ...] = ()) -> TokenVocab:
        """The ``max_size`` most frequent tokens (ties in code-point order), after <pad>, <unk> and ``specials``
        (such as a sequence model's <s> and </s>, ids 2, 3, ...)."""
        reserved = (cls.PAD, cls.UNK, *specials)
        counts = Counter(t for tokens in token_lists for t in tokens if t not in reserved)
        ranked = sorted(counts, key=lambda t: (-counts[t], t))[: max(0, max_size - len(reserved))]
        return cls([*reserved, *sorted(ranked)])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: list[str]) -> tuple[Tensor, int]:
        """Token ids (T,) int64 and how many tokens were unknown."""
        ids = [self.index.get(t, 1) for t in tokens]
        return torch.tensor(ids, dtype=torch.long), ids.count(1)

    def decode(self, ids: list[int] | Tensor, *, stop: str | None = None) -> list[str]:
        """Ids -> tokens, up to (not including) the first ``stop`` token when given; padding is left out."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < len(self.tokens)]
        if bad:
            raise ValueError(f"ids must be in [0, {len(self.tokens)}), got {bad[0]}")
        out = []
        for i in ids:
            token = self.tokens[i]
            if token == stop:
                break
            if i != 0:
                out.append(token)
        return out


class LengthBuckets:
    """Each epoch's batches: a seeded permutation, cut into pools, sorted by length within a pool, batched, shuffled.

    With ``bucket=False`` the batches are consecutive slices of the permutation (random batches). Under DDP,
    rank r takes batches r, r + W, r + 2W, ... (the same number on every rank; the remainder is dropped).
    ``get(epoch, k)`` depends on (seed, epoch, k) only, so a checkpoint resumes mid-epoch exactly.
    """

    POOL = 50  # batches per sorting pool: wide enough to group lengths, narrow enough to stay random

    def __init__(self, lengths: list[int], batch_size: int, seed: int, *, bucket: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:  # fmt: skip
        self.lengths = torch.tensor(lengths, dtype=torch.long)
        self.batch_size, self.seed, self.bucket = batch_size, seed, bucket
        self.rank, self.world_size = rank, world_size
        self.num_batches = math.ceil(len(lengths) / batch_size) // world_size
        if self.num_batches < 1:
            raise DataError(
                f"{len(lengths)} training examples make no batch on each of {world_size} processes; use fewer processes"
            )
        self._epoch, self._batches = -1, []

    def __len__(self) -> int:
        return self.num_batches

    def epoch_batches(self, epoch: int) -> list[Tensor]:
        """Every batch of ``epoch`` (all ranks): index tensors into the examples."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=g)  # (N,)
        if not self.bucket:
            return list(order.split(self.batch_size))
        batches = []
        for pool in order.split(self.batch_size * self.POOL):
            by_length = pool[torch.argsort(self.lengths[pool], stable=True)]
            batches += list(by_length.split(self.batch_size))
        shuffle = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in shuffle]

    def get(self, epoch: int, k: int) -> Tensor:
        if not 0 <= k < self.num_batches:
            raise IndexError(f"k must lie in [0, {self.num_batches}), got {k}")
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self.epoch_batches(epoch)
        return self._batches[k * self.world_size + self.rank]

    def padding_share(self, epoch: int = 0) -> float:
        """The share of padded time steps in one epoch's batches (what bucketing saves)."""
        padded = valid = 0
        for idx in self.epoch_batches(epoch):
            lens = self.lengths[idx]
            padded += int(lens.max()) * len(idx)
            valid += int(lens.sum())
        return 1.0 - valid / padded


class BucketBatches:
    """The task contract's ``Batches`` over ``LengthBuckets``: batch k of an epoch is ``data.batch(indices)``, and
    ``count(batch)`` is what the throughput counts in it (examples, target tokens)."""

    def __init__(self, data, buckets: LengthBuckets, count) -> None:
        self.data, self.buckets, self.count = data, buckets, count

    def __len__(self) -> int:
        return len(self.buckets)

    def get(self, epoch: int, k: int):
        return self.data.batch(self.buckets.get(epoch, k).tolist())

    def items(self, batch) -> int:
        return self.count(batch)
