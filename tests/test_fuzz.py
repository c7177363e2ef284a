"""The command line under bad and odd input: a table of file cases and property-based flags for every command.

Every case runs ``rnnkit.cli.main`` in this process under a deadline (SIGALRM: a blocking read is interrupted) and
asserts the contract of ``rnnkit.cli``: exit 0 or 2, never a traceback; on exit 2 exactly one stderr line
``rnnkit: error: ...`` and not one byte changed among the files that existed before; on success the files that
existed before are unchanged too (only new files appear). The corpus covers every task's commands.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import stat
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from conftest import one_error_line
from rnnkit.checkpoint import load_checkpoint, save_checkpoint
from rnnkit.cli import build_parser, main
from rnnkit.data.music import write_midi

pytestmark = pytest.mark.usefixtures("one_thread")

DEADLINE_S = 60
CORPUS: list[str] = []  # every case run
DONE: list[str] = []  # the tests of this module that finished
LAST: dict[str, str] = {}  # the standard error of the last case


@contextmanager
def deadline(seconds: int):
    """TimeoutError when the body runs longer than ``seconds`` (a hang is a failure, not a stuck CI job)."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """{path: (mode, sha1)} of every regular file under ``root`` (FIFOs, devices and symlinks are not read); a file
    over 64 MiB (the 4 GiB sparse probe) by its size and modification time instead of read whole at every case."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            st_ = os.lstat(p)
            if stat.S_ISREG(st_.st_mode) and st_.st_size > 64 << 20:
                files[str(p)] = (st_.st_mode, f"{st_.st_size} bytes, mtime {st_.st_mtime_ns}")
            elif stat.S_ISREG(st_.st_mode):
                files[str(p)] = (st_.st_mode, hashlib.sha1(p.read_bytes()).hexdigest())
    return files


def check(argv: list[str], root: Path, capsys) -> int:
    """Run one case and assert the contract (see the module docstring); returns the exit status."""
    argv = [str(a) for a in argv]
    CORPUS.append(" ".join(argv))
    capsys.readouterr()
    before = snapshot(root)
    with deadline(DEADLINE_S):
        status = main(argv)
    out = capsys.readouterr()
    LAST["err"] = out.err
    assert "Traceback" not in out.err + out.out, (argv, out.err[-3000:])
    assert status in (0, 2), (argv, status, out.err[-3000:])
    after = snapshot(root)
    if status == 2:
        lines = out.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rnnkit: error: "), (argv, out.err)
        assert after == before, argv
    else:
        assert {k: after.get(k) for k in before} == before, argv  # only new files
    return status


