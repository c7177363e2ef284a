"""``rnnkit bench``: rnnkit's backends side by side with torch.nn, one table.

For each mode and shape (B x T x H, input size D = H, one layer), three tasks:

- ``train``: forward + backward of ``output.sum()`` (ms per call);
- ``forward``: forward under ``torch.no_grad()`` in eval mode (ms per call);
- ``step``: batch-1 generation with a 2-layer model, ``RNN.step`` (``kernels.fast_step``) against a torch
  ``LSTMCell``/``GRUCell``/``RNNCell`` loop (us per token);
- ``compile``: inference of ``torch.compile(rnn)`` against the same RNN eager (``--no-compile`` leaves it out).

``--contention`` measures instead the char LM's training speed idle and beside other work (``bench_contention``).

With ``--precision bf16`` the train and forward rows compare mixed precision instead: the fused kernels under
bf16 autocast (bf16 products, fp32 states and gates), torch.nn in fp32 and under bf16 autocast, and fused in
fp32, with GFLOP/s against the bfloat16 GEMM peak.

Then the cells torch.nn lacks (``--cells``), each backend's train step against the cell's own ``loop``, and the
regularisers (``--regularisers``): a train step with weight-drop, locked dropout or zoneout against the same layer
without (ratio < 1: what the regulariser costs).

Every task times its candidates interleaved in one process (one call of each in turn, ``--repeats`` rounds)
and reports medians, the ratio torch.nn time / backend time (> 1: faster than torch.nn), GFLOP/s and the share
of the measured GEMM peak (the faster of ``torch.mm`` and oneDNN's linear on 2048^3). The train rows also
give the memory a train step keeps for backward (see the footer for how it is counted).

``add_arguments(parser)`` declares the flags and ``run(args, write)`` writes the table line by line.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from rnnkit.backends import available_backends
from rnnkit.cells import cell_spec
from rnnkit.cliargs import float_flag, int_flag
from rnnkit.errors import ConfigError
from rnnkit.kernels import extension
from rnnkit.kernels.ops import linear, onednn_available
from rnnkit.recurrent import MODES, RNN, TORCH_MODES

__all__ = ["add_arguments", "run"]

TORCH_NN = {"elman": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
TORCH_CELL = {"elman": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}
BACKENDS = ("fused", "native", "loop")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``rnnkit bench`` flags on ``parser``."""
    parser.add_argument("--modes", default="elman,gru,lstm",
                        help="comma-separated modes timed against torch.nn (default all three; '' = none)")  # fmt: skip
    parser.add_argument(
        "--shapes", default="32x128x256,64x64x512", help="comma-separated BxTxH shapes, batch x time x hidden"
    )
    parser.add_argument("--repeats", type=int_flag(1, 1000), default=5, help="interleaved rounds per measurement "
                        "(median; 1 to 1000)")  # fmt: skip
    parser.add_argument("--threads", type=int_flag(0, 1024), default=0,
                        help="torch intra-op threads (0: leave torch's default)")  # fmt: skip
    parser.add_argument("--tokens", type=int_flag(1, 1_000_000), default=100,
                        help="tokens per batch-1 generation measurement")  # fmt: skip
    parser.add_argument(
        "--cells",
        default=None,
        help="comma-separated cells torch.nn lacks, timed against their loop (default: all; '' = none)",
    )
    parser.add_argument("--regularisers", default="lstm,gru",
                        help="modes whose train step is timed with each regulariser ('' = none)")  # fmt: skip
    parser.add_argument("--skip-loop-train", action="store_true", help="leave out the slow 'loop' backend's train step")
    parser.add_argument("--quick", action="store_true", help="toy sizes and 2 rounds: a smoke run of the table")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu or cuda (default: cpu)")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave out the torch.compile rows (compiling takes seconds per mode)")  # fmt: skip
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also the peak RSS of a train step per backend, each in a fresh process (Linux, CPU)",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="bf16: the train and forward rows become fused under bf16 autocast against torch.nn in fp32 and "
        "under bf16 autocast, with GFLOP/s against the bf16 GEMM peak (default: fp32)",
    )
    parser.add_argument("--contention", action="store_true",
                        help="instead of the table: the char LM's training speed idle and beside --load spinning "
                        "processes, rnnkit and torch.nn, with and without --threads 0 (minutes)")  # fmt: skip
    parser.add_argument("--contention-seconds", type=float_flag(0.5, 3600), default=20.0,
                        help="seconds of training steps per --contention run (default 20)")  # fmt: skip
    parser.add_argument(
        "--load",
        type=int_flag(0, 1024),
        default=None,
        help="--contention's load: processes spinning at normal priority (default: half the cores)",
    )


