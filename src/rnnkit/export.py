"""Export: a trained model as plain torch.nn, TorchScript or ONNX, with nothing of rnnkit needed to run it.

The way out goes through ``twin.scriptable``: every ``rnnkit.RNN`` of a model becomes, for a cell torch.nn has
(Elman, LSTM, GRU) without zoneout, a ``TorchRNN`` (``rnnkit.twin``), a thin wrapper around its
``torch.nn.RNN/LSTM/GRU`` twin that keeps rnnkit's contract ``output, state = rnn(x, state, lengths)`` (padded
batches packed for torch.nn, outputs zero past each length, the final state of each row at its own last step); for
any other cell of the table, and for zoneout, a ``LoopRNN`` (``rnnkit.steploop``) with the same contract: the
cell's step traced once, in a scripted loop over time. Both exporters then trace the converted model, so batch and
time stay dynamic (the scripted loop stays a loop: a TorchScript loop, an ONNX ``Loop``):

- TorchScript: ``torch.jit.trace`` of the task's graph (``torch.jit.script`` works on ``rnnkit.RNN`` itself
  through ``RNN.__prepare_scriptable__``, which hands over the twin or the loop);
- ONNX: ``torch.onnx.export(..., dynamo=False)`` of that trace, torch's TorchScript-based exporter. Why not the
  default ``dynamo=True`` of torch 2.13: torch.export cannot trace ``pack_padded_sequence`` (data-dependent sizes),
  so it cannot export lengths, while the TorchScript-based exporter maps them onto the ``sequence_lens`` input of
  ONNX's own LSTM/GRU/RNN operators, writes the scripted loop as an ONNX ``Loop``, keeps batch and time dynamic,
  and was several times faster to export here (docs/export.md, "Export"). ``dynamo=True`` still works on
  ``rnnkit.RNN`` of a torch.nn cell without lengths (tested). torch 2.13 marks ``torch.jit`` and this exporter
  deprecated, and ships both.

Weight-drop, dropout and locked dropout act in training only, and export is of the eval model; zoneout goes out as
its expectation. ``torch.compile`` needs no export: ``RNN.forward`` runs the recurrence eagerly behind a graph break.

What each task exports (``Task.export_graphs``; shapes with B batch, T time, L layers x directions, H hidden):

- ``lm``: tokens (B, T) int64, h0 [c0] (L, B, H) -> logits (B, T, V), hn [cn]: call it on a prompt, then on one
  token at a time with the returned state (``examples/onnx_sample.py`` does so with onnxruntime alone);
- ``classify``: tokens (B, T) int64 or series (B, T, D) float, lengths (B,) int64 -> logits (B, C) (a tensor);
- ``forecast``: inputs (B, T, D), the network's [, ids (B,) int64], h0 [c0] -> params (B, T, P) (the head's
  distribution parameters or quantiles), hn [cn]; the scaling, lags and autoregressive sampling stay in Python;
- ``seq2seq``: two graphs, ``FILE.encoder`` (source (B, S) int64, lengths (B,) -> memory, keys, mask, h0 [c0],
  feed0) and ``FILE.decoder`` (one step: previous (B,) int64, h0 [c0], feed0, memory, keys, mask -> logits (B, V),
  hn [cn], feed, attention (B, S)); greedy or beam search loop over the decoder in the caller.

``--format torch`` saves the model itself with every ``rnnkit.RNN`` replaced by its torch.nn twin (``torch.save``
of the module: loading it needs rnnkit importable for the task's classes; TorchScript and ONNX do not).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
import os
import pickle
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.errors import ExportError
from rnnkit.io import atomic_open, atomic_write
from rnnkit.recurrent import RNN
from rnnkit.twin import LSTMState, TorchLSTM, TorchRNN, scriptable

__all__ = [
    "FORMATS",
    "Graph",
    "TorchLSTM",
    "TorchRNN",
    "as_outputs",
    "available",
    "export_graphs",
    "max_difference",
    "output_paths",
    "require",
    "run_exported",
    "save_torch",
    "scriptable",
    "to_torch_modules",
]

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "torch")
# below protobuf's 2 GB message limit, with room for the graph itself
ONNX_IN_MEMORY_BYTES = 1_500_000_000
OPSET = 17  # onnxruntime >= 1.14 runs it; LSTM/GRU/RNN with sequence_lens, Loop, Trilu
INSTALL = "pip install 'rnnkit[export]'"


def available(module: str) -> bool:
    """Whether an optional dependency can be imported."""
    return importlib.util.find_spec(module) is not None


def require(*modules: str, purpose: str = "ONNX export") -> None:
    """ExportError naming the ``pip install`` to run when an optional dependency is missing."""
    missing = [m for m in modules if not available(m)]
    if missing:
        raise ExportError(f"{purpose} needs {' and '.join(missing)}, which is not installed: {INSTALL}")


# --- rnnkit.RNN -> torch.nn: the twin is rnnkit.twin's; here, every RNN of a model ------------------------------


def to_torch_modules(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every ``rnnkit.RNN`` is its torch.nn twin (``scriptable``); ``model`` is kept."""
    if isinstance(model, RNN):
        return scriptable(model)
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, RNN):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, scriptable(module))
    return model


