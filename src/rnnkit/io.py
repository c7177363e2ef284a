"""Files in and out: user files read with one set of checks, outputs written atomically.

Every file rnnkit writes (checkpoints, config, vocabulary, label set, metrics, plots, the summary, predictions and
forecasts) goes through ``atomic_write``: the bytes go to a hidden temporary file in the same folder, which is
flushed, fsynced and moved over the target with ``os.replace`` (atomic on POSIX and Windows), then the folder
itself is fsynced so the rename survives a power loss. A full disk is one ``OutputError`` line naming the target,
and the old file is left as it was. ``check_output`` says, before any work is done, whether a path a user named may
be written (no overwrite without ``--force``).

Every file a user names is read through ``read_input``: only regular files (a FIFO, a device such as /dev/zero or
a directory would block or never end), at most ``MAX_INPUT_BYTES`` and no more than the memory this process may
still use (``available_memory``: MemAvailable, and the address-space limit ``ulimit -v`` sets), each failure one
line naming the file. Its size is known before a byte is read, and only that much is asked for: nothing is
reserved up front. A text file's first 64 KiB are checked for NUL bytes before the rest is read, so a 4 GiB
sparse (all-NUL) file is refused at once.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from rnnkit.errors import BusyError, DataError, OutputError, RnnkitError

__all__ = [
    "MAX_INPUT_BYTES",
    "atomic_open",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_many",
    "available_memory",
    "cache_dir",
    "check_input",
    "check_output",
    "hold_lock",
    "read_input",
    "remove_stale_temporaries",
]

MAX_INPUT_BYTES = 4 << 30  # 4 GiB: far above any corpus or table rnnkit trains on in memory
READ_OVERHEAD = 3  # reading a file of N bytes holds about 3N: the bytes, the decoded text, the parsed rows
SNIFF_BYTES = 64 << 10  # a text file's head checked for NUL bytes before the rest is read
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

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

    The temporary file is locked (``fcntl.flock``) while it is written, and a writer first removes the temporary
    files of ``path`` that no one holds: what a killed earlier write of the same file left (an export, a plot,
    a checkpoint). The OS drops a killed process's lock, so only dead writers' files are removed.
    """
    path = Path(path)
    remove_stale_temporaries(path.parent, target=path.name)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise _output_error(path, e) from e
    tmp = Path(tmp_name)
    try:
        _lock(fd)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make checkpoints and plots private, JSON not
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # while the lock is held: no cleaner can remove tmp before the rename
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in _FULL:
            raise _output_error(path, e) from e
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _output_error(path: Path, e: OSError) -> RnnkitError:
    if e.errno in _FULL:
        return OutputError(f"{path}: no space left on device ({e.strerror}); the old file, if any, is unchanged")
    return OutputError(f"{path}: cannot write ({e.strerror or e})")


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], Any]) -> None:
    """Write ``data`` (bytes, UTF-8 text, or a function that writes to a binary file) to ``path`` atomically."""
    with atomic_open(path) as (f, _):
        if callable(data):
            data(f)
        else:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)


def atomic_write_many(files: dict[str | os.PathLike, bytes | str]) -> None:
    """Write several files all or none: every temporary file is written and fsynced first, and only then are
    they renamed into place (a full disk while writing any of them leaves every target as it was)."""
    with contextlib.ExitStack() as stack:
        for path, data in files.items():
            f, _ = stack.enter_context(atomic_open(path))
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        # leaving the stack renames them, the last opened first: by then every byte of every file is written


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON text plus a newline, written atomically."""
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def _lock(fd: int, *, wait: bool = True) -> bool:
    """flock ``fd`` (exclusive); False when ``wait`` is False and another process holds it. No fcntl: True."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def remove_stale_temporaries(folder: str | os.PathLike, *, target: str | None = None) -> list[Path]:
    """Delete the temporary files killed writers left in ``folder`` (only names ``atomic_open`` makes, of ``target``
    alone when given, and only those no live writer holds locked); returns them."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMPORARY.match(p.name)
        if not m or (target is not None and m.group("target") != target) or not p.is_file() or p.is_symlink():
            continue
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _lock(fd, wait=False):
                p.unlink(missing_ok=True)
                removed.append(p)
        finally:
            os.close(fd)
    return removed


@contextmanager
def hold_lock(folder: str | os.PathLike, *, what: str = "rnnkit train") -> Iterator[None]:
    """Hold ``folder/.lock`` for the body: a second holder is refused at once with a ``BusyError`` line.

    ``fcntl.flock`` on an open file: the OS releases the lock when the process ends, however it ends, so a killed
    run leaves no stuck lock (the file itself, if a kill leaves it, is harmless and reused). The file is removed
    when the body ends. Without ``fcntl`` (Windows) the body runs unguarded.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    path = Path(folder) / ".lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise BusyError(
                f"{folder} is in use by another {what} (process {holder}); wait for it to end or choose another --out"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed the file as we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # still held: no one else can be using this file now
    finally:
        os.close(fd)