def _parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ConfigError(f"--shapes must be BxTxH items like 32x128x256, got {item.strip()!r}")
        B, T, H = (int(p) for p in parts)
        if B > 65_536 or T > 1_000_000 or H > 16_384 or B * T * H > 2**31:
            raise ConfigError(
                f"--shapes item {item.strip()!r} is too large to time here (B <= 65536, T <= 1000000, H <= 16384, "
                "B*T*H <= 2^31)"
            )
        shapes.append((B, T, H))
    return shapes


def _parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in TORCH_MODES]
    if bad or (not modes and text.strip()):
        raise ConfigError(f"--modes must be a comma-separated subset of {TORCH_MODES}, got {text!r}")
    return modes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, timed in turn (one warm-up call each first)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def gemm_peak(device: torch.device, n: int = 2048, repeats: int = 5, dtype=torch.float32) -> dict[str, float]:
    """GFLOP/s of an n^3 matmul in ``dtype``: ``torch.mm`` and, on CPU where available, oneDNN's linear."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    fns = {"torch.mm": lambda: torch.mm(a, b)}
    if device.type == "cpu" and onednn_available() and dtype == torch.float32:
        fns["oneDNN"] = lambda: linear(a, b)
    return {k: 2 * n**3 / t / 1e9 for k, t in interleaved_medians(fns, repeats, device).items()}


def saved_bytes(step: Callable[[], torch.Tensor], exclude: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages a forward saves for backward, parameters and input excluded."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    return sum(seen.values())


def _proc_status() -> dict[str, float]:
    """VmRSS and VmHWM (peak) of this process in MiB, from /proc/self/status."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def rss_probe(mode: str, B: int, T: int, H: int, backend: str) -> float:
    """Peak RSS growth (MiB) over three train steps (forward + backward of ``output.sum()``), in this process.

    Run in a fresh process per backend (``peak_rss``): a tiny warm-up step loads every library and kernel, the
    kernel's peak counter is reset (/proc/self/clear_refs), and the peak is read after the steps, over the RSS
    just before them. Buffers an allocator keeps from the steps count; memory held before them does not.
    """
    torch.manual_seed(0)
    extension.ops()  # the C++ loops' library is loaded before the baseline, like torch's own
    module = TORCH_NN[mode](H, H, batch_first=True) if backend == "torch.nn" else RNN(mode, H, H, backend=backend)
    x = torch.randn(B, T, H, requires_grad=True)
    module(x[:1, :2])[0].sum().backward()
    Path("/proc/self/clear_refs").write_text("5")
    base = _proc_status()["VmRSS"]
    for _ in range(3):
        module(x)[0].sum().backward()
    return _proc_status()["VmHWM"] - base