# --- the graphs a task exports -----------------------------------------------------------------------------------


@dataclass
class Graph:
    """One exported graph: a module of Tensors in, a Tensor (one output) or a tuple of Tensors out, example inputs
    and axis names. ONNX names its inputs ``input_names``; TorchScript by the module's ``forward`` arguments.

    ``name``: "" for a task's one graph, else the part it is ("encoder", "decoder"), put in the file name.
    ``dynamic``: {input or output name: {axis: "batch" | "time" | ...}}, the axes that stay free.
    """

    module: nn.Module
    inputs: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        # a new wrapper module starts in training mode, and torch.onnx.export restores the mode it found on the
        # whole tree afterwards: a wrapper left in training mode would switch the model's dropout back on
        self.module.eval()

    def signature(self) -> str:
        """``tokens (batch, time) int64, h0 (2, batch, 8) float32 -> logits (batch, time, 40) float32, ...``."""
        with torch.no_grad():
            outputs = as_outputs(self.module(*self.inputs))

        def describe(names: list[str], tensors) -> str:
            parts = []
            for name, t in zip(names, tensors, strict=True):
                dims = ", ".join(self.dynamic.get(name, {}).get(k, str(n)) for k, n in enumerate(t.shape))
                parts.append(f"{name} ({dims}) {str(t.dtype).removeprefix('torch.')}")
            return ", ".join(parts)

        return f"{describe(self.input_names, self.inputs)} -> {describe(self.output_names, outputs)}"


def as_outputs(out: Tensor | tuple[Tensor, ...] | list[Tensor]) -> tuple[Tensor, ...]:
    """A graph's outputs as a tuple: a graph with one output returns the tensor itself, not a 1-tuple."""
    return (out,) if isinstance(out, Tensor) else tuple(out)


def state_names(has_cell: bool) -> tuple[list[str], list[str]]:
    """Names of a recurrent state's tensors: (["h0", "c0"], ["hn", "cn"]) with a memory cell (LSTM), else (["h0"],
    ["hn"])."""
    parts = ["h", "c"] if has_cell else ["h"]
    return [f"{p}0" for p in parts], [f"{p}n" for p in parts]


def flat_state(state: Any) -> tuple[Tensor, ...]:
    """A recurrent state as graph inputs or outputs: (h, c) for an LSTM state, (h,) for a Tensor."""
    return tuple(state) if isinstance(state, tuple) else (state,)


def nested_state(parts: tuple[Tensor, ...]) -> Any:
    """``flat_state`` undone: LSTMState(h, c) from two tensors, the tensor itself from one."""
    return LSTMState(parts[0], parts[1]) if len(parts) == 2 else parts[0]


def batch_axes(names: list[str], axis: int = 1) -> dict[str, dict[int, str]]:
    """{name: {axis: "batch"}} for state tensors (L*K, B, H), whose batch is axis 1."""
    return {name: {axis: "batch"} for name in names}


def output_paths(out: str | os.PathLike, graphs: list[Graph]) -> list[Path]:
    """Where each graph goes: ``out`` for one graph; ``out`` with ``.encoder``/``.decoder`` before the suffix else."""
    out = Path(out)
    if len(graphs) == 1:
        return [out]
    return [out.with_name(f"{out.stem}.{g.name}{out.suffix}") for g in graphs]


