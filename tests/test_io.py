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