def peak_rss(mode: str, shape: tuple[int, int, int], backend: str) -> float | None:
    """``rss_probe`` in a fresh Python process; None where /proc is missing (not Linux) or the probe fails."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    code = f"from rnnkit.bench import rss_probe; print(rss_probe({mode!r}, {', '.join(map(str, shape))}, {backend!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _bench_memory(mode, shape, write) -> None:
    label = "x".join(map(str, shape))
    rss = {name: peak_rss(mode, shape, name) for name in ("torch.nn", "fused", "native")}
    if rss["torch.nn"] is None or any(v is None for v in rss.values()):
        write(f"{mode:6} {label:12} {'peak-RSS':8} unavailable (needs Linux /proc)")
        return
    for name, mib in rss.items():
        ratio = rss["torch.nn"] / mib if mib > 0 else float("inf")
        write(f"{mode:6} {label:12} {'peak-RSS':8} {name:9} {mib:10.1f} {ratio:7.2f}x {'MiB':>8}")


def _layer_flops(mode: str, B: int, T: int, D: int, H: int) -> float:
    G = cell_spec(mode).shapes(D, H)["weight_ih"][0] // H  # gates
    return 2.0 * B * T * G * H * (D + H)  # forward GEMM flops of one layer and direction


def _bench_sequence(mode, shape, repeats, device, loop_train, write) -> dict[str, float]:
    B, T, H = shape
    ours = RNN(mode, H, H, device=device)
    ref = ours.to_torch()  # same weights, batch_first=True
    x = torch.randn(B, T, H, device=device, requires_grad=True)
    flops = _layer_flops(mode, B, T, H, H)

    def train(module, backend=None):
        def fn():
            if backend is not None:
                module.backend = backend
            module(x)[0].sum().backward()

        return fn

    def forward(module, backend=None):
        def fn():
            if backend is not None:
                module.backend = backend
            with torch.no_grad():
                module(x)

        return fn

    train_fns = {"torch.nn": train(ref)} | {b: train(ours, b) for b in BACKENDS if b != "loop" or loop_train}
    ours.eval()
    ref.eval()
    forward_fns = {"torch.nn": forward(ref)} | {b: forward(ours, b) for b in BACKENDS}
    fwd = interleaved_medians(forward_fns, repeats, device)
    ours.train()
    ref.train()
    tr = interleaved_medians(train_fns, repeats, device)
    memory = {}
    for name in train_fns:
        module, backend = (ref, None) if name == "torch.nn" else (ours, name)
        if backend is not None:
            ours.backend = backend
        memory[name] = saved_bytes(lambda m=module: m(x)[0].sum(), [*module.parameters(), x])
    label = f"{B}x{T}x{H}"
    for name in ["torch.nn", *BACKENDS]:
        if name in tr:
            t = tr[name]
            extra = f"{memory[name] / 2**20:9.1f}  {memory[name] / memory['torch.nn']:5.2f}"
            write(_row(mode, label, "train", name, t * 1e3, tr["torch.nn"] / t, 3 * flops / t / 1e9, extra))
        else:
            write(f"{mode:6} {label:12} {'train':8} {name:9} {'skipped (--skip-loop-train)':>40}")
    for name in ["torch.nn", *BACKENDS]:
        t = fwd[name]
        write(_row(mode, label, "forward", name, t * 1e3, fwd["torch.nn"] / t, flops / t / 1e9, ""))
    return {name: 3 * flops / t / 1e9 for name, t in tr.items()}  # train GFLOP/s


def _bench_step(mode, H, tokens, repeats, device, write) -> None:
    """Batch-1 generation, 2 layers: RNN.step against a torch cell loop, microseconds per token."""
    ours = RNN(mode, H, H, 2, device=device).eval()
    cells = [TORCH_CELL[mode](H, H, device=device) for _ in range(2)]
    x = torch.randn(1, H, device=device)

    def rnnkit_step():
        state = None
        for _ in range(tokens):
            _, state = ours.step(x, state)

    def cell_loop():
        state = [None, None]
        for _ in range(tokens):
            inp = x
            for k, cell in enumerate(cells):
                state[k] = cell(inp, state[k])
                inp = state[k][0] if mode == "lstm" else state[k]

    with torch.no_grad():
        t = interleaved_medians({"torch.nn": cell_loop, "fused": rnnkit_step}, repeats, device)
    flops = 2 * _layer_flops(mode, 1, 1, H, H)
    for name, label in (("torch.nn", "nn.cells"), ("fused", "RNN.step")):
        per = t[name] / tokens
        write(_row(mode, f"1x1x{H}", "step", label, per * 1e6, t["torch.nn"] / t[name], flops / per / 1e9, ""))


def _bench_cell(mode, shape, repeats, device, write) -> None:
    """A cell torch.nn lacks: each of its backends' train step against its loop (ratio = loop time / this)."""
    B, T, H = shape
    rnn = RNN(mode, H, H, device=device)
    x = torch.randn(B, T, H, device=device, requires_grad=True)
    backends = [b for b in available_backends(rnn.spec) if b != "native"]

    def train(backend):
        def fn():
            rnn.backend = backend
            rnn(x)[0].sum().backward()

        return fn

    t = interleaved_medians({b: train(b) for b in backends}, repeats, device)
    for b in backends:
        rnn.backend = b
        mib = saved_bytes(lambda: rnn(x)[0].sum(), [*rnn.parameters(), x]) / 2**20
        flops = 3 * _layer_flops(mode, B, T, H, H)
        write(_row(mode, f"{B}x{T}x{H}", "train", b, t[b] * 1e3, t["loop"] / t[b], flops / t[b] / 1e9, f"{mib:9.1f}"))


REGULARISERS = {
    "plain": {},
    "weight-drop": {"weight_drop": 0.25},
    "locked": {"dropout_input": 0.1, "dropout_output": 0.1},
    "zoneout": {"zoneout": 0.1},
}


