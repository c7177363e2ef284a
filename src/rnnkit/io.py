"""Atomic file writes: a reader, a crash, Ctrl-C or kill sees the old file or the whole new one, never half of one.

Every file rnnkit writes into a run folder (checkpoints, config, vocabulary, label set, metrics, plots, the
summary) goes through ``atomic_write``: the bytes go to a hidden temporary file in the same folder, which is
flushed, fsynced and moved over the target with ``os.replace`` (atomic on POSIX and Windows), then the folder
itself is fsynced so the rename survives a power loss.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write", "atomic_write_json", "remove_stale_temporaries"]

# what atomic_open names its temporary files: ".{target}.{8 random characters from mkstemp}{suffix}"
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}(\.tmp|\.png)$")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[tuple[IO[bytes], Path]]:
    """``with atomic_open(path) as (f, tmp):`` write to ``f`` (binary) or to the file ``tmp``; both end up at ``path``.

    ``tmp`` is for writers that insist on a file name (matplotlib's ``savefig``); its name keeps ``suffix`` so such
    writers can tell the format. On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], Any]) -> None:
    """Write ``data`` (bytes, UTF-8 text, or a function that writes to a binary file) to ``path`` atomically."""
    with atomic_open(path) as (f, _):
        if callable(data):
            data(f)
        else:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON text plus a newline, written atomically."""
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (only names ``atomic_open`` makes); returns them.

    Call it only where no other process is writing into ``folder`` (the trainer's rank 0, at start).
    """
    removed = []
    for p in Path(folder).iterdir():
        if p.is_file() and _TEMPORARY.match(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
