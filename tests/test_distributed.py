"""DDP: two CPU processes (gloo) end with identical parameters, equal to one process on the same rows."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnkit.train import train_lm

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _ddp_worker import config  # noqa: E402

TEXT = "".join(f"for i in range({i % 9}):\n    total += i * {i % 4}\n" for i in range(80))


ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")])),
}


def _torchrun(worker: str, data: Path, tmp_path: Path, name: str = "ddp") -> Path:
    """Run ``worker DATA tmp_path/NAME tmp_path/NAME-params`` on 2 CPU ranks of one node; returns the folder of
    per-rank results."""
    params = tmp_path / f"{name}-params"
    params.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(HERE / worker), str(data), str(tmp_path / name), str(params)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return params


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_nodes(worker: str, data: Path, tmp_path: Path, name: str = "nodes") -> Path:
    """The same, as a cluster runs it: two torchrun "nodes" of one process each, meeting through c10d rendezvous at
    localhost:PORT (what ``torchrun --nnodes 2 --rdzv-backend c10d --rdzv-endpoint HOST:PORT`` on two machines
    does; gloo carries the gradients over TCP either way)."""
    params = tmp_path / f"{name}-params"
    params.mkdir()
    port = _free_port()
    procs = []
    for host in ("1", "0"):  # the node that hosts the rendezvous store, then the other
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc_per_node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"localhost:{port}",
            "--rdzv-id",
            "rnnkit-test",
            "--rdzv-conf",
            f"is_host={host}",
            str(HERE / worker),
            str(data),
            str(tmp_path / name),
            str(params),
        ]
        procs.append(subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out[-3000:]
    return params


@pytest.mark.slow
def test_two_ranks_agree_and_equal_one_process_on_the_same_rows(tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT)
    params = _torchrun("_ddp_worker.py", text_file, tmp_path)

    r0 = torch.load(params / "rank0.pt", weights_only=True)
    r1 = torch.load(params / "rank1.pt", weights_only=True)
    # two machines (here two node processes on one) end bit-identical to one machine with two ranks
    nodes = _two_nodes("_ddp_worker.py", text_file, tmp_path)
    n0 = torch.load(nodes / "rank0.pt", weights_only=True)
    assert all(torch.equal(n0["params"][k], r0["params"][k]) for k in r0["params"])
    assert n0["events"] > 0 and torch.load(nodes / "rank1.pt", weights_only=True)["events"] == 0
    assert n0["items_per_s"] > 0 and n0["items"] == r0["items"] == 2 * r0["rank_items"]  # global throughput
    saved = torch.load(tmp_path / "nodes" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], r0["params"][k]) for k in saved)
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k  # DDP keeps the replicas identical
    assert r0["val_bpc"] == r1["val_bpc"]  # validation is all-reduced: every rank sees the same number
    assert r0["events"] > 0 and r1["events"] == 0  # only rank 0 reports ...
    assert {p.name for p in (tmp_path / "ddp").iterdir()} >= {"last.pt", "best.pt", "metrics.jsonl", "config.json"}
    assert not (tmp_path / "ddp" / ".lock").exists()
    saved = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["model"]  # ... and writes files
    assert all(torch.equal(saved[k], r0["params"][k]) for k in saved)

    # oracle: rank r's 2 rows are rows 2r, 2r+1 of the 4-row stream, and DDP averages the ranks' gradients,
    # so 2 ranks x 2 rows train exactly like 1 process x 4 rows (up to float rounding)
    single = train_lm(config(str(text_file), batch_size=4), tmp_path / "single").model.state_dict()
    for k in single:
        torch.testing.assert_close(single[k], r0["params"][k], rtol=1e-4, atol=1e-5)
    # and the shards differ: training on rank 0's rows alone gives other parameters
    alone = train_lm(config(str(text_file), batch_size=2), tmp_path / "alone").model.state_dict()
    assert any((alone[k] - r0["params"][k]).abs().max() > 1e-3 for k in alone)


@pytest.mark.slow
def test_classifier_ranks_agree_and_validation_is_all_reduced(tmp_path):
    from _ddp_classify_worker import config as classify_config
    from rnnkit.checkpoint import load_run
    from rnnkit.tasks import ClassifyTask

    data = tmp_path / "d.tsv"
    words = [("ab" * (1 + i % 5), "x") if i % 2 else ("cd" * (1 + i % 3), "y") for i in range(90)]
    data.write_text("".join(f"{w}{i % 7}\t{y}\n" for i, (w, y) in enumerate(words)))
    params = _torchrun("_ddp_classify_worker.py", data, tmp_path)
    r0 = torch.load(params / "rank0.pt", weights_only=True)
    r1 = torch.load(params / "rank1.pt", weights_only=True)
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert r0["last"] == r1["last"]  # each rank scored half the validation set; the sums were all-reduced
    # oracle: one process scoring the whole validation set with the final parameters
    task = ClassifyTask(classify_config(str(data)))
    task.prepare(None)
    run = load_run(tmp_path / "ddp", "last")
    m = task.scores(run.model, task.val_set)
    assert m["accuracy"] == pytest.approx(r0["last"]["accuracy"]) and m["loss"] == pytest.approx(r0["last"]["loss"])


def test_only_rank_0_prints_the_summary(tmp_path, monkeypatch, capsys):
    """Under torchrun every rank runs the command; a rank other than 0 trains and says nothing."""
    from rnnkit.cli import main

    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    argv = ["train", "lm", "--data", str(data), "--max-steps", "1", "--max-minutes", "0", "--hidden-size", "4",
            "--embedding-size", "4", "--batch-size", "2", "--bptt", "8"]  # fmt: skip
    monkeypatch.setenv("RANK", "1")  # no WORLD_SIZE: trains alone, but the CLI sees a rank that is not 0
    assert main([*argv, "--out", str(tmp_path / "r1")]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main([*argv, "--out", str(tmp_path / "r0")]) == 0
    assert "run folder:" in capsys.readouterr().out
