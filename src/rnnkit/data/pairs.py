"""Pairs of sequences for sequence-to-sequence tasks: ``source<TAB>target`` lines, cut into tokens.

A line holds one pair; a source with several targets (a word with two pronunciations) appears on several lines.
In a file to score, the target field may list alternatives separated by ``|``, any of which counts as right. In a
file to translate, the first tab-separated field of each line (or the whole line) is the source.

Tokens are characters (``chars``) or whitespace-separated symbols (``space``: phones, words), chosen separately
for the two sides. A target longer than ``max_target_length`` tokens is dropped (and counted) or, with
``too_long="error"``, an error naming its line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rnnkit.data.text import check_line, read_text
from rnnkit.datasets import resolve
from rnnkit.errors import DataError

__all__ = ["TOKENS", "Pairs", "read_pairs", "split_tokens"]

TOKENS = ("chars", "space")


def split_tokens(text: str, how: str) -> list[str]:
    """``text`` as tokens: its characters (``chars``) or its whitespace-separated fields (``space``)."""
    if how == "chars":
        return list(text)
    if how == "space":
        return text.split()
    raise ValueError(f"how must be one of {', '.join(TOKENS)}, got {how!r}")


@dataclass
class Pairs:
    """Token sequences read from one file: ``sources[i]`` with its ``references[i]`` (one or more alternatives;
    empty lists when the file is only sources). ``lines[i]`` is the line it came from."""

    sources: list[list[str]]
    references: list[list[list[str]]]
    lines: list[int]
    source: str
    dropped: int = 0  # pairs left out for a target over max_target_length
    texts: list[str] = field(default_factory=list)  # the source fields as written

    def __len__(self) -> int:
        return len(self.sources)


def read_pairs(
    path: str | os.PathLike,
    *,
    source_tokens: str = "chars",
    target_tokens: str = "chars",
    targets: str = "required",
    max_target_length: int = 0,
    too_long: str = "drop",
) -> Pairs:
    """The pairs of ``path`` (a file, or a built-in dataset: ``rnnkit.datasets.resolve``); see the module docstring.

    ``targets``: "required" (training data: exactly one target a line), "alternatives" (data to score: a target a
    line, alternatives separated by ``|``) or "none" (data to translate: the first field, or the whole line).
    DataError naming the file and line for a line without a tab, an empty source or target, or (with
    ``too_long="error"``) a target over ``max_target_length`` tokens.
    """
    for name, value in (("source_tokens", source_tokens), ("target_tokens", target_tokens)):
        if value not in TOKENS:
            raise ValueError(f"{name} must be one of {', '.join(TOKENS)}, got {value!r}")
    if targets not in ("required", "alternatives", "none"):
        raise ValueError(f"targets must be required, alternatives or none, got {targets!r}")
    if too_long not in ("drop", "error"):
        raise ValueError(f"too_long must be drop or error, got {too_long!r}")
    if isinstance(max_target_length, bool) or not isinstance(max_target_length, int) or max_target_length < 0:
        raise ValueError(f"max_target_length must be an integer >= 0 (0 = no limit), got {max_target_length!r}")
    path = resolve(path)
    name = str(path)
    out = Pairs([], [], [], name)
    for number, line in enumerate(read_text(path, expected="a file of source<TAB>target lines").splitlines(), 1):
        if not line.strip():
            continue
        check_line(name, number, line)
        fields = line.split("\t")
        if targets != "none" and len(fields) < 2:
            raise DataError(f"{name}, line {number}: no tab; expected source<TAB>target")
        if targets == "required" and len(fields) > 2:
            raise DataError(f"{name}, line {number}: {len(fields)} tab-separated fields; expected source<TAB>target")
        source = split_tokens(fields[0], source_tokens)
        if not source:
            raise DataError(f"{name}, line {number}: empty source")
        references = []
        if targets != "none":
            alternatives = fields[1].split("|") if targets == "alternatives" else [fields[1]]
            references = [split_tokens(a, target_tokens) for a in alternatives]
            if any(not r for r in references):
                raise DataError(f"{name}, line {number}: empty target")
            longest = max(len(r) for r in references)
            if max_target_length and longest > max_target_length:
                if too_long == "error":
                    raise DataError(
                        f"{name}, line {number}: a target of {longest} tokens, longer than --max-target-length "
                        f"{max_target_length}"
                    )
                out.dropped += 1
                continue
        out.sources.append(source)
        out.references.append(references)
        out.lines.append(number)
        out.texts.append(fields[0])
    if not out.sources:
        raise DataError(f"{name}: no pairs" + (f" ({out.dropped} dropped as too long)" if out.dropped else ""))
    return out