def export_graphs(graphs: list[Graph], out: str | os.PathLike, fmt: str) -> list[Path]:
    """Write ``graphs`` in format ``fmt`` (``onnx`` or ``torchscript``) to ``output_paths(out, graphs)``, atomically.

    Returns the paths written. The modules must be in eval mode and hold no ``rnnkit.RNN`` (``to_torch_modules``).
    """
    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"fmt must be 'onnx' or 'torchscript', got {fmt!r}")
    if fmt == "onnx":
        require("onnx")
    paths = output_paths(out, graphs)
    for graph, path in zip(graphs, paths, strict=True):
        start = time.perf_counter()
        # serialised in memory first: a full disk then fails in our write (one line, the old file kept), not in
        # the exporters' C++ writers (torch.jit's aborted the process: "c10::Error unexpected pos", exit 134)
        if fmt == "onnx" and _parameter_bytes(graph.module) > ONNX_IN_MEMORY_BYTES:
            # protobuf holds at most 2 GB in one message: the exporter keeps such weights in files beside the
            # model, which needs a path
            with torch.no_grad(), atomic_open(path) as (_, tmp):
                _onnx(graph, str(tmp))
        else:
            buffer = io.BytesIO()
            with torch.no_grad():
                if fmt == "onnx":
                    _onnx(graph, buffer)
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in torch 2.13, still shipped
                        torch.jit.save(_trace(graph), buffer)
            atomic_write(path, buffer.getbuffer())
        log.info("exported %s in %.2f s", path, time.perf_counter() - start)
    return paths


def _trace(graph: Graph) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # the tracer warns on every Python int it records (sizes, the lengths' checks): sizes stay dynamic in the
        # trace (the parity tests run other batch sizes and lengths), the checks guard the caller's inputs only
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit, still ships it
        return torch.jit.trace(graph.module, graph.inputs, check_trace=False)


@contextmanager
def _stderr_to_log() -> Iterator[None]:
    """Hold back what C++ code writes to file descriptor 2 meanwhile (the ONNX exporter's shape-inference notes on
    packed sequences, which Python's warnings filters cannot reach) and log it at debug level."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", "replace").strip()
            if text:
                log.debug("torch.onnx.export wrote to stderr:\n%s", text)


def _parameter_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _onnx(graph: Graph, f: str | io.BytesIO) -> None:
    with warnings.catch_warnings(), _stderr_to_log():
        # the legacy exporter's deprecation notice (see the module docstring for why we use it), the tracer's
        # int warnings, and its caution about LSTMs with lengths and a batch other than 1, which the parity tests
        # answer (they run batches of 1 to 7 rows)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            # traced first: the exporter's own trace refuses a scripted submodule (rnnkit.steploop's loop), a
            # ScriptModule made by torch.jit.trace keeps it, and the exporter writes its loop as an ONNX Loop
            _trace(graph),
            graph.inputs,
            f,
            input_names=graph.input_names,
            output_names=graph.output_names,
            dynamic_axes=graph.dynamic,
            opset_version=OPSET,
            dynamo=False,
        )


def run_exported(path: str | os.PathLike, fmt: str, graph: Graph, inputs: tuple[Tensor, ...]) -> list[Tensor]:
    """The outputs of an exported file on ``inputs``: onnxruntime for ONNX, ``torch.jit.load`` for TorchScript."""
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit, still ships it
            return list(as_outputs(torch.jit.load(str(path))(*inputs)))
    require("onnxruntime", purpose="checking an ONNX file")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}  # the exporter prunes an input the graph does not read
    feed = {n: t.numpy() for n, t in zip(graph.input_names, inputs, strict=True) if n in wanted}
    return [torch.from_numpy(o) for o in session.run(None, feed)]


def max_difference(path: str | os.PathLike, fmt: str, graph: Graph) -> float:
    """The largest |exported - model| over the outputs of the graph's example inputs (a check after writing)."""
    got = run_exported(path, fmt, graph, graph.inputs)
    with torch.no_grad():
        expected = as_outputs(graph.module(*graph.inputs))
    worst = 0.0
    for g, e in zip(got, expected, strict=True):
        if tuple(g.shape) != tuple(e.shape):
            return float("inf")
        worst = max(worst, (g.double() - e.double()).abs().max().item() if e.numel() else 0.0)
    return worst


def save_torch(model: nn.Module, path: str | os.PathLike) -> None:
    """``--format torch``: the model with torch.nn recurrences, ``torch.save``d whole (atomically). ExportError for a
    cell torch.nn lacks, or zoneout: their scripted loop does not pickle (TorchScript and ONNX take them)."""
    for module in model.modules():
        if isinstance(module, RNN) and (module.spec.torch_module is None or module.plan().zoned):
            raise ExportError(f"--format torch needs recurrences torch.nn has, got RNN({module.extra_repr()}); "
                              "use --format torchscript or onnx")  # fmt: skip
    converted = to_torch_modules(model).eval()
    try:
        buffer = io.BytesIO()
        torch.save(converted, buffer)
        atomic_write(path, buffer.getbuffer())
    except (AttributeError, TypeError, pickle.PicklingError) as e:  # a module holding a local function (a cell spec)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"--format torch cannot pickle this model ({first}); use --format torchscript or onnx") from e