# --- fixtures: good data, trained runs of every task, and bad files -------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def good(root) -> dict[str, Path]:
    """Small data files and a trained run of each task."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    g = {"text": root / "text.txt", "tsv": root / "labelled.tsv", "csv": root / "series.csv",
         "actuals": root / "actuals.csv", "pairs": root / "pairs.tsv"}  # fmt: skip
    g["pairs"].write_text("".join(f"{w}\t{w[::-1]}\n" for w in ("abc", "bca", "cab", "abcd", "dcab", "bd") * 5))
    g["text"].write_text("def f(x):\n    return x + 1\n" * 60)
    g["tsv"].write_text("".join(f"{'ab' * (i % 3 + 1)}{'c' * (i % 2)}\t{i % 2}\n" for i in range(60)))
    rows = [f"s{i},{t},{10 + np.sin(t / 2 + i) + rng.normal(0, 0.1):.4f}" for i in range(3) for t in range(30)]
    g["csv"].write_text("id,time,value\n" + "\n".join(rows) + "\n")
    g["actuals"].write_text("id,time,value\n" + "".join(f"s{i},{t},10\n" for i in range(3) for t in (30, 31)))
    g["npz"] = root / "features.npz"  # ctc: feature sequences and their transcripts
    np.savez(g["npz"], X=rng.normal(size=(12, 16, 3)).astype(np.float32), lengths=np.full(12, 16),
             targets=np.array(["ab", "ba", "a"] * 4))  # fmt: skip
    g["midi"] = root / "midi"  # music: a folder of MIDI files
    g["midi"].mkdir()
    for k, frames in enumerate(rng.random((4, 12, 5)) < 0.3):
        frames[-1, 0] = True
        (g["midi"] / f"p{k}.mid").write_bytes(write_midi(frames, 4, low=60))
    small = ["--max-steps", "2", "--max-minutes", "0", "--eval-every", "2", "--hidden-size", "8", "--no-plots"]
    for task, data, extra in (
        ("lm", g["text"], ["--embedding-size", "4", "--batch-size", "2", "--bptt", "8"]),
        ("classify", g["tsv"], ["--embedding-size", "4", "--head-size", "4"]),
        ("forecast", g["csv"], ["--horizon", "2", "--num-samples", "4", "--eval-samples", "4"]),
        ("seq2seq", g["pairs"], ["--embedding-size", "4"]),
    ):
        g[task] = root / f"run-{task}"
        assert main(["train", task, "--data", str(data), "--out", str(g[task]), *small, *extra]) == 0
    return g


@pytest.fixture(scope="module")
def bad(root, good) -> dict[str, Path]:
    """Files and run folders no command should accept, each made once."""
    d = root / "bad"
    d.mkdir()
    b = {name: d / name for name in ("empty.txt", "nul.bin", "latin1.txt", "bom.txt", "utf16.txt", "folder",
                                      "fifo", "loop", "devzero", "missing.txt")}  # fmt: skip
    b["empty.txt"].write_bytes(b"")
    b["nul.bin"].write_bytes(b"abc\x00def\n" * 10)
    b["latin1.txt"].write_bytes("caf\xe9 na\xefve\n".encode("latin-1") * 10)
    b["bom.txt"].write_bytes(b"\xef\xbb\xbf")
    b["utf16.txt"].write_text("hello\tworld\n", encoding="utf-16")
    b["folder"].mkdir()
    os.mkfifo(b["fifo"])
    (d / "loop2").symlink_to(b["loop"])
    b["loop"].symlink_to(d / "loop2")
    b["devzero"].symlink_to("/dev/zero")
    runs = {}
    for name in ("truncated", "foreign", "only-best", "mismatched", "wrong-kind"):
        runs[name] = d / f"run-{name}"
        runs[name].mkdir()
    best = (good["lm"] / "best.pt").read_bytes()
    (runs["truncated"] / "best.pt").write_bytes(best[: len(best) // 2])
    torch.save({"weights": torch.zeros(3)}, runs["foreign"] / "best.pt")
    (runs["only-best"] / "best.pt").write_bytes(best)
    payload = load_checkpoint(good["lm"] / "best.pt")
    payload["config"]["model"]["hidden_size"] = 9  # the weights are H=8
    save_checkpoint(runs["mismatched"] / "best.pt", payload)
    payload = load_checkpoint(good["lm"] / "best.pt")
    payload["kind"] = "speech"
    save_checkpoint(runs["wrong-kind"] / "best.pt", payload)
    return b | runs


# --- the file table ---------------------------------------------------------------------------------------------

FILES = ("empty.txt", "nul.bin", "latin1.txt", "bom.txt", "utf16.txt", "folder", "fifo", "loop", "devzero",
         "missing.txt")  # fmt: skip
RUNS = ("truncated", "foreign", "only-best", "mismatched", "wrong-kind")
TINY = ["--max-steps", "1", "--max-minutes", "0", "--hidden-size", "4", "--no-plots"]


def _data_commands(g: dict[str, Path], f: Path, out: Path) -> list[list]:
    """Every command that reads a user's file, with ``f`` in that file's place."""
    return [
        ["train", "lm", "--data", f, "--out", out, *TINY],
        ["train", "classify", "--data", f, "--out", out, *TINY],
        ["train", "classify", "--data", g["tsv"], "--val", f, "--out", out, *TINY],
        ["train", "forecast", "--data", f, "--horizon", "2", "--out", out, *TINY],
        ["train", "lm", "--data", g["text"], "--config", f, "--out", out, *TINY],
        ["eval", "--run", g["lm"], "--data", f],
        ["eval", "--run", g["classify"], "--data", f],
        ["eval", "--run", g["forecast"], "--data", f, "--actuals", g["actuals"]],
        ["eval", "--run", g["forecast"], "--data", g["csv"], "--actuals", f],
        ["predict", "--run", g["classify"], "--data", f],
        ["train", "seq2seq", "--data", f, "--out", out, *TINY],
        ["eval", "--run", g["seq2seq"], "--data", f],
        ["predict", "--run", g["seq2seq"], "--data", f],
        ["forecast", "--run", g["forecast"], "--data", f],
        ["sample", "--run", f, "--length", "3"],
        ["eval", "--run", f, "--data", g["text"]],
        ["export", "--run", f, "--format", "torchscript", "--out", out],
    ]


@pytest.mark.parametrize("name", FILES)
def test_every_command_refuses_a_bad_file_in_one_line(name, good, bad, root, capsys):
    for argv in _data_commands(good, bad[name], root / "out-never"):
        assert check(argv, root, capsys) == 2, argv
        assert not (root / "out-never").exists()


@pytest.mark.parametrize("name", RUNS)
def test_every_run_command_refuses_a_broken_run_folder(name, good, bad, root, capsys):
    run = bad[name]
    cases = [
        ["sample", "--run", run, "--checkpoint", "last"],
        ["train", "lm", "--data", good["text"], "--out", run, "--resume", *TINY],
        ["train", "lm", "--data", good["text"], "--out", run, *TINY],
    ]
    if name != "only-best":  # a folder with a good best.pt alone still samples, evaluates and predicts
        cases += [
            ["sample", "--run", run, "--length", "3"],
            ["eval", "--run", run, "--data", good["text"]],
            ["predict", "--run", run, "--data", good["tsv"]],
            ["forecast", "--run", run, "--data", good["csv"]],
            ["export", "--run", run, "--format", "onnx", "--out", good["text"].with_name("never.onnx")],
        ]
    for argv in cases:
        assert check(argv, root, capsys) == 2, argv


def test_the_wrong_task_and_existing_outputs_are_refused(good, root, capsys):
    out = root / "exists.csv"
    out.write_text("keep me\n")
    cases = [
        ["sample", "--run", good["classify"]],
        ["sample", "--run", good["forecast"]],
        ["predict", "--run", good["lm"], "--data", good["text"]],
        ["forecast", "--run", good["classify"], "--data", good["csv"]],
        ["eval", "--run", good["forecast"], "--data", good["csv"]],  # no --actuals
        ["predict", "--run", good["classify"], "--data", good["tsv"], "--out", out],
        ["forecast", "--run", good["forecast"], "--data", good["csv"], "--out", out],
        ["forecast", "--run", good["forecast"], "--data", good["csv"], "--out", root / "no-folder" / "f.csv"],
        ["forecast", "--run", good["forecast"], "--data", good["csv"], "--out", ""],
        ["forecast", "--run", good["forecast"], "--data", good["csv"], "--plot", root / "plot.txt"],
        ["gradflow", "--out", out],
        ["gradflow", "--out", root / "plot.png.txt"],
        ["sample", "--run", good["lm"], "--prompt", "\u2603", "--echo-prompt"],
        ["sample", "--run", good["lm"], "--len", "3"],  # no abbreviations
        ["train", "lm", "--data", good["text"], "--out", "", *TINY],
        ["bench", "--threads", "-1"],
        ["bench", "--tokens", "0"],
        ["bench", "--repeats", "-5"],
        ["bench", "--device", "bogus"],
        ["bench", "--shapes", "100000x100000x100000"],
        ["gradflow", "--hidden-size", "1000000000000"],
        ["export", "--run", good["lm"], "--format", "onnx", "--out", out],
        ["export", "--run", good["seq2seq"], "--format", "torch", "--out", out],
        ["export", "--run", good["classify"], "--format", "tflite", "--out", root / "m.tflite"],
        ["export", "--run", good["forecast"], "--format", "onnx", "--out", ""],
        ["export", "--run", good["text"], "--format", "onnx", "--out", root / "m.onnx"],
        ["export", "--run", root, "--format", "torchscript", "--out", root / "no-folder" / "m.pt"],
        ["train", "lm", "--data", good["text"], "--hidden-size", "1000000", "--out", root / "huge", *TINY[:4]],
    ]
    for argv in cases:
        assert check(argv, root, capsys) == 2, argv
    assert out.read_text() == "keep me\n"


def test_a_closed_pipe_stops_quietly(good, root, monkeypatch, capsys):
    def closed(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("rnnkit.tasks.forecasting.ForecastTask.forecast_rows", closed)
    status = main(["forecast", "--run", str(good["forecast"]), "--data", str(good["csv"])])
    assert status == 141 and capsys.readouterr().err == ""


# --- issue 26: what a second probe found -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe(root) -> dict[str, Path]:
    """The second probe's inputs, each made once."""
    d = root / "probe"
    d.mkdir()
    p = {name: d / name for name in ("huge.csv", "tiny.csv", "long.tsv", "header.tsv", "tabs.tsv", "unequal.ts",
                                      "nan.ts", "long-target.tsv", "classes.tsv", "sparse.txt", "formula.csv",
                                      "nfc.tsv")}  # fmt: skip
    rows = "".join(f"s,{t},{10 + t % 3}\n" for t in range(1, 30))
    p["huge.csv"].write_text(f"id,time,value\n{rows}s,30,1e300\n")
    p["tiny.csv"].write_text("id,time,value\n" + "".join(f"s,{t},{t}e-300\n" for t in range(1, 30)))
    p["long.tsv"].write_text("ab\t0\ncd\t1\n" * 5 + "c" * 200_000 + "\t0\n")
    p["header.tsv"].write_text("text\tlabel\n" + "ab\t0\ncd\t1\n" * 5 + "text\tlabel\n" + "ab\t0\n")
    p["tabs.tsv"].write_text("ab\t0\ncd\t1\n" * 5 + "ef\tla\tbel\n")
    ts = "@problemName p\n@univariate true\n@equalLength true\n@classLabel true a b\n@missing true\n@data\n"
    p["unequal.ts"].write_text(ts + "1,2,3:a\n4,5,6:b\n" * 3 + "1,2:a\n")
    p["nan.ts"].write_text(ts + "1,2,3:a\n4,5,6:b\n" * 3 + "?,NaN,?:a\n")
    p["long-target.tsv"].write_text("abc\tcba\nbca\tacb\n" * 5 + "a\t" + "x" * 10_000 + "\n")
    p["classes.tsv"].write_text("".join(f"ab\t{i}\n" for i in range(2_001)))
    with open(p["sparse.txt"], "wb") as f:
        f.truncate(4 << 30)  # a hole: no disk used; read whole, 4 GiB of NUL bytes
    ids = ('"=HYPERLINK(""http://x"",""y"")"', "-cmd|' /C calc'!A0")  # the first CSV-quoted: it holds commas
    p["formula.csv"].write_text("id,time,value\n" + "".join(f"{i},{t},{10 + t % 3}\n" for i in ids for t in range(30)))
    p["nfc.tsv"].write_text("".join(f"ab{k}\tcaf\u00e9\ncd{k}\tcafe\u0301\nef{k}\tx\n" for k in range(10)))
    return p


