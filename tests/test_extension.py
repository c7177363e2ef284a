"""The C++ step loops' build: cached per source, atomic, and a failed build falls back to the Python loops."""

from __future__ import annotations

import logging

import pytest
import torch

from rnnkit.kernels import extension
from rnnkit.recurrent import RNN


def test_library_name_follows_the_source(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNKIT_CACHE_DIR", str(tmp_path))
    first = extension.library_path()
    assert first.parent == tmp_path and first.suffix == ".so"
    for i, source in enumerate((*extension.SOURCES, *extension.HEADERS)):
        edited = tmp_path / source.name
        edited.write_text(source.read_text() + "\n// an edit\n")
        name = "SOURCES" if i < len(extension.SOURCES) else "HEADERS"
        files = list(getattr(extension, name))
        files[files.index(source)] = edited
        with monkeypatch.context() as m:
            m.setattr(extension, name, tuple(files))
            assert extension.library_path() != first, source.name  # an edited file never loads a stale library


def test_library_name_follows_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNKIT_CACHE_DIR", str(tmp_path))
    first = extension.library_path()
    monkeypatch.setattr(extension, "_cpu_model", lambda: "model name : another CPU\nflags : sse2")
    assert extension.library_path() != first  # -march=native code is never loaded on another CPU


def test_failed_build_leaves_nothing_and_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("RNNKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(extension, "_compiler", lambda: "false")  # a "compiler" that always fails
    monkeypatch.setitem(extension._state, "tried", False)
    monkeypatch.setitem(extension._state, "ops", None)
    with extension.use_extension(True), caplog.at_level(logging.WARNING, logger="rnnkit.kernels.extension"):
        assert extension.ops() is None
        assert "C++ loops are unavailable" in caplog.text and "failed" in caplog.text
        assert list(tmp_path.iterdir()) == []  # no library, no half-written file, no build folder
        torch.manual_seed(0)
        rnn = RNN("gru", 3, 4, backend="loop")
        x = torch.randn(2, 5, 3)
        ref, _ = rnn(x)
        rnn.backend = "fused"
        out, _ = rnn(x)  # the Python loops
    torch.testing.assert_close(out, ref)


def test_unwritable_cache_builds_in_the_temporary_folder(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RNNKIT_CACHE_DIR", str(blocker / "rnnkit"))  # mkdir fails: its parent is a file
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(extension.tempfile, "tempdir", None)  # re-read TMPDIR
    built = []

    def fake_build(path):  # what build() does with the file system, without compiling
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        built.append(path)

    monkeypatch.setattr(extension, "build", fake_build)
    monkeypatch.setattr(extension.torch.ops, "load_library", lambda path: None)
    extension._load()
    assert len(built) == 1 and built[0].parent.parent == tmp_path / "tmp"


def test_no_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(extension, "_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler found"):
        extension.build(tmp_path / "x.so")


def test_step_weight_forms():
    w = torch.randn(6, 4)
    x = torch.randn(3, 4)
    prepared, packed = extension.step_weight(w.double(), 3)
    assert not packed and prepared.shape == (4, 6) and prepared.is_contiguous()  # float64: W^T for at::mm
    prepared, packed = extension.step_weight(w, 3)
    if packed:  # oneDNN's packed form gives the same product
        y = torch.ops.mkldnn._linear_pointwise(x, prepared, None, "none", [], "")
        torch.testing.assert_close(y, x @ w.t())
