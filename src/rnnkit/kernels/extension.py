"""The fused backend's per-step loops in C++ (``csrc/recurrence.cpp``) and the generation step (``csrc/step.cpp``),
built on first use into one library and cached.

On CPU, Python's step loop costs more than its arithmetic at the sizes that matter: dispatching some 15 small
elementwise ops per step takes a large share of a GRU train step (benchmarks/KERNELS.md). The C++ loops compute
the same recurrences (elman.py, gru.py, lstm.py, layernorm_lstm.py and layernorm_gru.py hold the math) on one
step-loop skeleton: one oneDNN-packed product per step (``step_weight``), then the cell's arithmetic row by row
in vectorised passes, which also write the factors the backward step needs; the backward runs over slices of the
time axis (ops.backward_slices). The same library holds the
generation step (step.py) for batches up to 4.

Build: the first call of ``ops()`` in a process compiles the file with the system's C++ compiler (``$CXX``, else
``c++``) against the installed torch into the cache folder (``$RNNKIT_CACHE_DIR``, else
``$XDG_CACHE_HOME/rnnkit``, else ``~/.cache/rnnkit``; the temporary folder where that cannot be made). That
compile is slow but happens once (build times in benchmarks/KERNELS.md); later processes load it in
milliseconds. The file name carries a hash of the source, torch's version, the compiler flags and the CPU's
model and instruction-set flags, so a change of any of them builds anew; the library is written under a
temporary name and renamed into place, so concurrent first uses (DDP ranks) never load a half-written file.
``-march=native`` is safe because the library is built on the machine that runs it.

Where the build fails (no compiler, no headers) the fused backend logs one warning with the compiler's message
and keeps its Python loops, which compute the same thing. ``RNNKIT_EXTENSION=0`` turns the C++ loops off;
``use_extension(False)`` does it in-process (the tests run both).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from rnnkit.io import cache_dir

__all__ = ["available", "build", "cache_dir", "loaded", "ops", "step_weight", "use_extension", "wanted"]

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
# the fused loops, the generation step, the mixed-precision casts
SOURCES = (CSRC / "recurrence.cpp", CSRC / "step.cpp", CSRC / "precision.cpp")
# the activations the loops share, the cells' row arithmetic on recurrence.cpp's step-loop skeleton, the casts
HEADERS = (CSRC / "activations.h", CSRC / "cells.h", CSRC / "layernorm_cells.h", CSRC / "precision.h")
# -ffast-math lets GCC call glibc's vector exp (libmvec) in the gate loops. It is given to the compile step
# only: linking a shared library with it would pull in crtfastmath.o, which sets flush-to-zero for the whole
# process on load (GCC before 13).
# -fopenmp: at::parallel_for (the gate loops' rows, the generation step's hidden units) runs on torch's own
# OpenMP pool; the library links the libgomp.so.1 that torch ships and has loaded (rpath to torch/lib), so
# there is one pool, not two.
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c++20", "-w"]

_lock = threading.Lock()
_state: dict[str, object] = {"ops": None, "tried": False, "packing": {}}
_enabled = os.environ.get("RNNKIT_EXTENSION", "1") != "0"


def _cpu_model() -> str:
    """The CPU's model and instruction-set flags: a library built with -march=native for one CPU must not load on
    another that lacks its instructions (a cache folder shared between machines)."""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        first = {}
        for line in lines:
            key = line.split(":", 1)[0].strip()
            if key in ("model name", "flags", "Features") and key not in first:
                first[key] = line
        if first:
            return "\n".join(first.values())
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _torch_flags() -> tuple[list[str], list[str]]:
    from torch.utils.cpp_extension import include_paths, library_paths

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cflags = [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *(f"-I{p}" for p in include_paths())]
    lib = library_paths()
    ldflags = [*(f"-L{p}" for p in lib), *(f"-Wl,-rpath,{p}" for p in lib), "-lc10", "-ltorch_cpu"]
    return cflags, ldflags


def library_path() -> Path:
    """The cached library for this source, torch, compiler flags and CPU."""
    key = "\n".join(
        [
            *(p.read_text() for p in (*SOURCES, *HEADERS)),
            torch.__version__,
            " ".join(COMPILE_FLAGS),
            _cpu_model(),
            sys.version,
            str(_compiler()),
        ]
    )
    return cache_dir() / f"recurrence-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def build(path: Path) -> None:
    """Compile the C++ loops into ``path`` (atomically). Raises RuntimeError with the compiler's message."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set $CXX, or install g++)")
    cflags, ldflags = _torch_flags()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp:
        objs, lib = [Path(tmp) / f"{src.stem}.o" for src in SOURCES], Path(tmp) / path.name
        compiles = [[cxx, *COMPILE_FLAGS, *cflags, "-c", str(src), "-o", str(obj)]
                    for src, obj in zip(SOURCES, objs, strict=True)]  # fmt: skip
        # the sources compile side by side (a process per core at most): the build is most of a first run's wait
        with concurrent.futures.ThreadPoolExecutor(max(1, min(len(compiles), os.cpu_count() or 1))) as pool:
            list(pool.map(_run_compiler, compiles))  # the first failure raises here
        _run_compiler([cxx, "-shared", "-fopenmp", *map(str, objs), *ldflags, "-o", str(lib)])
        os.replace(lib, path)


