"""A smoke run of ``rnnkit bench`` at toy sizes: the table has every row, with consistent numbers."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rnnkit.bench import add_arguments, peak_rss, run
from rnnkit.errors import ConfigError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_quick_table_structure():
    lines: list[str] = []
    status = run(_args("--quick", "--modes", "gru,lstm", "--repeats", "1", "--cells", "layernorm-lstm", "--no-compile"),
                 lines.append)  # fmt: skip
    assert status == 0
    assert lines[0].startswith("rnnkit bench: device=cpu")
    assert "GEMM peak" in lines[1] and "GFLOP/s" in lines[1]
    rows = [line.split() for line in lines if line.split()[0] in ("gru", "lstm")]
    for mode in ("gru", "lstm"):
        for shape in ("8x16x32", "4x8x16"):
            cells = {(r[2], r[3]) for r in rows if r[0] == mode and r[1] == shape}
            for task in ("train", "forward"):
                assert {(task, b) for b in ("torch.nn", "fused", "native")} <= cells
            assert ("forward", "loop") in cells
        steps = [r for r in rows if r[0] == mode and r[2] == "step"]
        assert len(steps) == 2 * 2  # cell loop and RNN.step for H = 16 and 32
    timed = [r for r in rows if r[4] != "skipped"]
    reference = {(r[0], r[1], r[2]): float(r[4]) for r in timed if r[3] in ("torch.nn", "nn.cells")}
    for r in timed:
        value, ratio, gflops = float(r[4]), float(r[5].rstrip("x")), float(r[6])
        assert value > 0 and ratio > 0 and gflops >= 0
        if r[3] in ("torch.nn", "nn.cells"):
            assert ratio == 1.0  # every ratio is against torch.nn
        elif value >= 0.2:  # ratio = torch.nn time / this time, up to the rounding of the printed times
            assert abs(ratio - reference[(r[0], r[1], r[2])] / value) <= 0.06 * ratio + 0.01
    train_nn = [r for r in rows if r[2] == "train" and r[3] == "torch.nn"]
    assert all(float(r[8]) == 1.0 for r in train_nn)  # memory ratio of torch.nn to itself
    assert any("share of the GEMM peak" in line for line in lines)
    cell_rows = [line.split() for line in lines if line.split()[0] == "layernorm-lstm"]
    assert {(r[1], r[3]) for r in cell_rows} >= {("8x16x32", "loop"), ("4x8x16", "loop")}
    assert all(float(r[5].rstrip("x")) == 1.0 for r in cell_rows if r[3] == "loop")  # against the cell's own loop
    reg = {(r[0], r[1]): r for r in (line.split() for line in lines) if "+" in r[0]}
    for mode in ("gru", "lstm"):
        for name in ("plain", "weight-drop", "locked", "zoneout"):
            assert (f"{mode}+{name}", "8x16x32") in reg
        assert float(reg[(f"{mode}+plain", "8x16x32")][5].rstrip("x")) == 1.0
        assert reg[(f"{mode}+zoneout", "8x16x32")][3] == "fused"  # zoneout runs on the fused kernels
    assert "saved_tensors_hooks" in lines[-1]


def test_bf16_rows():
    """--precision bf16: fused and torch.nn under bf16 autocast against torch.nn in fp32, train and forward."""
    lines: list[str] = []
    run(_args("--quick", "--modes", "elman", "--repeats", "1", "--cells", "", "--regularisers", "", "--no-compile",
              "--precision", "bf16"), lines.append)  # fmt: skip
    assert "precision=bf16" in lines[0] and lines[1].startswith("GEMM peak (bfloat16")
    rows = [line.split() for line in lines if line.split()[0] == "elman" and line.split()[2] in ("train", "forward")]
    names = ("nn-fp32", "nn-bf16", "fused-fp32", "fused-bf16")
    for shape in ("8x16x32", "4x8x16"):
        for task in ("train", "forward"):
            got = {r[3]: r for r in rows if r[1] == shape and r[2] == task}
            assert set(got) == set(names)
            assert float(got["nn-fp32"][5].rstrip("x")) == 1.0 and float(got["nn-bf16"][7].rstrip("x")) == 1.0
            for r in got.values():  # ratio = nn fp32 time / this time, up to the printed rounding
                if float(r[4]) >= 0.2:
                    expected = float(got["nn-fp32"][4]) / float(r[4])
                    assert abs(float(r[5].rstrip("x")) - expected) <= 0.06 * expected + 0.01


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS needs Linux /proc")
def test_memory_rows():
    # one shape and no other sections: each peak-RSS figure is a fresh Python process that imports torch (seconds)
    lines: list[str] = []
    run(_args("--shapes", "4x8x16", "--modes", "elman", "--repeats", "1", "--tokens", "5", "--memory", "--no-compile",
              "--cells", "", "--regularisers", ""), lines.append)  # fmt: skip
    rows = [line.split() for line in lines if line.split()[:1] == ["elman"] and line.split()[2] == "peak-RSS"]
    assert {(r[1], r[3]) for r in rows} == {("4x8x16", b) for b in ("torch.nn", "fused", "native")}
    for r in rows:
        assert float(r[4]) >= 0 and float(r[5].rstrip("x")) > 0


@pytest.mark.slow
def test_rss_probe_sees_a_train_steps_memory():
    # each in a fresh process, as bench runs it: in a test worker, memory freed by earlier tests hides the growth
    small, large = peak_rss("gru", (2, 4, 8), "fused"), peak_rss("gru", (16, 128, 256), "fused")
    assert large > small + 5  # 16x128x256: several MiB of states and gate values; a toy step next to none


@pytest.mark.parametrize(("flag", "value"), [("--shapes", "32x128"), ("--modes", "transformer")])
def test_bad_flags_raise_config_error(flag, value):
    with pytest.raises(ConfigError, match=flag):
        run(_args(flag, value), lambda line: None)


@pytest.mark.slow
def test_contention_rows_time_each_setting_idle_and_beside_the_load(capsys):
    from rnnkit.cli import main

    assert main(["bench", "--contention", "--quick", "--load", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "load = 1 process(es) spinning at normal priority" in lines[0]
    rows = {line[:14].strip(): line[14:].split() for line in lines[2:6]}
    assert set(rows) == {"rnnkit auto", "rnnkit all", "torch.nn auto", "torch.nn all"}
    for idle, loaded, ratio, _ in rows.values():
        assert float(idle) > 0 and float(loaded) > 0
        assert float(ratio[:-1]) == pytest.approx(float(loaded) / float(idle), abs=0.01)
    assert rows["torch.nn all"][3] == "1.00x"
