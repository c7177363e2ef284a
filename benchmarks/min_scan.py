"""minGRU/minLSTM: the log-space parallel scan (``backend="fused"``) against the step loop (``backend="loop"``).

``python benchmarks/min_scan.py [--shapes 8x64,32x256] [--lengths 64,256,1024] [--repeats 7] [--threads 2]``

For each cell, batch x hidden (B x H, input size D = H) and length T, times a training step (forward, then
backward of the summed output) and an inference forward (no autograd), float32 on the CPU. The two backends are
timed interleaved in one process (one call of each in turn, ``--repeats`` rounds, after a warm-up call each) and
the medians reported, with the ratio loop time / scan time (> 1: the scan is faster). The numbers tell where
``backend="auto"`` should send these cells.

On a shared CPU, prefer ``--threads 1``: with two threads whose OpenMP workers spun against other processes, single
timings came out 10 to 100 times too slow, at random; one thread gave steady medians.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable

import torch

from rnnkit.recurrent import RNN

CELLS = ("mingru", "minlstm")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        B, H = item.lower().split("x")
        out.append((int(B), int(H)))
    return out


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in turn (one warm-up call each first)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def _train(rnn: RNN, x: torch.Tensor):
    def step() -> None:
        rnn.zero_grad(set_to_none=True)
        y, _ = rnn(x)
        y.sum().backward()

    return step


def _infer(rnn: RNN, x: torch.Tensor):
    def step() -> None:
        with torch.no_grad():
            rnn(x)

    return step


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=_shapes, default=_shapes("8x64,32x256"), help="B x H pairs, comma-separated")
    parser.add_argument("--lengths", type=_ints, default=_ints("64,256,1024"), help="sequence lengths T")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{_cpu_name()}, {args.threads} threads, torch {torch.__version__}, float32, medians of {args.repeats}")
    print(f"{'cell':8} {'B':>4} {'T':>5} {'H':>4}  {'task':6} {'loop ms':>9} {'scan ms':>9} {'loop/scan':>9}")
    for mode in CELLS:
        for B, H in args.shapes:
            for T in args.lengths:
                rnn = RNN(mode, H, H)
                x = torch.randn(B, T, H)
                for task, make in (("train", _train), ("infer", _infer)):
                    fns = {}
                    for backend in ("loop", "fused"):
                        rnn.backend = backend
                        fns[backend] = _bound(rnn, backend, make, x)
                    t = interleaved_medians(fns, args.repeats)
                    ratio = t["loop"] / t["fused"]
                    print(
                        f"{mode:8} {B:4d} {T:5d} {H:4d}  {task:6} {t['loop'] * 1e3:9.2f} {t['fused'] * 1e3:9.2f} "
                        f"{ratio:8.2f}x",
                        flush=True,
                    )
    return 0


def _bound(rnn: RNN, backend: str, make, x: torch.Tensor):
    """``make(rnn, x)`` with ``rnn.backend`` set to ``backend`` on every call (the two share one module)."""
    step = make(rnn, x)

    def call() -> None:
        rnn.backend = backend
        step()

    return call


if __name__ == "__main__":
    sys.exit(main())
