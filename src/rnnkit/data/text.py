"""Text sources: UTF-8 files, the built-in corpus (the Python standard library source) and the train/val split."""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path

from rnnkit.datasets import resolve
from rnnkit.errors import DataError
from rnnkit.io import read_input

__all__ = ["MAX_LINE_CHARS", "check_line", "default_corpus", "read_text", "split_text", "stdlib_files"]

# the longest line a line-per-example reader takes (classification, pairs): the model steps through every character,
# and one 10 MB line once ran for hours with no output; a longer document is split or cut before training
MAX_LINE_CHARS = 100_000

# directories of the standard library left out of the default corpus: tests, third-party packages, and
# generated files that are data rather than code (encodings/: 1.4 MB of near-identical codec tables, on
# which xz reaches 0.2 bits/char; pydoc_data/: the HTML help text as one string)
SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings", "pydoc_data"}
)


def read_text(path: str | os.PathLike, *, expected: str = "a text file") -> str:
    """The contents of a UTF-8 text file (a leading BOM dropped); ``expected`` names the file kind in errors.

    DataError, with the path, for a missing file, a directory, a FIFO or device, a file over
    ``rnnkit.io.MAX_INPUT_BYTES``, an empty file (or one holding only a BOM), a binary file (NUL bytes) or bytes
    that are not UTF-8. ``path`` may name a built-in dataset (``rnnkit.datasets.resolve``).
    """
    p = resolve(path)
    raw = read_input(p, expected=expected, text=True)
    if not raw:
        raise DataError(f"{p}: file is empty")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise DataError(f"{p}: looks binary (a NUL byte at offset {nul}), expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        why = "" if expected == "a text file" else f", expected {expected}"
        raise DataError(f"{p}: not UTF-8 text (invalid byte at offset {e.start}){why}") from e
    text = text.removeprefix("\ufeff")
    if not text:
        raise DataError(f"{p}: holds only a byte-order mark, no text")
    return text


def check_line(source: str, number: int, line: str) -> None:
    """DataError naming the line when it is longer than ``MAX_LINE_CHARS`` characters."""
    if len(line) > MAX_LINE_CHARS:
        raise DataError(f"{source}, line {number}: {len(line):,} characters, more than the {MAX_LINE_CHARS:,} an "
                        "example may have; split or shorten it")  # fmt: skip


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """The ``*.py`` files of the standard library ``root`` (default: that of this interpreter), in a fixed order.

    The order is that of the SHA-1 of each relative POSIX path: the same on every machine with the same Python,
    and shuffled across packages, so a size cap takes files from the whole library and the held-out tail is a
    handful of unrelated modules rather than the last package of an alphabetical list (with alphabetical
    order and a 4M cap it was http/server.py plus idlelib's GUI code, far from the training text). Test
    directories, site-packages and generated data (``SKIP_DIRS``) are skipped.
    """
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        files += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(files, key=lambda f: hashlib.sha1(f.relative_to(root).as_posix().encode()).hexdigest())


def default_corpus(max_chars: int = 10_000_000, root: str | os.PathLike | None = None) -> str:
    """The built-in corpus: the Python standard library source of the running interpreter, no download needed.

    The ``*.py`` files under ``sysconfig.get_paths()["stdlib"]`` (``stdlib_files``: a fixed hash order,
    without test/, site-packages and the generated encodings/ and pydoc_data/), each decoded as UTF-8 (files
    that are not are skipped) and ended by a newline, concatenated and cut at ``max_chars`` characters
    (0 = no cap). Deterministic for a given Python version; another version gives a somewhat different text.
    On CPython 3.11 the whole is 9,946,644 characters in 608 files, under the default cap of 10 million; with
    val_fraction 0.05 the held-out 497,332 characters are the end of os.py and 20 more whole modules
    (lib2to3/fixes/fix_sys_exc.py, idlelib/parenmatch.py, distutils/command/build_py.py, weakref.py ...).
    """
    if max_chars < 0:
        raise ValueError(f"max_chars must be >= 0, got {max_chars}")
    parts, total = [], 0
    for f in stdlib_files(root):
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "\0" in text or not text:
            continue
        text = text.removeprefix("\ufeff").rstrip("\n") + "\n"
        parts.append(text)
        total += len(text)
        if max_chars and total >= max_chars:
            break
    corpus = "".join(parts)
    if not corpus:
        raise DataError(f"no Python source found under {root or sysconfig.get_paths()['stdlib']}")
    return corpus[:max_chars] if max_chars else corpus


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """Contiguous split: the first (1 - val_fraction) of ``text`` trains, the rest validates.

    A contiguous (not random) split keeps validation text unseen as a whole, as a held-out document would be.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n_val = int(len(text) * val_fraction)
    if n_val < 2 or len(text) - n_val < 2:
        raise DataError(
            f"text of {len(text)} characters is too short to split with val_fraction={val_fraction} "
            "(each part needs at least 2 characters)"
        )
    return text[:-n_val], text[-n_val:]
