"""Files in and out: atomic writes (whole or not at all, a full disk in one line), stale temporaries removed,
user files read only when regular, outputs never overwritten by accident."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from rnnkit.errors import DataError, OutputError
from rnnkit.io import atomic_open, atomic_write, atomic_write_json, check_output, read_input, remove_stale_temporaries


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "config.json"
    atomic_write_json(path, {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'

    def half_then_fail(f):
        f.write(b"{ half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == '{\n  "a": 1\n}\n'  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary left


def test_remove_stale_temporaries_removes_only_what_atomic_open_names(tmp_path):
    keep = ["last.pt", ".hidden", "notes.tmp", ".last.pt.tmp", "loss.png"]
    for name in keep:
        (tmp_path / name).write_text("x")
    with pytest.raises(KeyboardInterrupt), atomic_open(tmp_path / "best.pt") as (f, tmp):
        f.write(b"partial")
        stale = tmp  # a kill would leave this file behind; here the context manager removes it ...
        raise KeyboardInterrupt
    assert not stale.exists()
    left = [tmp_path / ".last.pt.ab3_x9Zq.tmp", tmp_path / ".loss.png.k2j4h5g6.png"]  # ... as a SIGKILL would not
    for p in left:
        p.write_text("partial")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(left)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_written_files_get_the_usual_permissions(tmp_path):
    """mkstemp's private 0600 is not kept: a checkpoint or a plot is as readable as the JSON beside it."""
    mask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "last.pt", b"x")
        atomic_write_json(tmp_path / "config.json", {})
    finally:
        os.umask(mask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {0o644}


def test_inputs_must_be_regular_files(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for name, match in (("fifo", "is a FIFO, not a regular file"), ("a", "cannot read"), ("none", "no such file")):
        with pytest.raises(DataError, match=match):
            read_input(tmp_path / name)
    with pytest.raises(DataError, match="is a device, not a regular file"):
        read_input("/dev/zero")
    (tmp_path / "ok.txt").write_bytes(b"abc")
    assert read_input(tmp_path / "ok.txt") == b"abc"


def test_check_output(tmp_path):
    (tmp_path / "old.csv").write_text("x")
    check_output(tmp_path / "new.csv")
    check_output(tmp_path / "old.csv", force=True)
    for path, kwargs, match in (
        (tmp_path / "old.csv", {}, "exists; pass --force"),
        (tmp_path, {}, "is a directory"),
        (tmp_path / "no" / "f.csv", {}, "does not exist"),
        (tmp_path / "plot.jpg", {"suffix": ".png"}, "ending in .png"),
        ("", {}, "must name a file"),
    ):
        with pytest.raises(OutputError, match=match):
            check_output(path, **kwargs)


def test_a_full_disk_names_the_target_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "forecast.csv"
    path.write_text("old")

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"forecast\.csv: no space left on device"):
        atomic_write(path, full)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["forecast.csv"]


def test_reading_reserves_only_what_the_file_holds_and_honours_ulimit_v(tmp_path):
    """Under ``ulimit -v`` (RLIMIT_AS) of 3 GB: a 1 KB file reads (rnnkit once reserved its 4 GiB limit up front:
    MemoryError), a 4 GiB sparse text file is refused from its first bytes without being read, a file larger than
    the memory left is refused before reading, and the model-size check sees the limit too."""
    import subprocess
    import sys
    from pathlib import Path

    small, sparse = tmp_path / "small.txt", tmp_path / "sparse.txt"
    small.write_text("x" * 1000)
    with open(sparse, "wb") as f:
        f.truncate(4 << 30)  # a hole: no disk used, 4 GiB of NUL bytes when read
    probe = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3_000_000_000, resource.RLIM_INFINITY))\n"
        "from rnnkit.io import available_memory, read_input\n"
        "from rnnkit.data.text import read_text\n"
        "from rnnkit.errors import DataError\n"
        "assert len(read_input(sys.argv[1])) == 1000\n"
        "assert available_memory() < 3_000_000_000\n"
        "for path, kw in ((sys.argv[2], {}), (sys.argv[2], {'text': True})):\n"
        "    try:\n"
        "        read_input(path, **kw)\n"
        "    except DataError as e:\n"
        "        print(e)\n"
        "print(read_text(sys.argv[1])[:3])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", probe, str(small), str(sparse)], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "sparse.txt: 4,294,967,296 bytes; reading it needs about 12.00 GiB, more than the" in lines[0]
    assert "ulimit -v" in lines[0]
    assert "looks binary (a NUL byte at offset 0)" in lines[1] or "needs about" in lines[1]
    assert lines[2] == "xxx"


def test_a_sparse_file_is_refused_from_its_first_bytes(tmp_path, monkeypatch):
    from rnnkit.data.text import read_text

    sparse = tmp_path / "sparse.txt"
    with open(sparse, "wb") as f:
        f.truncate(4 << 30)
    monkeypatch.setattr("rnnkit.io.available_memory", lambda: 1 << 40)  # as if the machine had 1 TiB free
    sizes = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n=-1):
            sizes.append(n)
            return self.f.read(n)

    monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k: Spy(real_open(p, mode, *a, **k)) if
                        str(p) == str(sparse) else real_open(p, mode, *a, **k))  # fmt: skip
    with pytest.raises(DataError, match="looks binary"):
        read_text(sparse)
    assert sizes == [64 << 10]  # the head only
