"""LayerNorm cells, fused backend against loop: time and peak memory of a training step.

``python benchmarks/layernorm_fused.py [--cell layernorm-lstm] [--sizes 8x32x64,32x128x256,64x64x512]``

Time: one training step (forward, then backward of ``out.sum()``) of ``RNN(cell, H, H, 1)`` in float32 on
(B, T, H) input, once per backend per round; the rounds interleave the two backends (alternating which goes
first), and the table shows the medians and their ratio loop / fused (> 1: fused faster), of the wall time and
of the process's CPU time. The load average is printed before and after: on a shared machine other jobs slow
either backend at random, most of all with 2 threads, where a parallel region waits for a thread that another
process holds; with ``--threads 1`` the CPU time is the measure that other jobs disturb least.

Memory (tracemalloc does not see torch's buffers, and torch's CPU allocator keeps no peak counter), each backend
in a fresh process after a warm-up step, three ways:

- "peak": the most bytes of torch tensors alive at once during one training step, above those alive before it
  (the new gradients included), from the profiler's record of every allocation and free of torch's CPU
  allocator (``torch.profiler`` with ``profile_memory=True``, summed over time by its ``MemoryProfileTimeline``);
- "rss": the growth of the resident set over one step (``VmHWM`` after it, reset by ``/proc/self/clear_refs``
  before it, minus ``VmRSS`` before it), with glibc's mmap threshold fixed at 4 KiB (``MALLOC_MMAP_THRESHOLD_``)
  so that every buffer of a page or more is a mapping of its own, returned to the system when freed. Buffers
  under 4 KiB come from the heap that the warm-up left, so this undercounts a backend of many small tensors
  (the loop at small sizes);
- "saved": the bytes autograd holds for backward once the forward is done (distinct storages, through
  ``torch.autograd.graph.saved_tensors_hooks``; input and parameters included).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import torch

from rnnkit.recurrent import RNN

DEFAULT_SIZES = "8x32x64,32x128x256,64x64x512"
BACKENDS = ("loop", "fused")
MiB = 2**20


def _sizes(text: str) -> list[tuple[int, int, int]]:
    out = []
    for item in text.split(","):
        parts = item.split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"--sizes: expected BxTxH items like 32x128x256, got {item!r}")
        out.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return out


def _setup(cell: str, B: int, T: int, H: int, seed: int = 0):
    torch.manual_seed(seed)
    return RNN(cell, H, H, 1), torch.randn(B, T, H)


def train_step(rnn: RNN, x: torch.Tensor, backend: str) -> tuple[float, float]:
    """One forward + backward of out.sum(); returns its wall time and the process's CPU time, in seconds."""
    rnn.backend = backend
    rnn.zero_grad(set_to_none=True)
    start, cpu = time.perf_counter(), time.process_time()
    out, _ = rnn(x)
    out.sum().backward()
    return time.perf_counter() - start, time.process_time() - cpu


def time_backends(cell: str, B: int, T: int, H: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    rnn, x = _setup(cell, B, T, H)
    times: dict[str, list[tuple[float, float]]] = {b: [] for b in BACKENDS}
    for b in BACKENDS:  # warm-up: first-call costs (oneDNN set-up, page faults of a fresh heap)
        train_step(rnn, x, b)
    for r in range(rounds):
        for b in BACKENDS if r % 2 == 0 else BACKENDS[::-1]:
            times[b].append(train_step(rnn, x, b))
    return times


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def _saved_bytes(rnn: RNN, x: torch.Tensor, backend: str) -> int:
    rnn.backend = backend
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = rnn(x)
    del out
    return sum(storages.values())


def _profiled_peak(rnn: RNN, x: torch.Tensor, backend: str) -> int:
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    kwargs = {"profile_memory": True, "record_shapes": True, "with_stack": True}  # the timeline needs all three
    with profile(activities=[ProfilerActivity.CPU], **kwargs) as prof:
        train_step(rnn, x, backend)
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    alive = [sum(s) for s in sizes]  # bytes alive after each allocation or free, all categories
    return max(alive) - alive[0]


def memory_child(cell: str, B: int, T: int, H: int, backend: str) -> dict[str, int]:
    """Run in a fresh process (see the module docstring): peak, rss and saved bytes of one training step."""
    rnn, x = _setup(cell, B, T, H)
    train_step(rnn, x, backend)
    rnn.zero_grad(set_to_none=True)
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    train_step(rnn, x, backend)
    rss = (_status_kib("VmHWM") - before) * 1024
    rnn.zero_grad(set_to_none=True)
    peak = _profiled_peak(rnn, x, backend)
    rnn.zero_grad(set_to_none=True)
    return {"peak": peak, "rss": rss, "saved": _saved_bytes(rnn, x, backend)}


def measure_memory(cell: str, B: int, T: int, H: int, backend: str, threads: int) -> dict[str, int]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "4096"}
    args = [sys.executable, __file__, "--cell", cell, "--threads", str(threads), "--memory-child"]
    args.append(f"{B}x{T}x{H}:{backend}")
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {backend} at {B}x{T}x{H} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="layernorm-lstm", choices=["layernorm-lstm", "layernorm-gru"])
    parser.add_argument("--sizes", type=_sizes, default=_sizes(DEFAULT_SIZES), help="BxTxH,... (D = H)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per size (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    torch.set_num_threads(args.threads)
    if args.memory_child:
        size, backend = args.memory_child.split(":")
        print(json.dumps(memory_child(args.cell, *_sizes(size)[0], backend)))
        return 0

    print(f"{args.cell}, float32, D = H, 1 layer, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    head = f"{'B x T x H':>14} | wall ms: loop, fused, ratio | CPU ms: loop, fused, ratio | wall per round (loop/fused)"
    if not args.no_memory:
        head += " | MiB loop, fused: peak | rss | saved"
    print(head)
    for B, T, H in args.sizes:
        times = time_backends(args.cell, B, T, H, args.rounds)
        line = f"{f'{B} x {T} x {H}':>14}"
        for k in (0, 1):  # wall, CPU
            med = {b: statistics.median(v[k] for v in runs) * 1e3 for b, runs in times.items()}
            line += f" | {med['loop']:8.1f} {med['fused']:8.1f} {med['loop'] / med['fused']:5.2f}x"
        pairs = zip(times["loop"], times["fused"], strict=True)
        line += " | " + " ".join(f"{a[0] * 1e3:.0f}/{b[0] * 1e3:.0f}" for a, b in pairs)
        if not args.no_memory:
            mem = {b: measure_memory(args.cell, B, T, H, b, args.threads) for b in BACKENDS}
            for key in ("peak", "rss", "saved"):
                line += f" | {mem['loop'][key] / MiB:6.1f} {mem['fused'][key] / MiB:6.1f}"
        print(line, flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