def _run_compiler(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} ... failed:\n{done.stderr[-2000:]}")


def _load():
    path = library_path()
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home: build for this machine's temporary folder instead
            path = Path(tempfile.gettempdir()) / f"rnnkit-{os.getuid()}" / path.name
    if not path.exists():
        log.info("building rnnkit's C++ recurrence loops into %s (once; about 30 s)", path)
        build(path)
    torch.ops.load_library(str(path))
    return torch.ops.rnnkit


def ops():
    """``torch.ops.rnnkit`` with the C++ loops, or None where they are turned off or cannot be built."""
    if not _enabled:
        return None
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                try:
                    _state["ops"] = _load()
                except (RuntimeError, OSError) as exc:
                    log.warning("rnnkit's C++ loops are unavailable, the fused backend runs its Python loops: %s", exc)
                _state["tried"] = True
    return _state["ops"]


def loaded():
    """The C++ loops if this process has built them, whether or not they are turned on now (a backward whose
    forward ran in C++ must finish there)."""
    return _state["ops"]


def wanted(x: Tensor):
    """The C++ loops for tensors like ``x`` (float32/float64 on CPU), or None for the Python loops."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return None
    return ops()


def _probe_packing(dtype: torch.dtype) -> bool:
    """Whether oneDNN's packed linear works here in ``dtype`` and agrees with torch.mm on a probe."""
    try:
        g = torch.Generator().manual_seed(0)
        x, w = (torch.randn(*shape, generator=g).to(dtype) for shape in ((3, 5), (4, 5)))
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.allclose(y.float(), (x @ w.t()).float(), atol=1e-5 if dtype == torch.float32 else 3e-2))
    except (AttributeError, RuntimeError, NotImplementedError) as exc:
        log.info("oneDNN packed linear unavailable in %s (%s); the C++ loops use at::mm", dtype, exc)
        return False


def step_weight(w: Tensor, batch: int) -> tuple[Tensor, bool]:
    """W (O, I) prepared for the C++ loops' per-step product x W^T: (oneDNN's packed form of W, True) for
    float32 or bfloat16 where oneDNN is available and agrees, else (W^T contiguous, False) for at::mm.

    Packing is paid once per weight and call and repaid on every step: at the recurrent products' shapes the
    packed product is markedly faster than MKL's sgemm on W^T (benchmarks/KERNELS.md).
    """
    if w.dtype in (torch.float32, torch.bfloat16) and w.device.type == "cpu":
        packing = _state["packing"]
        if w.dtype not in packing:  # probed once per process and dtype
            packing[w.dtype] = torch.backends.mkldnn.is_available() and _probe_packing(w.dtype)
        if packing[w.dtype]:
            return torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), batch), True
    return w.t().contiguous(), False


def available() -> bool:
    """Whether the C++ loops are built and turned on in this process."""
    return ops() is not None


@contextlib.contextmanager
def use_extension(flag: bool) -> Iterator[None]:
    """Turn the C++ loops on or off inside the block (the tests run both paths)."""
    global _enabled
    before, _enabled = _enabled, flag
    try:
        yield
    finally:
        _enabled = before
