"""The rnnkit command, in-process via main([...]) plus one subprocess run of ``python -m rnnkit``."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import one_error_line as _one_error_line
from rnnkit.checkpoint import save_checkpoint
from rnnkit.cli import main

# fp32: the LM's default precision is auto (bf16 where the CPU has it); these tests compare with fp32 library calls
TINY = [
    "--no-plots",
    "--precision",
    "fp32",
    "--hidden-size",
    "16",
    "--embedding-size",
    "8",
    "--batch-size",
    "4",
    "--bptt",
    "16",
    "--eval-every",
    "10",
    "--eval-chars",
    "400",
    "--max-minutes",
    "0",
    "--device",
    "cpu",
    "--warmup-steps",
    "2",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    path = d / "text.txt"
    path.write_text(("def f(x):\n    return x * 2 + 1\n\nclass A:\n    pass\n" * 80), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", "lm", "--data", str(corpus), "--out", str(out), "--max-steps", "20", *TINY]) == 0
    return out


def test_train_prints_bpc_folder_and_sample(run_dir, capsys):
    assert (run_dir / "best.pt").is_file() and (run_dir / "last.pt").is_file()


def test_train_output(corpus, tmp_path, capsys):
    out = tmp_path / "r2"
    assert main(["train", "lm", "--data", str(corpus), "--out", str(out), "--max-steps", "10", *TINY]) == 0
    stdout = capsys.readouterr().out
    assert "val bpc" in stdout and str(out) in stdout and "sample" in stdout
    assert len(stdout.split("seed 0):\n", 1)[1].rstrip("\n")) >= 250  # a few hundred chars (newlines may be sampled)


def test_sample_is_deterministic_with_seed(run_dir, capsys):
    argv = ["sample", "--run", str(run_dir), "--prompt", "def ", "--length", "40", "--seed", "3", "--temperature", "1"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first
    assert len(first) == 41  # 40 chars and a newline
    assert main([*argv[:-4], "--seed", "4", "--temperature", "1"]) == 0
    assert capsys.readouterr().out != first


def test_eval_json_matches_library(run_dir, corpus, capsys):
    from rnnkit.checkpoint import load_run
    from rnnkit.data import read_text
    from rnnkit.metrics import evaluate_text

    assert main(["eval", "--run", str(run_dir), "--data", str(corpus), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    run = load_run(run_dir)
    expected = evaluate_text(run.model, run.vocab, read_text(corpus), batch_size=16, bptt=16)
    assert result["bpc"] == pytest.approx(expected["bpc"], rel=1e-6)
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert result["chars"] == expected["chars"] and result["run"] == str(run_dir)
    assert result["bpc"] == pytest.approx(result["loss"] / 0.6931471805599453)


def test_eval_dynamic_json_matches_library(run_dir, corpus, capsys):
    from rnnkit.checkpoint import load_run
    from rnnkit.data import read_text
    from rnnkit.metrics import evaluate_dynamic

    args = ["eval", "--run", str(run_dir), "--data", str(corpus), "--json", "--dynamic-lr", "0.001"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    run = load_run(run_dir)
    ids = run.vocab.encode(read_text(corpus), tensor=True)
    expected = evaluate_dynamic(run.model, ids, lr=0.001, batch_size=2, bptt=32)
    assert result["dynamic_lr"] == 0.001 and result["bpc"] == pytest.approx(expected["bpc"], rel=1e-6)
    assert main(["eval", "--run", str(run_dir), "--data", str(corpus), "--json"]) == 0
    static = json.loads(capsys.readouterr().out)
    assert static["dynamic_lr"] == 0.0 and static["bpc"] != result["bpc"]


def test_toml_config_and_flag_precedence(corpus, tmp_path, capsys):
    from rnnkit.checkpoint import load_run

    toml = tmp_path / "c.toml"
    toml.write_text(f"[model]\nmode = 'gru'\nhidden_size = 12\n[data]\ndata = '{corpus}'\n[train]\nmax_steps = 4\n")
    out = tmp_path / "r3"
    argv = ["train", "lm", "--config", str(toml), "--out", str(out), *TINY, "--hidden-size", "10"]
    assert main(argv) == 0
    cfg = load_run(out).config
    assert cfg.model.mode == "gru" and cfg.model.hidden_size == 10 and cfg.train.max_steps == 4


def _write(path, data):
    path.write_bytes(data)
    return path


def test_bad_inputs_one_line_exit_2(corpus, run_dir, tmp_path, capsys):
    base = ["train", "lm", "--max-steps", "5", *TINY]
    cases = [
        [*base, "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o1")],
        [*base, "--data", str(_write(tmp_path / "empty.txt", b"")), "--out", str(tmp_path / "o2")],
        [*base, "--data", str(_write(tmp_path / "bin.txt", b"\x00\x01\x02abc" * 50)), "--out", str(tmp_path / "o3")],
        [
            *base,
            "--data",
            str(_write(tmp_path / "latin.txt", "caf\xe9 ".encode("latin-1") * 50)),
            "--out",
            str(tmp_path / "o4"),
        ],
        [*base, "--data", str(_write(tmp_path / "short.txt", b"abc def\n" * 3)), "--out", str(tmp_path / "o5")],
        [*base, "--data", str(corpus), "--out", str(tmp_path / "o6"), "--max-steps", "-1"],
        [*base, "--data", str(corpus), "--out", str(tmp_path / "o7"), "--hidden-size", "0"],
        [*base, "--data", str(corpus), "--out", str(tmp_path / "o8"), "--mode", "transformer"],
        [*base, "--data", str(corpus), "--out", str(tmp_path / "o9"), "--hidden-size", "many"],
        ["sample", "--run", str(tmp_path)],
        ["sample", "--run", str(tmp_path / "nope")],
        ["sample", "--run", str(run_dir), "--prompt", "\u20ac"],
        ["sample", "--run", str(run_dir), "--top-p", "0"],
        ["sample", "--run", str(run_dir), "--temperature", "-1"],
        ["eval", "--run", str(run_dir), "--data", str(tmp_path / "missing.txt")],
        ["eval", "--run", str(run_dir), "--data", str(tmp_path)],
        ["train", "lm", "--bogus"],
        ["frobnicate"],
    ]
    for argv in cases:
        line = _one_error_line(capsys, main(argv))
        assert len(line) < 400, line
    for name in ("o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9"):
        assert not (tmp_path / name / "last.pt").exists()


def test_prompt_error_names_char(run_dir, capsys):
    assert "'\u20ac'" in _one_error_line(capsys, main(["sample", "--run", str(run_dir), "--prompt", "a\u20ac"]))


def test_other_model_kind_and_existing_run_untouched(corpus, run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    save_checkpoint(other / "best.pt", {"kind": "classifier", "model": {"w": torch.zeros(1)}})
    assert "classifier" in _one_error_line(capsys, main(["sample", "--run", str(other)]))
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    line = _one_error_line(
        capsys, main(["train", "lm", "--data", str(corpus), "--out", str(run_dir), "--max-steps", "3", *TINY])
    )
    assert "--resume" in line
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


def test_unknown_toml_key(tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text("[train]\nlearning_rate = 1\n")
    line = _one_error_line(capsys, main(["train", "lm", "--config", str(toml), "--out", str(tmp_path / "o")]))
    assert "learning_rate" in line and str(toml) in line
    assert not (tmp_path / "o").exists()


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("rnnkit ")


def test_python_m_rnnkit_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "rnnkit", "eval", "--run", str(tmp_path / "nope"), "--data", str(tmp_path / "x.txt")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("rnnkit: error:")
    assert proc.stdout == ""


def test_ctrl_c_exit_130_and_bugs_keep_traceback(corpus, tmp_path, capsys, monkeypatch):
    import rnnkit.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    argv = ["train", "lm", "--data", str(corpus), "--out", str(tmp_path / "o"), "--max-steps", "3", *TINY]
    monkeypatch.setattr(rnnkit.train, "train", interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "nothing was saved" in err

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a genuine bug")

    monkeypatch.setattr(rnnkit.train, "train", bug)
    with pytest.raises(ZeroDivisionError):
        main(argv)


def test_ctrl_c_during_training_says_what_it_saved(corpus, tmp_path, capsys, monkeypatch):
    import rnnkit.train

    real_train = rnnkit.train.train

    def train_until_step_2(task, out, **kwargs):
        progress = kwargs.pop("on_event")

        def on_event(event):
            progress(event)
            if event["kind"] == "step" and event["step"] == 2:
                raise KeyboardInterrupt

        return real_train(task, out, on_event=on_event, **kwargs)

    monkeypatch.setattr(rnnkit.train, "train", train_until_step_2)
    out = tmp_path / "o"
    argv = ["train", "lm", "--data", str(corpus), "--out", str(out), "--max-steps", "6", "--log-every", "1", *TINY]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"rnnkit: interrupted at step 2: saved {out / 'last.pt'}; continue with --out {out} --resume"


def test_resume_continues_the_run_as_configured(corpus, tmp_path, capsys):
    """--resume reads the run's config.json: only the flags given change it (here the step budget)."""
    out = tmp_path / "r"
    assert main(["train", "lm", "--data", str(corpus), "--out", str(out), "--max-steps", "4", *TINY]) == 0
    assert not (out / "loss.png").exists()  # --no-plots (in TINY)
    assert main(["train", "lm", "--out", str(out), "--resume", "--max-steps", "8"]) == 0
    assert (out / "loss.png").stat().st_size > 1000  # drawn by default
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["hidden_size"] == 16 and saved["train"]["max_steps"] == 8
    assert saved["data"]["data"] == str(corpus)
    capsys.readouterr()
    (out / "config.json").write_text("{not json")
    status = main(["train", "lm", "--out", str(out), "--resume", "--max-steps", "12"])
    assert "config.json: not a run's config" in _one_error_line(capsys, status)


def test_table_cells_that_a_spreadsheet_would_run_are_quoted_numbers_are_not(tmp_path, capsys):
    """OWASP CSV injection: text cells starting with = + - @ TAB CR get a leading single quote; numbers (-1.5) stay."""
    from rnnkit.cli import _write_table
    from rnnkit.tasks.base import Table

    rows = [["=HYPERLINK(\"http://x\")", -1.5, "-1.5"], ["+cmd|' /C calc'!A0", "@SUM(A1)", "-x"],
            ["\tlead", "\rlead", "plain-=text"], ["-inf", "+3", "1e-300"]]  # fmt: skip
    for suffix in (".csv", ".tsv"):
        out = tmp_path / f"t{suffix}"
        _write_table(Table(header=["a", "b", "c"], rows=rows), str(out))
        text = out.read_text()
        sep = "," if suffix == ".csv" else "\t"
        for cell in ("'=HYPERLINK", "'+cmd|", "'@SUM(A1)", "'-x", "'\tlead", "plain-=text"):
            assert cell in text, (suffix, cell, text)
        assert f"{sep}-1.5{sep}-1.5\n" in text and "-inf" in text and "'-inf" not in text and "'+3" not in text