def _bench_regularisers(mode, shape, repeats, device, write) -> None:
    """A train step with each regulariser against the same layer without (ratio = plain time / this)."""
    B, T, H = shape
    x = torch.randn(B, T, H, device=device, requires_grad=True)
    rnns = {}
    for name, options in REGULARISERS.items():
        torch.manual_seed(0)
        rnns[name] = RNN(mode, H, H, device=device, **options).train()

    def train(rnn):
        return lambda: rnn(x)[0].sum().backward()

    t = interleaved_medians({name: train(rnn) for name, rnn in rnns.items()}, repeats, device)
    flops = 3 * _layer_flops(mode, B, T, H, H)
    for name, rnn in rnns.items():
        ratio, gflops = t["plain"] / t[name], flops / t[name] / 1e9
        write(
            _row(f"{mode}+{name}", f"{B}x{T}x{H}", "train", rnn.resolved_backend(x), t[name] * 1e3, ratio, gflops, "")
        )


def _parse_names(text: str | None, choices: tuple[str, ...], flag: str) -> list[str]:
    if text is None:
        return list(choices)
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in choices]
    if bad:
        raise ConfigError(f"{flag} must be a comma-separated subset of {choices}, got {text!r}")
    return names


def _bench_compile(mode, shape, repeats, device, write) -> None:
    """Inference of ``torch.compile(rnn)`` against the same RNN eager and torch.nn, ms per call (warm: the compile
    and a recompile for a second shape happen before the timing, and are reported beside it)."""
    B, T, H = shape
    ours = RNN(mode, H, H, device=device).eval()
    ref = ours.to_torch().eval()
    x = torch.randn(B, T, H, device=device)
    label = f"{B}x{T}x{H}"
    start = time.perf_counter()
    compiled = torch.compile(ours)
    try:
        with torch.no_grad():
            compiled(x)  # the first call compiles
            compiled(x[:, : max(1, T // 2)])  # a second length: the recompile with a dynamic time axis
    except Exception as e:  # Inductor needs a C++ compiler on CPU: without one the row says why, the table goes on
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        write(f"{mode:6} {label:12} {'compile':8} unavailable ({type(e).__name__}: {first})")
        return
    compile_s = time.perf_counter() - start

    def forward(module):
        def fn():
            with torch.no_grad():
                module(x)

        return fn

    t = interleaved_medians({"torch.nn": forward(ref), "eager": forward(ours), "compiled": forward(compiled)},
                            repeats, device)  # fmt: skip
    flops = _layer_flops(mode, B, T, H, H)
    for name in ("torch.nn", "eager", "compiled"):
        extra = (
            f"eager/compiled {t['eager'] / t['compiled']:.2f}x, compiled in {compile_s:.1f} s"
            if name == "compiled"
            else ""
        )
        write(_row(mode, label, "compile", name, t[name] * 1e3, t["torch.nn"] / t[name], flops / t[name] / 1e9, extra))


def _bench_bf16(mode, shape, repeats, device, write) -> dict[str, float]:
    """Train and forward rows in mixed precision: rnnkit's fused kernels under bf16 autocast (bf16 products,
    fp32 states) against torch.nn in fp32 and under bf16 autocast (oneDNN's bf16 LSTM on CPU, cuDNN on CUDA),
    and fused in fp32. Ratio: torch.nn fp32 time / this; the last column: torch.nn bf16 time / this."""
    B, T, H = shape
    ours = RNN(mode, H, H, device=device, backend="fused")
    ref = ours.to_torch()
    x = torch.randn(B, T, H, device=device, requires_grad=True)
    flops = _layer_flops(mode, B, T, H, H)
    cases = {"nn-fp32": (ref, False), "nn-bf16": (ref, True), "fused-fp32": (ours, False), "fused-bf16": (ours, True)}

    def output(module, bf16):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return module(x)[0]

    def train(module, bf16):
        return lambda: output(module, bf16).float().sum().backward()

    def forward(module, bf16):
        def fn():
            with torch.no_grad():
                output(module, bf16)

        return fn

    tr = interleaved_medians({k: train(*v) for k, v in cases.items()}, repeats, device)
    ours.eval()
    ref.eval()
    fwd = interleaved_medians({k: forward(*v) for k, v in cases.items()}, repeats, device)
    ours.train()
    ref.train()
    label = f"{B}x{T}x{H}"
    for task, times, work in (("train", tr, 3 * flops), ("forward", fwd, flops)):
        for name, t in times.items():
            vs = f"{times['nn-bf16'] / t:5.2f}x"
            write(_row(mode, label, task, name, t * 1e3, times["nn-fp32"] / t, work / t / 1e9, vs))
    return {name: 3 * flops / t / 1e9 for name, t in tr.items()}


def _row(mode, shape, task, name, value, ratio, gflops, extra) -> str:
    r = f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"  # a small ratio keeps its digits: 0.0025, not 0.00
    return f"{mode:6} {shape:12} {task:8} {name:9} {value:10.2f} {r:>7}x {gflops:8.1f} {extra}".rstrip()


def run(args: argparse.Namespace, write: Callable[[str], None]) -> int:
    """Measure and write the table through ``write``; returns the exit status (0)."""
    if args.contention:
        from rnnkit.bench_contention import run_contention

        if args.threads:
            torch.set_num_threads(args.threads)
        return run_contention(args, write)
    modes = _parse_modes(args.modes)
    cells = _parse_names(args.cells, tuple(m for m in MODES if m not in TORCH_MODES), "--cells")
    regularised = _parse_names(args.regularisers, TORCH_MODES, "--regularisers")
    shapes = _parse_shapes("8x16x32,4x8x16" if args.quick else args.shapes)
    repeats = 2 if args.quick else args.repeats
    tokens = 5 if args.quick else args.tokens
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda needs a CUDA device, and torch sees none")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = 256 if args.quick else 2048
    bf16 = args.precision == "bf16"
    peak = gemm_peak(device, n, repeats, torch.bfloat16 if bf16 else torch.float32)
    best = max(peak.values())
    write(
        f"rnnkit bench: device={device.type} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"rounds={repeats} precision={args.precision} (medians of interleaved runs; ratio = torch.nn time / this "
        f"time{', torch.nn in fp32' if bf16 else ''})"
    )
    write(
        f"GEMM peak ({'bfloat16' if bf16 else 'float32'}, {n}^3): "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items())
    )
    if device.type == "cpu":
        loops = "C++ (kernels/csrc/recurrence.cpp)" if extension.available() else "Python (C++ loops unavailable)"
        write(f"fused backend's step loops: {loops}")
    write(
        f"{'mode':6} {'BxTxH':12} {'task':8} {'backend':9} {'ms|us/tok':>10} {'ratio':>8} {'GFLOP/s':>8} "
        + ("vs-nn-bf16" if bf16 else "saved-MiB vs-nn")
    )
    for mode in modes:
        for shape in shapes:
            if bf16:
                gflops = _bench_bf16(mode, shape, repeats, device, write)
            else:
                gflops = _bench_sequence(mode, shape, repeats, device, not args.skip_loop_train, write)
            if args.memory and device.type == "cpu":
                _bench_memory(mode, shape, write)
            if mode == "lstm" or bf16:
                shares = ", ".join(f"{name} {g / best:.0%}" for name, g in gflops.items())
                write(f"{'':6} {'x'.join(map(str, shape)):12} train step share of the GEMM peak ({best:.0f}): {shares}")
        for H in sorted({s[2] for s in shapes}):
            _bench_step(mode, H, tokens, repeats, device, write)
        if not args.no_compile:
            _bench_compile(mode, shapes[0], repeats, device, write)
    if cells or regularised:
        write("cells torch.nn lacks (ratio = the cell's loop time / this) and regularisers (mode+regulariser, "
              "ratio = time without it / this; backend as auto picks it); saved-MiB as above")  # fmt: skip
    for shape in shapes:
        for mode in cells:
            _bench_cell(mode, shape, repeats, device, write)
        for mode in regularised:
            _bench_regularisers(mode, shape, repeats, device, write)
    write(
        "train/forward: ms per call, one layer, D = H; step: us per token, batch 1, 2 layers. GFLOP/s counts "
        "the GEMM flops (train = 3x forward). saved-MiB: bytes of the distinct storages saved for backward "
        "(torch.autograd.graph.saved_tensors_hooks; parameters and input excluded; transient backward buffers "
        "not counted), and its ratio to torch.nn. peak-RSS (--memory): growth of the process's peak resident "
        "memory over three train steps, each backend in a fresh process; ratio = torch.nn / this (> 1: less). "
        "compile: forward of torch.compile(RNN) (inference; the first shape) against the same RNN eager."
    )
    return 0
