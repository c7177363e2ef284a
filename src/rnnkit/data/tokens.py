"""The language model's tokenizers: one class per kind of token (``--tokens chars|words|bpe``), in ``TOKENIZERS``.

A tokenizer is a strategy the LM task asks, never a string it branches on. Each one maps text to ids 0..V-1 and back,
fits itself on the training text, and keeps what it learned as checkpoint artefacts (plain strings and lists), so a
run folder needs no file beside its checkpoint:

    chars  CharTokenizer  every character of the text (``Vocab``), plus U+FFFD for characters it never saw
    words  WordTokenizer  the ``vocab_size`` most frequent pieces of ``\\w+ | \\s+ | one other character``; a rarer
                          piece is spelled out in characters (U+FFFD for a character the training text lacked)
    bpe    BpeTokenizer   byte-level BPE from the Hugging Face ``tokenizers`` library (``pip install 'rnnkit[bpe]'``):
                          merges learned on the training text, the 256 bytes as its alphabet, so nothing is unknown

Every kind decodes by concatenation: each id stands for a fixed byte string (``pieces``; UTF-8 of a character or a
word, any bytes for a BPE piece), so ``decode(encode(text)) == text`` for any text whose characters the tokenizer
knows. A word the words vocabulary lacks is spelled out instead of collapsed into one unknown token: an <unk> for a
whole word would make the text unrecoverable and its bits per character meaningless (a model would be scored on
"some rare word", not on which one).

Bits per character compare across kinds because each id also knows how many characters it holds
(``char_lengths``: the UTF-8 lead bytes of its piece, so a character split across two BPE pieces counts once):
bpc = total nats of the scored tokens / their characters / ln 2.
"""

from __future__ import annotations

import codecs
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from rnnkit.data.vocab import UNKNOWN, Vocab
from rnnkit.errors import CheckpointError, ConfigError, DataError
from rnnkit.io import atomic_write, atomic_write_json

__all__ = [
    "TOKENIZERS",
    "BpeTokenizer",
    "CharTokenizer",
    "Tokenizer",
    "WordTokenizer",
    "as_tokenizer",
    "require_tokenizers",
]

INSTALL = "pip install 'rnnkit[bpe]'"


def require_tokenizers(error: type[Exception] = ConfigError):
    """The Hugging Face ``tokenizers`` module, or ``error`` naming the extra that installs it."""
    try:
        import tokenizers
    except ImportError:
        raise error(f"--tokens bpe needs the Hugging Face tokenizers library: {INSTALL}") from None
    return tokenizers


def _lead_bytes(piece: bytes) -> int:
    """Characters a piece of UTF-8 holds: its bytes that are not continuation bytes (0b10xxxxxx)."""
    return sum((b & 0xC0) != 0x80 for b in piece)


