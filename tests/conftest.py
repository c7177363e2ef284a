"""Shared test helpers: the CUDA skip marker, tolerances per dtype, and the fused kernels' C++-or-Python `loops`."""

from __future__ import annotations

import os

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
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


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