def test_the_second_probes_inputs_are_one_line(good, probe, root, capsys):
    out = root / "never"
    f = ["--max-steps", "1", "--max-minutes", "0", "--hidden-size", "4"]
    cases = [
        (["train", "forecast", "--data", probe["huge.csv"], "--horizon", "2", "--out", out, *f], "float32's range"),
        (["forecast", "--run", good["forecast"], "--data", probe["huge.csv"]], "float32's range"),
        (["train", "forecast", "--data", probe["tiny.csv"], "--horizon", "2", "--out", out, *f], "too small for"),
        (["train", "classify", "--data", probe["long.tsv"], "--out", out, *f], "200,002 characters, more than"),
        (["predict", "--run", good["classify"], "--data", probe["long.tsv"]], "more than the 100,000"),
        (["train", "classify", "--data", probe["header.tsv"], "--out", out, *f], "line 12 is a header line"),
        (["train", "classify", "--data", probe["tabs.tsv"], "--out", out, *f], "line 11: 2 tabs"),
        (["train", "classify", "--data", probe["unequal.ts"], "--out", out, *f], "@equalLength true"),
        (["train", "classify", "--data", probe["nan.ts"], "--out", out, *f], "every value of this example is missing"),
        (["train", "seq2seq", "--data", probe["long-target.tsv"], "--too-long", "error", "--out", out, *f],
         "a target of 10000 tokens, longer than --max-target-length 1000"),
        (["train", "classify", "--data", probe["classes.tsv"], "--out", out, *f], "2,001 classes"),
        (["train", "lm", "--data", probe["sparse.txt"], "--out", out, *f], "sparse.txt: "),
        (["eval", "--run", good["lm"], "--data", probe["sparse.txt"]], "sparse.txt: "),
    ]  # fmt: skip
    for argv, expected in cases:
        assert check(argv, root, capsys) == 2, argv
        assert expected in LAST["err"], (argv, expected)  # and each says what it is about
    assert not out.exists()
    # a diverging run: one line (its folder keeps what it wrote before, and no non-finite checkpoint)
    argv = ["train", "classify", "--data", good["tsv"], "--out", out, *f[2:], "--max-steps", "20", "--lr", "1e6",
            "--optimizer", "sgd", "--clip", "0", "--eval-every", "5", "--checkpoint-every", "1"]  # fmt: skip
    CORPUS.append(" ".join(map(str, argv)))
    capsys.readouterr()
    line = one_error_line(capsys, main([str(a) for a in argv]))
    assert "training diverged" in line
    if (out / "last.pt").exists():
        from rnnkit.checkpoint import non_finite

        assert non_finite(load_checkpoint(out / "last.pt")["model"]) is None
    from rnnkit.io import hold_lock

    busy = root / "busy"
    busy.mkdir()
    with hold_lock(busy):  # another train on this --out: refused, and nothing in it changes
        argv = ["train", "lm", "--data", good["text"], "--out", busy, *f, "--embedding-size", "4", "--bptt", "8"]
        assert check(argv, root, capsys) == 2