class Tokenizer:
    """What every kind answers: encode and decode, its size, the characters of each id, and its artefacts.

    Subclasses set ``pieces`` (the bytes each id stands for) and ``unknown_id`` (the id the sampler never emits,
    None when there is none) and implement ``fit``, ``from_artefacts``, ``artefacts`` and ``encode``.
    """

    name: ClassVar[str]
    default_vocab_size: ClassVar[int] = 0  # what ``vocab_size = 0`` means for this kind
    pieces: list[bytes]
    unknown_id: int | None

    @classmethod
    def fit(cls, text: str, *, vocab_size: int, min_count: int) -> Tokenizer:
        """A tokenizer learned from ``text`` (the training text only)."""
        raise NotImplementedError

    @classmethod
    def from_artefacts(cls, artefacts: dict[str, Any]) -> Tokenizer:
        """The tokenizer a run saved (``artefacts()``)."""
        raise NotImplementedError

    def artefacts(self) -> dict[str, Any]:
        """Checkpoint-safe data (strings and lists) from which ``from_artefacts`` rebuilds this tokenizer."""
        raise NotImplementedError

    def write_files(self, run_dir: Path) -> None:
        """A human-readable copy in the run folder, written atomically."""

    def encode(self, text: str) -> list[int]:
        """Text -> ids; a character the tokenizer lacks is ``unknown_id`` (a DataError when there is none)."""
        raise NotImplementedError

    def ids(self, text: str) -> Tensor:
        """``encode`` as an int64 Tensor (N,)."""
        return torch.tensor(self.encode(text), dtype=torch.long)

    def missing(self, text: str) -> list[str]:
        """The distinct characters of ``text`` this tokenizer cannot represent (they would encode as unknown)."""
        return []

    def count_unknown(self, text: str) -> int:
        """How many characters of ``text`` (occurrences) encode as the unknown symbol."""
        missing = set(self.missing(text))
        return sum(text.count(c) for c in missing) if missing else 0

    def __len__(self) -> int:
        return len(self.pieces)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={len(self)})"

    def _check_ids(self, ids: Iterable[int] | Tensor) -> list[int]:
        ids = ids.reshape(-1).tolist() if isinstance(ids, Tensor) else [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < len(self)), None)
        if bad is not None:
            raise ValueError(f"ids must lie in [0, {len(self)}), got {bad}")
        return ids

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        """Ids -> text: the pieces joined, then read as UTF-8 (a malformed byte sequence, which only a generated
        BPE sequence can hold, reads as U+FFFD); an id outside [0, V) is a ValueError."""
        return b"".join(self.pieces[i] for i in self._check_ids(ids)).decode("utf-8", errors="replace")

    def stream(self, ids: Iterable[int]) -> Iterator[str]:
        """Decode ids as they come, yielding text as soon as it is whole: a BPE piece may end inside a character
        (an emoji is 4 bytes, often two pieces), so its bytes wait in an incremental UTF-8 decoder until the
        character completes. ``"".join(stream(ids)) == decode(ids)``."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for i in ids:
            text = decoder.decode(self.pieces[self._check_ids([i])[0]])
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def char_lengths(self) -> Tensor:
        """(V,) int64: the characters each id holds, so that the characters of a token sequence of real text sum
        to the length of that text."""
        return torch.tensor([_lead_bytes(p) for p in self.pieces], dtype=torch.long)

    def start_text(self) -> str:
        """The context an empty prompt starts from: a newline when it encodes without the unknown symbol."""
        return "\n" if not self.missing("\n") else self.decode([0])


class CharTokenizer(Tokenizer):
    """One id per character: the ``Vocab`` of the whole text (its training and validation parts, as before the
    tokenizers existed, so a chars run keeps its vocabulary, checkpoint and numbers)."""

    name = "chars"

    def __init__(self, vocab: Vocab) -> None:
        if not isinstance(vocab, Vocab):
            raise TypeError(f"vocab must be a Vocab, got {type(vocab).__name__}")
        self.vocab = vocab
        self.pieces = [c.encode("utf-8", "surrogatepass") for c in vocab.chars]
        self.unknown_id = vocab.index.get(UNKNOWN)

    @classmethod
    def fit(cls, text: str, *, vocab_size: int = 0, min_count: int = 1) -> CharTokenizer:
        return cls(Vocab.from_text(text, unknown=True))  # U+FFFD stands for characters the text lacks

    @classmethod
    def from_artefacts(cls, artefacts: dict[str, Any]) -> CharTokenizer:
        return cls(Vocab(artefacts["vocab"]))

    def artefacts(self) -> dict[str, Any]:
        return {"vocab": self.vocab.chars}  # as chars runs always kept it: old checkpoints load unchanged

    def write_files(self, run_dir: Path) -> None:
        self.vocab.save(run_dir / "vocab.json")

    def encode(self, text: str) -> list[int]:
        return self.vocab.encode(text, strict=False)

    def ids(self, text: str) -> Tensor:
        return self.vocab.encode(text, tensor=True, strict=False)  # (N,) the bulk path of Vocab

    def missing(self, text: str) -> list[str]:
        return self.vocab.missing(text)

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        return self.vocab.decode(ids)

    def stream(self, ids: Iterable[int]) -> Iterator[str]:
        for i in ids:  # every id is a whole character
            yield self.vocab.decode([i])

    def start_text(self) -> str:
        return "\n" if "\n" in self.vocab else self.vocab.decode([0])


class WordTokenizer(Tokenizer):
    """Words, whitespace runs and single other characters, the ``vocab_size`` most frequent of them as tokens.

    The text is cut by ``PATTERN`` into pieces that concatenate back to it: a run of word characters (``\\w+``:
    letters, digits, underscore, in any script), a run of whitespace (``\\s+``: the newline and indentation of a
    line of code is one piece), or one other character (punctuation, each on its own). The vocabulary is U+FFFD
    (id 0), every character of the training text (so any piece can be spelled), then the multi-character pieces
    seen at least ``min_count`` times, most frequent first, up to ``vocab_size`` ids in all. A piece outside the
    vocabulary is encoded character by character, so decoding is exact for every text whose characters the
    training text held; a character it did not hold is U+FFFD.

    >>> tok = WordTokenizer.fit("the cat the hat the end", vocab_size=20, min_count=2)
    >>> [tok.decode([i]) for i in tok.encode("the hat")]  # "hat" was seen once: spelled out
    ['the', ' ', 'h', 'a', 't']
    """

    name = "words"
    default_vocab_size = 8192
    PATTERN = r"\w+|\s+|[^\w\s]"
    FORMAT = "rnnkit.words/1"

    def __init__(self, tokens: list[str], pattern: str = PATTERN) -> None:
        if not tokens or tokens[0] != UNKNOWN or len(set(tokens)) != len(tokens):
            raise DataError("a words vocabulary must start with U+FFFD and hold each token once")
        if not all(isinstance(t, str) and t for t in tokens):
            raise DataError("words vocabulary entries must be non-empty strings")
        self.tokens = list(tokens)
        self.pattern = pattern
        self.regex = re.compile(pattern)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.pieces = [t.encode("utf-8") for t in self.tokens]
        self.unknown_id = 0

    @classmethod
    def fit(cls, text: str, *, vocab_size: int = 0, min_count: int = 2) -> WordTokenizer:
        vocab_size = vocab_size or cls.default_vocab_size
        chars = sorted(set(text) - {UNKNOWN})
        base = [UNKNOWN, *chars]
        if vocab_size < len(base):
            raise DataError(
                f"vocab_size={vocab_size} is smaller than the {len(base)} ids every character of the training text "
                f"and U+FFFD need (words are spelled out in characters when rare): use --vocab-size {len(base)} "
                "or more"
            )
        counts = Counter(re.findall(cls.PATTERN, text))
        words = sorted((p for p, n in counts.items() if len(p) > 1 and n >= min_count), key=lambda p: (-counts[p], p))
        return cls(base + words[: vocab_size - len(base)])

    @classmethod
    def from_artefacts(cls, artefacts: dict[str, Any]) -> WordTokenizer:
        return cls(artefacts["words"], artefacts["pattern"])

    def artefacts(self) -> dict[str, Any]:
        return {"tokens": self.name, "words": self.tokens, "pattern": self.pattern}

    def write_files(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / "tokens.json", {"format": self.FORMAT, **self.artefacts()})

    def encode(self, text: str) -> list[int]:
        index, ids = self.index, []
        for piece in self.regex.findall(text):
            i = index.get(piece)
            if i is None:  # a rare piece: spelled out, U+FFFD (id 0) for a character the training text lacked
                ids.extend(index.get(c, 0) for c in piece)
            else:
                ids.append(i)
        return ids

    def missing(self, text: str) -> list[str]:
        return sorted(set(text) - self.index.keys())


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet (Radford et al. 2019, ``bytes_to_unicode``), as ``tokenizers``' ByteLevel uses
    it: each byte is a printable character (the printable Latin-1 bytes stand for themselves, the other 68 for
    U+0100 onwards), so a BPE token string maps back to its bytes. Returns character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class BpeTokenizer(Tokenizer):
    """Byte-level BPE (Sennrich et al. 2016; GPT-2's byte alphabet) learned by the Hugging Face ``tokenizers``
    library on the training text: ``vocab_size`` tokens, the 256 single bytes among them, so every text encodes
    without an unknown symbol. Its JSON form (``Tokenizer.to_str``) is the run's artefact."""

    name = "bpe"
    default_vocab_size = 2048
    # Cut points for encoding a long text in parallel: a newline after a printable ASCII character. The byte-level
    # pre-tokenizer never joins a newline to the character before it, and its match at the newline does not depend
    # on where the text ends, so the pieces of the parts are those of the whole (tests/test_lm_tokens.py checks).
    CUT = re.compile(r"(?<=[!-~])\n")
    PART = 1 << 16  # characters per part, at least

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        alphabet = _byte_alphabet()
        vocab = tokenizer.get_vocab()  # token string -> id
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise DataError("a BPE vocabulary must number its tokens 0..V-1")
        pieces = [b""] * len(vocab)
        for token, i in vocab.items():
            pieces[i] = bytes(alphabet[c] for c in token)
        self.pieces = pieces
        self.unknown_id = None

    @classmethod
    def fit(cls, text: str, *, vocab_size: int = 0, min_count: int = 2) -> BpeTokenizer:
        tk = require_tokenizers()
        vocab_size = vocab_size or cls.default_vocab_size
        if vocab_size < 256:
            raise ConfigError(f"vocab_size for --tokens bpe must be >= 256 (the byte alphabet), got {vocab_size}")
        tokenizer = tk.Tokenizer(tk.models.BPE())
        tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = tk.decoders.ByteLevel()
        alphabet = tk.pre_tokenizers.ByteLevel.alphabet()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_count, initial_alphabet=alphabet,
                                         special_tokens=[], show_progress=False)  # fmt: skip
        tokenizer.train_from_iterator(cls._parts(text), trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def from_artefacts(cls, artefacts: dict[str, Any]) -> BpeTokenizer:
        tk = require_tokenizers(CheckpointError)  # a bpe run, loaded where the extra is not installed
        return cls(tk.Tokenizer.from_str(artefacts["tokenizer"]))

    def artefacts(self) -> dict[str, Any]:
        return {"tokens": self.name, "tokenizer": self.tokenizer.to_str()}

    def write_files(self, run_dir: Path) -> None:
        # the library's own file: tokenizers.Tokenizer.from_file("RUN/tokenizer.json") reads it
        atomic_write(run_dir / "tokenizer.json", json.dumps(json.loads(self.tokenizer.to_str()), indent=1) + "\n")

    @classmethod
    def _parts(cls, text: str) -> list[str]:
        """``text`` cut at ``CUT`` points about ``PART`` characters apart (their concatenation is ``text``)."""
        starts = [0]
        for m in cls.CUT.finditer(text):
            if m.start() - starts[-1] >= cls.PART:
                starts.append(m.start())
        return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]

    def encode(self, text: str) -> list[int]:
        if len(text) < 2 * self.PART:
            return self.tokenizer.encode(text).ids
        return [i for enc in self.tokenizer.encode_batch_fast(self._parts(text)) for i in enc.ids]


TOKENIZERS: dict[str, type[Tokenizer]] = {t.name: t for t in (CharTokenizer, WordTokenizer, BpeTokenizer)}


def as_tokenizer(vocab: Vocab | Tokenizer) -> Tokenizer:
    """A ``Tokenizer`` for what a caller holds: a tokenizer as it is, a character ``Vocab`` wrapped."""
    if isinstance(vocab, Tokenizer):
        return vocab
    if isinstance(vocab, Vocab):
        return CharTokenizer(vocab)
    raise TypeError(f"expected a Vocab or a Tokenizer, got {type(vocab).__name__}")
