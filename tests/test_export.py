"""Export (rnnkit.export, ``rnnkit export``): every graph run by onnxruntime and TorchScript equals rnnkit's model.

Oracle tests: the exported file, run at batch sizes and lengths other than the ones it was traced with, gives the
outputs of the rnnkit model it came from within 1e-5 (float32), for every mode torch.nn has, bidirectional,
stacked, with lengths, and for the graphs of every task. Needs the ``[export]`` extra (onnx, onnxruntime).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cli import main
from rnnkit.errors import ExportError
from rnnkit.export import Graph, as_outputs, batch_axes, export_graphs, flat_state, state_names, to_torch_modules

ort = pytest.importorskip("onnxruntime", reason="needs the [export] extra: pip install 'rnnkit[export]'")

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5  # the float32 bound
SIZES = ((1, 1), (2, 5), (7, 12))  # (B, T): none of them the (3, 4) or (2, 3) the graphs are traced with


def run_file(path: Path, fmt: str, names: list[str], inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The outputs of an exported file on ``inputs``: onnxruntime for ONNX, torch.jit.load for TorchScript."""
    if fmt == "torchscript":
        with torch.no_grad():
            return list(as_outputs(torch.jit.load(str(path))(*inputs)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}  # an input the graph ignores is pruned from the file
    feed = {n: t.numpy() for n, t in zip(names, inputs, strict=True) if n in wanted}
    return [torch.from_numpy(np.asarray(o)) for o in session.run(None, feed)]


def assert_outputs_equal(got: list[torch.Tensor], expected: tuple[torch.Tensor, ...], what: str) -> float:
    assert len(got) == len(expected), what
    worst = 0.0
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert tuple(g.shape) == tuple(e.shape), (what, k, g.shape, e.shape)
        if e.dtype == torch.bool:
            assert torch.equal(g, e), (what, k)
            continue
        worst = max(worst, (g.double() - e.double()).abs().max().item())
    assert worst <= ATOL, (what, worst)
    return worst


def reference(graph: Graph, model: nn.Module) -> nn.Module:
    """The task's graph module around the rnnkit model itself (not its torch.nn copy): what the file must equal."""
    ref = copy.deepcopy(graph.module)
    ref.model = model
    return ref.eval()


def lengths_for(B: int, T: int, gen: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T  # a full row and ragged ones, in no particular order
    return lengths


# --- rnnkit.RNN: every mode torch.nn has, stacked, bidirectional, with lengths ------------------------------------


class WithLengths(nn.Module):
    """An RNN as a graph: x (B, T, D), lengths (B,), h0 [c0] -> output, hn [cn]."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths, *state):
        out, new_state = self.rnn(x, state if len(state) == 2 else state[0], lengths)
        return (out, *flat_state(new_state))


RNN_CASES = [(mode, nl, bi) for mode, nl in (("elman", "tanh"), ("elman", "relu"), ("lstm", "tanh"), ("gru", "tanh"))
             for bi in (False, True)]  # fmt: skip


@pytest.mark.parametrize(("mode", "nonlinearity", "bidirectional"), RNN_CASES)
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_rnn_export_equals_rnnkit(mode, nonlinearity, bidirectional, fmt, tmp_path):
    torch.manual_seed(0)
    rnn = rnnkit.RNN(mode, 3, 5, 2, bidirectional=bidirectional, nonlinearity=nonlinearity).eval()
    K = 2 if bidirectional else 1
    ins, outs = state_names(mode == "lstm")
    state = tuple(torch.zeros(2 * K, 3, 5) for _ in ins)
    graph = Graph(WithLengths(to_torch_modules(rnn)).eval(), (torch.zeros(3, 4, 3), torch.tensor([4, 2, 3]), *state),
                  ["x", "lengths", *ins], ["output", *outs],
                  {"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "output": {0: "batch", 1: "time"}}
                  | batch_axes(ins + outs))  # fmt: skip
    [path] = export_graphs([graph], tmp_path / f"rnn.{fmt}", fmt)
    gen = torch.Generator().manual_seed(1)
    for B, T in SIZES:
        x, lengths = torch.randn(B, T, 3, generator=gen), lengths_for(B, T, gen)
        h0 = tuple(torch.randn(2 * K, B, 5, generator=gen) for _ in ins)
        with torch.no_grad():
            expected = WithLengths(rnn)(x, lengths, *h0)
        assert_outputs_equal(run_file(path, fmt, graph.input_names, (x, lengths, *h0)), expected, (B, T))


SCRIPT_CASES = [("elman", True, 0.0), ("lstm", True, 0.0), ("gru", True, 0.0), ("lstm", False, 0.0),
                ("layernorm-lstm", False, 0.0), ("mingru", True, 0.0), ("gru", False, 0.25)]  # fmt: skip


@pytest.mark.parametrize(("mode", "batch_first", "zoneout"), SCRIPT_CASES)
def test_rnn_scripts(mode, batch_first, zoneout):
    """torch.jit.script(rnnkit.RNN) scripts its torch.nn twin, or the step loop for a cell torch.nn lacks and for
    zoneout (RNN.__prepare_scriptable__): same outputs, with and without lengths."""
    torch.manual_seed(0)
    rnn = rnnkit.RNN(mode, 3, 4, 2, bidirectional=True, batch_first=batch_first, zoneout=zoneout).eval()
    scripted = torch.jit.script(rnn)
    gen = torch.Generator().manual_seed(1)
    for B, T in SIZES:
        x, lengths = torch.randn(B, T, 3, generator=gen), lengths_for(B, T, gen)
        x = x if batch_first else x.transpose(0, 1)  # (T, B, D)
        with torch.no_grad():
            for args in ((x,), (x, None, lengths)):
                out, state = rnn(*args)
                got, got_state = scripted(*args)
                assert_outputs_equal([got, *flat_state(got_state)], (out, *flat_state(state)), (mode, B, T))


@pytest.mark.parametrize("backend", ["loop", "native", "fused"])
def test_rnn_traces_on_every_backend(backend):
    """A trace keeps batch and time free (the export hook runs torch.nn's kernels under the tracer)."""
    torch.manual_seed(0)
    rnn = rnnkit.RNN("gru", 3, 4, 2, bidirectional=True, backend=backend).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        example = (torch.randn(3, 4, 3), torch.tensor([4, 2, 3]), torch.zeros(4, 3, 4))
        traced = torch.jit.trace(WithLengths(rnn), example)
    gen = torch.Generator().manual_seed(1)
    for B, T in SIZES:
        args = (torch.randn(B, T, 3, generator=gen), lengths_for(B, T, gen), torch.randn(4, B, 4, generator=gen))
        with torch.no_grad():
            assert_outputs_equal(list(traced(*args)), WithLengths(rnn)(*args), (backend, B, T))


# --- every cell of the table with every regulariser (evaluation): the traced step in a scripted loop -------------

CELL_SIZES = ((1, 3), (4, 9))  # two batch sizes and two lengths, none the (3, 4) the graphs are traced with


def rnn_graph(rnn: rnnkit.RNN) -> Graph:
    """An RNN's export graph: x (B, T, D), lengths (B,), h0 [c0] -> output, hn [cn], batch and time free."""
    ins, outs = state_names(rnn.spec.has_cell)
    L = rnn.num_layers * rnn.num_directions
    state = tuple(torch.zeros(L, 3, rnn.hidden_size) for _ in ins)
    axes = {"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "output": {0: "batch", 1: "time"}}
    return Graph(WithLengths(to_torch_modules(rnn)), (torch.zeros(3, 4, rnn.input_size), torch.tensor([4, 2, 3]),
                 *state), ["x", "lengths", *ins], ["output", *outs], axes | batch_axes(ins + outs))  # fmt: skip


def regularised(mode: str, zoneout=(0.3, 0.2)) -> rnnkit.RNN:
    """RNN(mode) stacked and bidirectional with every regulariser on (at evaluation only zoneout acts)."""
    recurrent = rnnkit.cells.CELLS[mode].recurrent_weight is not None
    return rnnkit.RNN(mode, 3, 4, 2, bidirectional=True, dropout=0.3, zoneout=zoneout, locked_dropout=True,
                      weight_drop=0.3 if recurrent else 0.0, dropout_input=0.2, dropout_output=0.2).eval()  # fmt: skip


@pytest.mark.parametrize("mode", list(rnnkit.cells.CELLS))
def test_every_cell_exports_with_every_regulariser(mode, tmp_path):
    """Every cell of the table: one plain layer (torch.nn's twin where torch.nn has the cell) to TorchScript, and a
    stacked bidirectional RNN with every regulariser (the scripted step loop for every cell) to TorchScript and to
    ONNX, whose file holds a Loop: each run by torch.jit.load / onnxruntime at two batch sizes and two lengths
    with ragged lengths and a random initial state, equal to rnnkit's model."""
    import onnx

    torch.manual_seed(0)
    cases = {"plain": (rnnkit.RNN(mode, 3, 4).eval(), ("torchscript",)),
             "regularised": (regularised(mode), ("torchscript", "onnx"))}  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    for name, (rnn, formats) in cases.items():
        graph = rnn_graph(rnn)
        for fmt in formats:
            [path] = export_graphs([graph], tmp_path / f"{name}.{fmt}", fmt)
            if fmt == "onnx":
                assert "Loop" in {node.op_type for node in onnx.load(str(path)).graph.node}
            for B, T in CELL_SIZES:
                x, lengths = torch.randn(B, T, 3, generator=gen), lengths_for(B, T, gen)
                h0 = tuple(torch.randn(*graph.inputs[2].shape[:1], B, 4, generator=gen) for _ in graph.inputs[2:])
                with torch.no_grad():
                    expected = WithLengths(rnn)(x, lengths, *h0)
                assert_outputs_equal(run_file(path, fmt, graph.input_names, (x, lengths, *h0)), expected,
                                     (name, fmt, B, T))  # fmt: skip
    # zoneout's expectation is in the graph: the same weights without it give other outputs
    rnn = cases["regularised"][0]
    without = regularised(mode, zoneout=0.0)
    without.load_state_dict(rnn.state_dict())
    x = torch.randn(2, 6, 3, generator=gen)
    with torch.no_grad():
        assert (rnn(x)[0] - without(x)[0]).abs().max() > 1e-3


@pytest.mark.slow
def test_torch_onnx_export_of_rnnkit_rnn_itself(tmp_path):
    """torch.onnx.export on an rnnkit.RNN, no conversion: the TorchScript-based exporter with lengths, and torch
    2.13's default dynamo exporter without (torch.export cannot trace packed sequences)."""
    torch.manual_seed(0)
    rnn = rnnkit.RNN("lstm", 3, 4, bidirectional=True).eval()
    x = torch.randn(2, 5, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = {"x": {0: "b", 1: "t"}, "lengths": {0: "b"}, "h0": {1: "b"}, "c0": {1: "b"}}
        torch.onnx.export(WithLengths(rnn), (x, torch.tensor([5, 2]), torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)),
                          str(tmp_path / "legacy.onnx"), input_names=["x", "lengths", "h0", "c0"], dynamo=False,
                          dynamic_axes=axes)  # fmt: skip
        B, T = torch.export.Dim("B"), torch.export.Dim("T")
        torch.onnx.export(rnn, (x,), str(tmp_path / "dynamo.onnx"), dynamo=True, verbose=False,
                          dynamic_shapes=({0: B, 1: T},))  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    x2, lengths = torch.randn(4, 7, 3, generator=gen), torch.tensor([7, 1, 3, 6])
    h0 = (torch.randn(2, 4, 4, generator=gen), torch.randn(2, 4, 4, generator=gen))
    with torch.no_grad():
        expected = WithLengths(rnn)(x2, lengths, *h0)
        plain = rnn(x2)
    got = run_file(tmp_path / "legacy.onnx", "onnx", ["x", "lengths", "h0", "c0"], (x2, lengths, *h0))
    assert_outputs_equal(got, expected, "legacy")
    session = ort.InferenceSession(str(tmp_path / "dynamo.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x2.numpy()})
    assert_outputs_equal([torch.from_numpy(o) for o in out], (plain[0], *plain[1]), "dynamo")


# --- every task's graphs --------------------------------------------------------------------------------------


def make_task(name: str, model: dict):
    """A task restored from made-up artefacts (no data read, no training): its untrained model is enough here."""
    from rnnkit.tasks import TASKS

    task_cls = TASKS[name.split("-")[0]]
    task = task_cls(task_cls.Config.from_dict({"model": model}))
    specials = ["<pad>", "<unk>"]
    artefacts = {
        "lm": {"vocab": list("\nabcdef")},
        "classify-text": {"labels": ["a", "b", "c"], "kind": "text", "tokens": [*specials, *"xyzw"]},
        "classify-series": {"labels": ["0", "1"], "kind": "series", "channels": 2, "mean": torch.tensor([1.0, -2.0]),
                            "std": torch.tensor([2.0, 0.5])},
        "forecast": {"axis": {"kind": "int", "step": 1, "style": "", "day": 0, "clock": 0}, "season": 4, "horizon": 3,
                     "context": 6, "lags": [1, 2, 4], "ids": ["s0", "s1", "s2"], "covariates": [], "cov_mean": [],
                     "cov_std": []},
        "seq2seq": {"source_tokens": [*specials, "<s>", "</s>", *"abcde"], "target_tokens": [*specials, "<s>", "</s>",
                    *"ABCDEFG"]},
        "ctc": {"symbols": list("ab c"), "input": "features", "num_features": 3},
    }[name]  # fmt: skip
    task.restore(artefacts)
    torch.manual_seed(0)
    return task, task.build_model().eval()


def random_inputs(graph: Graph, B: int, T: int, gen: torch.Generator, model: nn.Module) -> tuple[torch.Tensor, ...]:
    """Inputs like the graph's example ones with batch B and every time axis T: tokens within the vocabulary,
    lengths and a mask with a full row and ragged ones, series ids including -1 (a series the run never saw)."""
    lengths = lengths_for(B, T, gen)
    sizes = {"batch": B, "time": T, "source_time": T}
    out = []
    for name, example in zip(graph.input_names, graph.inputs, strict=True):
        axes = graph.dynamic.get(name, {})
        shape = [sizes.get(axes.get(k), n) for k, n in enumerate(example.shape)]
        if name == "lengths":
            t = lengths
        elif name == "mask":
            t = rnnkit.lengths_to_mask(lengths, T)
        elif example.dtype == torch.long:
            embedding = {"previous": "tgt_embed", "source": "src_embed", "ids": "embed"}.get(name, "embedding")
            high = model.get_submodule(embedding).num_embeddings
            t = torch.randint(-1 if name == "ids" else 0, high, shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen)
            if name == "series":  # a classifier's series: a missing value reads as the mean
                t[0, 0, -1] = float("nan")
        out.append(t)
    return tuple(out)


TASK_CASES = {
    "lm-lstm": ("lm", {"mode": "lstm", "embedding_size": 4, "hidden_size": 6, "num_layers": 2}),
    "lm-gru": ("lm", {"mode": "gru", "embedding_size": 4, "hidden_size": 6, "tie_weights": False}),
    "classify-text-gru-bi-mean": ("classify-text", {"mode": "gru", "embedding_size": 4, "hidden_size": 5,
                                                    "pooling": "mean", "head_size": 3}),
    "classify-text-gru-ngrams": ("classify-text", {"mode": "gru", "embedding_size": 4, "hidden_size": 5,
                                                   "ngrams": 3, "ngram_buckets": 40}),
    "classify-text-elman-attention": ("classify-text", {"mode": "elman", "embedding_size": 4, "hidden_size": 5,
                                                        "pooling": "attention", "bidirectional": False}),
    "classify-series-lstm-bi-last": ("classify-series", {"mode": "lstm", "hidden_size": 5, "num_layers": 2,
                                                         "pooling": "last", "head_size": 0}),
    "classify-series-gru-max": ("classify-series", {"mode": "gru", "hidden_size": 5, "pooling": "max"}),
    "classify-series-gru-conv": ("classify-series", {"mode": "gru", "hidden_size": 5, "conv_filters": 3}),
    "forecast-lstm-ids-studentt": ("forecast", {"mode": "lstm", "hidden_size": 6, "id_embedding": 3}),
    "forecast-gru-quantile": ("forecast", {"mode": "gru", "hidden_size": 6, "num_layers": 1, "head": "quantile"}),
    "seq2seq-lstm-general": ("seq2seq", {"mode": "lstm", "embedding_size": 4, "hidden_size": 5, "decoder_layers": 2}),
    "lm-layernorm-lstm-zoneout": ("lm", {"mode": "layernorm-lstm", "embedding_size": 4, "hidden_size": 6,
                                         "num_layers": 2, "zoneout": 0.2}),
    "classify-series-mingru-bi": ("classify-series", {"mode": "mingru", "hidden_size": 5, "pooling": "mean"}),
    "seq2seq-gru-bahdanau": ("seq2seq", {"mode": "gru", "embedding_size": 4, "hidden_size": 5, "num_layers": 2,
                                         "attention": "bahdanau", "tie_embeddings": True}),
    "ctc-lstm-bi": ("ctc", {"mode": "lstm", "hidden_size": 5, "num_layers": 2, "subsample": 1}),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(TASK_CASES))
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_task_graphs_equal_the_model(case, fmt, tmp_path):
    name, config = TASK_CASES[case]
    task, model = make_task(name, config)
    graphs = task.export_graphs(model)
    paths = export_graphs(graphs, tmp_path / f"model.{fmt}", fmt)
    assert [p.name for p in paths] == (["model." + fmt] if len(graphs) == 1 else
                                       [f"model.encoder.{fmt}", f"model.decoder.{fmt}"])  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    for graph, path in zip(graphs, paths, strict=True):
        ref = reference(graph, model)
        for B, T in SIZES:
            inputs = random_inputs(graph, B, T, gen, model)
            with torch.no_grad():
                expected = as_outputs(ref(*inputs))
            assert_outputs_equal(run_file(path, fmt, graph.input_names, inputs), expected, (case, graph.name, B, T))


# --- rnnkit export: every task's run, the onnxruntime example, bad input ------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny trained run of each task (a few optimiser steps: export needs a run folder, not a good model)."""
    root = tmp_path_factory.mktemp("export-runs")
    rng = np.random.default_rng(0)
    data = {"lm": root / "text.txt", "classify": root / "labelled.tsv", "forecast": root / "series.csv",
            "seq2seq": root / "pairs.tsv"}  # fmt: skip
    data["lm"].write_text("def f(x):\n    return x * 2 + 1\n\nclass A:\n    pass\n" * 40)
    data["classify"].write_text("".join(f"{'ab' * (i % 3 + 1)}{'c' * (i % 2)}\t{i % 2}\n" for i in range(60)))
    rows = [f"s{i},{t},{10 + np.sin(t / 2 + i) + rng.normal(0, 0.1):.4f}" for i in range(3) for t in range(30)]
    data["forecast"].write_text("id,time,value\n" + "\n".join(rows) + "\n")
    data["seq2seq"].write_text("".join(f"{w}\t{w[::-1]}\n" for w in ("abc", "bca", "cab", "abcd", "dcab", "bd") * 5))
    small = ["--max-minutes", "0", "--hidden-size", "8", "--no-plots"]
    # the LM trains long enough that its greedy text is not one repeated character
    # fp32: the LM's default is auto (bf16 where the CPU has it), and the exported graphs are fp32
    extra = {"lm": ["--precision", "fp32", "--max-steps", "120", "--eval-every", "120", "--embedding-size", "8",
                    "--batch-size", "8",
                    "--bptt", "16", "--num-layers", "2", "--hidden-size", "16", "--lr", "0.01"],
             "classify": ["--max-steps", "2", "--embedding-size", "4", "--head-size", "4", "--mode", "lstm"],
             "forecast": ["--max-steps", "2", "--horizon", "2", "--num-samples", "4", "--eval-samples", "4",
                          "--id-embedding", "2"],
             "seq2seq": ["--max-steps", "2", "--embedding-size", "4", "--mode", "gru"]}  # fmt: skip
    out = {}
    for task, path in data.items():
        out[task] = root / f"run-{task}"
        assert main(["train", task, "--data", str(path), "--out", str(out[task]), *small, *extra[task]]) == 0
    return out


@pytest.mark.parametrize("task", ["lm", "classify", "forecast", "seq2seq"])
def test_cli_exports_every_task(task, runs, tmp_path, capsys):
    capsys.readouterr()
    for fmt in ("onnx", "torchscript"):
        out = tmp_path / f"{task}.{fmt}"
        assert main(["export", "--run", str(runs[task]), "--format", fmt, "--out", str(out)]) == 0
        stdout = capsys.readouterr().out
        written = [out] if task != "seq2seq" else [tmp_path / f"{task}.{part}.{fmt}" for part in ("encoder", "decoder")]
        assert all(p.is_file() for p in written) and sorted(tmp_path.iterdir()) == sorted(
            [*written, *(p for p in tmp_path.iterdir() if not p.name.endswith(f".{fmt}"))]
        )
        checks = [float(line.split("within ")[1].split()[0]) for line in stdout.splitlines() if "checked" in line]
        assert len(checks) == len(written) and max(checks) <= ATOL, stdout


def test_cli_torch_format_is_the_model_with_torch_nn_recurrences(runs, tmp_path, capsys):

    from rnnkit.checkpoint import load_run

    out = tmp_path / "classify.pt"
    assert main(["export", "--run", str(runs["classify"]), "--format", "torch", "--out", str(out)]) == 0
    model = torch.load(out, weights_only=False)
    assert not any(isinstance(m, rnnkit.RNN) for m in model.modules())
    assert any(isinstance(m, nn.LSTM) for m in model.modules())
    # the seq2seq decoder is an RNN like the encoder: a torch.nn recurrence once exported
    s2s = tmp_path / "s2s.pt"
    assert main(["export", "--run", str(runs["seq2seq"]), "--format", "torch", "--out", str(s2s)]) == 0
    exported = torch.load(s2s, weights_only=False)
    assert isinstance(exported.decoder.rnn, nn.GRU) and not any(isinstance(m, rnnkit.RNN) for m in exported.modules())
    original = load_run(runs["classify"]).model
    x, lengths = torch.randint(1, 5, (3, 7)), torch.tensor([7, 2, 5])
    with torch.no_grad():
        torch.testing.assert_close(model(x, lengths), original(x, lengths), atol=ATOL, rtol=0)


def test_the_onnxruntime_example_writes_rnnkit_samples_greedy_text(runs, tmp_path, capsys):
    """examples/onnx_sample.py, run where torch cannot be imported, prints what `rnnkit sample --temperature 0` does."""
    path = tmp_path / "lm.onnx"
    assert main(["export", "--run", str(runs["lm"]), "--format", "onnx", "--out", str(path)]) == 0
    for prompt in ("def ", ""):
        capsys.readouterr()
        assert main(["sample", "--run", str(runs["lm"]), "--prompt", prompt, "--length", "120",
                     "--temperature", "0"]) == 0  # fmt: skip
        expected = capsys.readouterr().out
        no_torch = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
                    "runpy.run_path(sys.argv[0], run_name='__main__')")  # fmt: skip
        argv = [str(ROOT / "examples" / "onnx_sample.py"), str(path), str(runs["lm"] / "vocab.json"),
                "--prompt", prompt, "--length", "120"]  # fmt: skip
        done = subprocess.run([sys.executable, "-c", no_torch, *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout == expected and len(set(expected)) > 3


def test_bad_export_requests_are_one_line(runs, tmp_path, capsys, monkeypatch):
    from tests.conftest import one_error_line

    lm = str(runs["lm"])
    exists = tmp_path / "exists.onnx"
    exists.write_text("keep me\n")
    s2s = tmp_path / "s2s.onnx"
    (tmp_path / "s2s.decoder.onnx").write_text("keep me too\n")
    cases = {
        ("--run", lm, "--format", "tflite", "--out", tmp_path / "a.tflite"): "invalid choice: 'tflite'",
        ("--run", tmp_path, "--format", "onnx", "--out", tmp_path / "a.onnx"): "not an rnnkit run folder",
        ("--run", lm, "--format", "onnx", "--out", exists): "exists; pass --force",
        ("--run", lm, "--format", "torch", "--out", exists): "exists; pass --force",
        ("--run", runs["seq2seq"], "--format", "onnx", "--out", s2s): "s2s.decoder.onnx exists; pass --force",
        ("--run", lm, "--format", "onnx", "--out", tmp_path / "no-folder" / "a.onnx"): "does not exist",
        ("--run", lm, "--format", "onnx", "--out", ""): "--out must name a file",
        ("--run", lm, "--format", "onnx"): "required: --out",
    }
    for argv, message in cases.items():
        line = one_error_line(capsys, main(["export", *map(str, argv)]))
        assert message in line, (argv, line)
    assert exists.read_text() == "keep me\n" and not s2s.exists()
    assert main(["export", "--run", lm, "--format", "onnx", "--out", str(exists), "--force"]) == 0
    assert exists.read_bytes() != b"keep me\n"

    # a missing optional dependency: the pip install to run
    monkeypatch.setattr("rnnkit.export.available", lambda module: module != "onnx")
    line = one_error_line(capsys, main(["export", "--run", lm, "--format", "onnx", "--out", str(tmp_path / "b.onnx")]))
    assert "needs onnx" in line and "pip install 'rnnkit[export]'" in line
    monkeypatch.undo()

    # a recurrence torch.nn has no module for (RNN.to_torch refuses it): one line saying what cannot be exported
    def refuse(self):
        raise ValueError("mode 'mingru' has no torch.nn module")

    monkeypatch.setattr(rnnkit.RNN, "to_torch", refuse)
    for fmt in ("onnx", "torchscript", "torch"):
        line = one_error_line(capsys, main(["export", "--run", lm, "--format", fmt, "--out", str(tmp_path / "c")]))
        assert "cannot export" in line and "mingru" in line, line
    assert not (tmp_path / "c").exists()
    with pytest.raises(ExportError, match="mingru"):
        torch.jit.script(rnnkit.RNN("gru", 2, 3))
    monkeypatch.undo()

    # --format torch pickles torch.nn's modules; the scripted loop of any other cell (or zoneout) does not pickle
    from rnnkit.export import save_torch

    for rnn in (rnnkit.RNN("mingru", 2, 3), rnnkit.RNN("gru", 2, 3, zoneout=0.1)):
        with pytest.raises(
            ExportError, match=r"--format torch needs recurrences torch.nn has.*use --format torchscript"
        ):
            save_torch(nn.Sequential(rnn), tmp_path / "d.pt")
    assert not (tmp_path / "d.pt").exists()


# --- torch.compile ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "c++", "g++", "clang++") if c),
                    reason="torch.compile's CPU code generation needs a C++ compiler")  # fmt: skip
@pytest.mark.slow
def test_torch_compile_of_a_task_model_and_its_bench_row():
    """The one compile test (compiling takes seconds): a char LM compiled gives its eager logits and state at two
    lengths (the second a recompile with a dynamic time axis), and `rnnkit bench` reports the compiled RNN."""
    from rnnkit.bench import _bench_compile

    _, model = make_task("lm", {"mode": "lstm", "embedding_size": 4, "hidden_size": 6, "num_layers": 2})
    compiled = torch.compile(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for B, T in ((2, 5), (3, 9)):
            tokens = torch.randint(0, 7, (B, T), generator=gen)
            logits, state = model(tokens)
            got, got_state = compiled(tokens)
            assert_outputs_equal([got, *got_state], (logits, *state), (B, T))
    lines: list[str] = []
    _bench_compile("lstm", (2, 6, 8), 1, torch.device("cpu"), lines.append)
    rows = [line.split() for line in lines]
    assert [r[3] for r in rows] == ["torch.nn", "eager", "compiled"] and all(r[2] == "compile" for r in rows)
    assert "eager/compiled" in lines[-1] and float(rows[-1][4]) > 0


def test_greedy_decoding_with_the_exported_seq2seq_graphs_equals_rnnkits(tmp_path):
    """The encoder once, then the decoder step in a loop, all in onnxruntime: the tokens of rnnkit.seq2seq.greedy."""
    from rnnkit.seq2seq import BOS, EOS, greedy

    task, model = make_task("seq2seq", TASK_CASES["seq2seq-lstm-general"][1])
    wide = torch.Generator().manual_seed(3)
    with torch.no_grad():  # an untrained model writes one token over and over: wider weights make varied outputs
        for p in model.parameters():
            p.normal_(0, 1.0, generator=wide)
    graphs = task.export_graphs(model)
    encoder, decoder = export_graphs(graphs, tmp_path / "s2s.onnx", "onnx")
    gen = torch.Generator().manual_seed(2)
    source = torch.randint(4, 9, (5, 6), generator=gen)
    lengths = torch.tensor([6, 3, 1, 5, 6])
    expected = [h.tokens for h in greedy(model, source, lengths, max_length=12)]
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (encoder, decoder)]
    memory, keys, mask, h, c, feed = sessions[0].run(None, {"source": source.numpy(), "lengths": lengths.numpy()})
    previous = np.full(5, BOS, np.int64)
    tokens: list[list[int]] = [[] for _ in range(5)]
    for _ in range(12):
        feeds = {"previous": previous, "h0": h, "c0": c, "feed0": feed, "memory": memory, "keys": keys, "mask": mask}
        wanted = {i.name for i in sessions[1].get_inputs()}  # feed0 only with input feeding: ONNX drops unused inputs
        logits, h, c, feed, _ = sessions[1].run(None, {k: v for k, v in feeds.items() if k in wanted})
        previous = logits.argmax(-1)
        for row, token in zip(tokens, previous.tolist(), strict=True):
            if not row or row[-1] != EOS:
                row.append(token)
    assert tokens == expected and len(graphs) == 2
    assert any(len(set(row)) > 2 for row in tokens)  # not one token repeated: the comparison means something


def test_onnx_over_the_in_memory_limit_goes_through_a_path_to_the_same_model(runs, tmp_path, monkeypatch):
    """Below protobuf's 2 GB an ONNX file is serialised in memory, then written atomically; above it the exporter
    writes through a path (its weights may go to files beside it). Both give the same model, and leave no temporary."""
    import onnx

    import rnnkit.export as export

    memory, path = tmp_path / "memory.onnx", tmp_path / "path.onnx"
    assert main(["export", "--run", str(runs["classify"]), "--format", "onnx", "--out", str(memory)]) == 0
    monkeypatch.setattr(export, "ONNX_IN_MEMORY_BYTES", 0)
    assert main(["export", "--run", str(runs["classify"]), "--format", "onnx", "--out", str(path)]) == 0
    a, b = onnx.load(str(memory)), onnx.load(str(path))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node] and len(a.graph.node) > 3
    assert {t.name: t.raw_data for t in a.graph.initializer} == {t.name: t.raw_data for t in b.graph.initializer}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.onnx", "path.onnx"]