def test_outputs_are_safe_whole_and_one_class_per_label(good, probe, root, capsys, monkeypatch):
    table = root / "formula-forecast.csv"
    assert check(["forecast", "--run", good["forecast"], "--data", probe["formula.csv"], "--out", table], root,
                 capsys) == 0  # fmt: skip
    cells = {row[0] for row in csv.reader(table.read_text().splitlines()[1:])}
    assert cells == {'\'=HYPERLINK("http://x","y")', "'-cmd|' /C calc'!A0"}  # shown, never run
    run = root / "nfc-run"
    assert check(["train", "classify", "--data", probe["nfc.tsv"], "--out", run, "--max-steps", "1", "--max-minutes",
                  "0", "--hidden-size", "4"], root, capsys) == 0  # fmt: skip
    assert json.loads((run / "labels.json").read_text())["labels"] == ["caf\u00e9", "x"]
    # a full disk while forecast writes --out and --plot: one line, and neither file
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    pieces = []
    real = os.fdopen

    class Full:
        def __init__(self, fd, *a, **k):
            self.f = real(fd, *a, **k)
            pieces.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            if len(pieces) == 2:  # the second file of the two: the first is written whole by then
                full()
            return self.f.write(data)

        def flush(self):
            self.f.flush()

        def fileno(self):
            return self.f.fileno()

    monkeypatch.setattr("rnnkit.io.os.fdopen", Full)
    csv_out, png_out = root / "both.csv", root / "both.png"
    argv = ["forecast", "--run", good["forecast"], "--data", good["csv"], "--out", csv_out, "--plot", png_out]
    assert check(argv, root, capsys) == 2
    assert not csv_out.exists() and not png_out.exists() and len(pieces) == 2


