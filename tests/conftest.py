"""Shared test helpers: the CUDA skip marker, tolerances per dtype, and the fused kernels' C++-or-Python `loops`;
and what makes the suite run well in parallel under pytest-xdist (``make test`` runs ``-n auto --dist loadfile``)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from rnnkit.kernels import extension

# float64 agrees with torch.nn to rounding; float32 to the issue's ~1e-5.
TOLERANCES = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-9},
    torch.float32: {"atol": 1e-5, "rtol": 1e-4},
}


def tol(dtype: torch.dtype) -> dict[str, float]:
    """assert_close keyword arguments for ``dtype``."""
    return TOLERANCES[dtype]


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` when no CUDA device is present."""
    _skip_cuda(items)


def _skip_cuda(items) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# --- the C++ loops, built once per session under xdist ----------------------------------------------------------
# kernels/extension.py builds its library on first use (about 30 s) and caches it; two workers starting on an empty
# cache would each build it. The xdist controller builds it instead, in a thread while the workers start and
# collect, holding a lock file that a worker waits on when one of its tests first needs the loops.


def _build_lock() -> Path:
    return Path(tempfile.gettempdir()) / f"rnnkit-{os.getuid()}-{extension.library_path().stem}.lock"


def _is_xdist_controller(config) -> bool:
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        # the workers share the machine's cores: torch's default (all of them) in each would oversubscribe them
        workers = int(config.workerinput.get("workercount", 1))
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # and so in the processes the tests start
        load = extension._load

        def load_once_built():  # the first test that needs the C++ loops waits for the controller's build; the
            with contextlib.suppress(OSError), open(_build_lock(), "w") as lock:  # others run meanwhile
                fcntl.flock(lock, fcntl.LOCK_SH)
                fcntl.flock(lock, fcntl.LOCK_UN)
            return load()

        extension._load = load_once_built
        return
    if not _is_xdist_controller(config):
        return
    lock = open(_build_lock(), "w")  # noqa: SIM115 (held until the build ends, in the thread below)
    fcntl.flock(lock, fcntl.LOCK_EX)

    def build():
        try:
            extension.ops()  # builds unless cached; logs a warning and leaves the Python loops where it cannot
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    config._rnnkit_build = threading.Thread(target=build, name="rnnkit-extension-build", daemon=True)
    config._rnnkit_build.start()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine spinning threads stall each other.

    A test module that trains opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def one_error_line(capsys, status: int) -> str:
    """The CLI's answer to a user error: exit status 2 and one stderr line ``rnnkit: error: ...``, no traceback."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("rnnkit: error:"), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.fixture(params=["cpp", "python"])
def loops(request):
    """Runs a test on the fused kernels' C++ step loops (kernels/extension.py) and on their Python ones: both must
    meet the test's oracle."""
    cpp = request.param == "cpp"
    if cpp and os.environ.get("RNNKIT_EXTENSION") == "0":
        pytest.skip("RNNKIT_EXTENSION=0 turns the C++ loops off")
    with extension.use_extension(cpp):
        assert extension.available() == cpp  # on CI the build must work: a silent fallback would test nothing
        yield request.param
