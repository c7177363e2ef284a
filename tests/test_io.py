"""Atomic writes: whole or not at all; stale temporaries of killed writers removed, nothing else."""

from __future__ import annotations

import pytest

from rnnkit.io import atomic_open, atomic_write, atomic_write_json, remove_stale_temporaries


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