# --- property-based flags ---------------------------------------------------------------------------------------

VALUES = ["-1", "0", "1", "2", "3", "0.5", "nan", "inf", "-inf", "1e-300", "1e300", "9223372036854775808", "",
          "x", "lstm", "gru", "true", "auto", "0,1", "/nonexistent/file", "\u00e9", "3\x00"]  # fmt: skip
# --memory and --contention: bench tables of minutes (test_bench runs them once)
SKIP = {"-h", "--help", "--memory", "--contention", "--version", "--out", "--force", "--plot", "--data", "--run",
        "--val", "--config", "--resume", "--actuals", "--future"}  # fmt: skip


def _subparsers() -> dict[str, object]:
    """{"train lm": parser, "sample": parser, ...} from the real command line."""
    import argparse

    def children(p) -> dict:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices
        return {}

    out = {}
    for name, p in children(build_parser()).items():
        kids = children(p)
        out |= {f"{name} {k}": q for k, q in kids.items()} if kids else {name: p}
    return out


def _flags(parser) -> list[tuple[str, object]]:
    return [(a.option_strings[-1], a) for a in parser._actions if a.option_strings and a.option_strings[-1] not in SKIP]


def _base(command: str, g: dict[str, Path], out: Path) -> list:
    """A cheap, valid invocation of ``command``; the drawn flags come after it and override it."""
    tiny = [
        "--max-steps",
        "2",
        "--max-minutes",
        "0",
        "--eval-every",
        "1",
        "--hidden-size",
        "4",
        "--batch-size",
        "4",
        "--no-plots",
    ]
    return {
        "train lm": ["train", "lm", "--data", g["text"], "--out", out, *tiny, "--embedding-size", "4", "--bptt", "8"],
        "train classify": ["train", "classify", "--data", g["tsv"], "--out", out, *tiny, "--embedding-size", "4"],
        "train forecast": ["train", "forecast", "--data", g["csv"], "--out", out, "--horizon", "2", *tiny,
                           "--num-samples", "4", "--eval-samples", "4"],
        "train seq2seq": ["train", "seq2seq", "--data", g["pairs"], "--out", out, *tiny, "--embedding-size", "4"],
        "train ctc": ["train", "ctc", "--data", g["npz"], "--out", out, *tiny, "--subsample", "2"],
        "train music": ["train", "music", "--data", g["midi"], "--out", out, *tiny, "--seq-len", "8"],
        "tune classify": ["tune", "classify", "--data", g["tsv"], "--out", out, "--trials", "1", "--pruner", "none",
                          *tiny[:2], *tiny[4:], "--embedding-size", "4"],  # no --max-minutes 0: tune's must be > 0
        "sample": ["sample", "--run", g["lm"], "--length", "5"],
        "eval": ["eval", "--run", g["forecast"], "--data", g["csv"], "--actuals", g["actuals"], "--num-samples", "4"],
        "predict": ["predict", "--run", g["classify"], "--data", g["tsv"]],
        "forecast": ["forecast", "--run", g["forecast"], "--data", g["csv"], "--num-samples", "4"],
        "export": ["export", "--run", g["seq2seq"], "--format", "torchscript", "--out", out.with_suffix(".pt")],
        "gradflow": ["gradflow", "--seq-len", "4", "--hidden-size", "3", "--out", out.with_suffix(".png")],
        "datasets": ["datasets"],
        "bench": ["bench", "--quick", "--modes", "elman", "--shapes", "2x3x4", "--skip-loop-train", "--repeats", "1",
                  "--tokens", "2", "--no-compile"],
    }[command]  # fmt: skip