def check_input(path: str | os.PathLike, *, expected: str = "a file", error: type[RnnkitError] = DataError) -> int:
    """The size in bytes of ``path``, a regular file of at most ``MAX_INPUT_BYTES``; else ``error`` naming it."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{p}: no such file") from None
    except OSError as e:
        raise error(f"{p}: cannot read ({e.strerror or e})") from e
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{p}: is a directory, expected {expected}")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) else "not a file"
        raise error(f"{p}: is {kind}, not a regular file; expected {expected}")
    if st.st_size > MAX_INPUT_BYTES:
        raise error(f"{p}: {st.st_size:,} bytes, more than the {MAX_INPUT_BYTES:,} rnnkit reads into memory")
    return st.st_size


def available_memory() -> int | None:
    """Bytes this process may still allocate: Linux's MemAvailable, capped by the address-space limit
    (``RLIMIT_AS``, ``ulimit -v``) less the address space already in use; None when neither is known."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            limits += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                used = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")), 0)
            limits.append(max(0, soft - used))
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return min(limits) if limits else None


def read_input(path: str | os.PathLike, *, expected: str = "a file", error: type[RnnkitError] = DataError,
               text: bool = False) -> bytes:  # fmt: skip
    """The bytes of a user's file, after ``check_input`` and a check that reading it fits in the memory this process
    may use; an unreadable file is ``error`` naming it. ``text``: refuse a NUL byte in the first ``SNIFF_BYTES``
    before reading the rest (a binary or sparse file)."""
    size = check_input(path, expected=expected, error=error)
    free = available_memory()
    if free is not None and READ_OVERHEAD * size > free:
        raise error(
            f"{path}: {size:,} bytes; reading it needs about {READ_OVERHEAD * size / 2**30:.2f} GiB, more than the "
            f"{free / 2**30:.2f} GiB of memory this process may still use (MemAvailable, ulimit -v)"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES) if text else b""
            nul = head.find(b"\0")
            if nul >= 0:
                raise error(f"{path}: looks binary (a NUL byte at offset {nul}), expected {expected}")
            data = head + f.read(size + 1 - len(head))  # what stat said, and one byte to see a file that grew
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from e
    except MemoryError:
        raise error(f"{path}: {size:,} bytes: out of memory while reading it") from None
    if len(data) > MAX_INPUT_BYTES:
        raise error(f"{path}: more than the {MAX_INPUT_BYTES:,} bytes rnnkit reads into memory")
    return data


def check_output(path: str | os.PathLike | None, *, force: bool = False, suffix: str | None = None,
                 flag: str = "--out") -> None:  # fmt: skip
    """Whether the user's output path may be written: a file name (with ``suffix`` when given) in an existing
    folder, not a folder, and not an existing file unless ``force``. OutputError naming ``flag`` otherwise."""
    if path is None:
        return
    text = os.fspath(path)
    if not text.strip():
        raise OutputError(f"{flag} must name a file, got an empty string")
    p = Path(text)
    if p.is_dir():
        raise OutputError(f"{flag} {p} is a directory; give a file path")
    if suffix is not None and p.suffix.lower() != suffix:
        raise OutputError(f"{flag} {p}: expected a file name ending in {suffix}")
    if not p.parent.is_dir():
        raise OutputError(f"{flag} {p}: the folder {p.parent} does not exist")
    if (p.exists() or p.is_symlink()) and not force:
        raise OutputError(f"{flag} {p} exists; pass --force to overwrite it")


def cache_dir() -> Path:
    """rnnkit's cache folder (the C++ loops' library, generated datasets): ``$RNNKIT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/rnnkit``, else ``~/.cache/rnnkit``."""
    if os.environ.get("RNNKIT_CACHE_DIR"):
        return Path(os.environ["RNNKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rnnkit"