# tune's other tasks: their flags are train's (drawn above for each task) and tune's own (drawn for tune classify)
COMMANDS = sorted(c for c in _subparsers() if not c.startswith("tune ") or c == "tune classify")


# 30 drawn cases per command: make test runs the first 4, the slow tier (.ci/run) 26 other ones
DRAWS = [pytest.param(0, 4, id="first"), pytest.param(1, 26, id="more", marks=pytest.mark.slow)]


@pytest.mark.parametrize(("draw", "examples"), DRAWS)
@pytest.mark.parametrize("command", COMMANDS)
def test_drawn_flags_get_a_result_or_one_line(command, draw, examples, good, root, capsys):
    parser = _subparsers()[command]
    flags = _flags(parser)
    counter = iter(range(10**6))

    @seed(draw)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.sampled_from(flags), st.sampled_from(VALUES)), max_size=4))
    def case(drawn):
        argv = _base(command, good, root / "drawn" / f"{command.replace(' ', '-')}-{draw}-{next(counter)}")
        (root / "drawn").mkdir(exist_ok=True)
        for (flag, action), value in drawn:
            if action.nargs == 0:
                argv.append(flag)
            elif action.choices is not None and value not in ("", "x"):
                argv += [flag, sorted(map(str, action.choices))[len(value) % len(action.choices)]]
            else:
                argv += [flag, value]
        check(argv, root, capsys)

    case()


@pytest.fixture(autouse=True)
def _count(request):
    yield
    DONE.append(request.node.name)


def test_the_corpus_is_large_enough():
    """Runs last in this module (pytest keeps file order): the cases above add up to at least 300."""
    expected = len(FILES) + len(RUNS) + 4 + len(COMMANDS)
    if len(DONE) < expected:
        pytest.skip(f"only {len(DONE)} of the module's {expected} corpus tests ran")
    assert len(CORPUS) >= 300, len(CORPUS)
