"""Gradient-flow diagnostic: hand-computed chain rule, autograd oracles, Elman vs LSTM, and the PNG."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

import rnnkit
from rnnkit.cells import LSTMState
from rnnkit.diagnostics import compare_gradient_flow, gradient_flow, plot_gradient_flow, summary

MODES = ("elman", "lstm", "gru")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_one_unit_elman_by_hand():
    """h_t = tanh(w h_{t-1} + u x_t + b), L = h_{T-1}: dL/dh_t = dL/dh_{t+1} * (1 - h_{t+1}^2) * w."""
    w, u, b = 0.9, 0.5, 0.1
    xs = [0.3, -1.0, 0.7, 2.0, -0.4]
    rnn = rnnkit.RNN("elman", 1, 1, backend="loop", dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_hh_l0.fill_(w)
        rnn.weight_ih_l0.fill_(u)
        rnn.bias_ih_l0.fill_(b)
        rnn.bias_hh_l0.fill_(0.0)
    hs, h = [], 0.0
    for x in xs:
        h = math.tanh(w * h + u * x + b)
        hs.append(h)
    expected = [1.0]
    for t in reversed(range(len(xs) - 1)):
        expected.insert(0, expected[0] * (1 - hs[t + 1] ** 2) * w)
    curve = gradient_flow(rnn, torch.tensor(xs, dtype=torch.float64).reshape(1, -1, 1))
    np.testing.assert_allclose(curve.numpy(), np.abs(expected), rtol=1e-13)


def test_two_unit_elman_by_hand():
    """g_t = W_hh^T ((1 - h_{t+1}^2) * g_{t+1}) for a 2-unit net, batch of 2, L = h_{T-1} . v."""
    rng = np.random.default_rng(0)
    W_hh, W_ih = rng.normal(size=(2, 2)), rng.normal(size=(2, 3))
    b = rng.normal(size=2)
    x = rng.normal(size=(2, 6, 3))  # (B, T, D)
    h0 = rng.normal(size=(2, 2))
    v = np.array([0.7, -1.3])
    rnn = rnnkit.RNN("elman", 3, 2, backend="loop", dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(torch.from_numpy(W_hh))
        rnn.weight_ih_l0.copy_(torch.from_numpy(W_ih))
        rnn.bias_ih_l0.copy_(torch.from_numpy(b))
        rnn.bias_hh_l0.zero_()
    hs, h = [], h0
    for t in range(6):
        h = np.tanh(h @ W_hh.T + x[:, t] @ W_ih.T + b)  # (B, 2)
        hs.append(h)
    g = np.tile(v, (2, 1))  # dL/dh_{T-1}, (B, 2)
    expected = [np.linalg.norm(g)]
    for t in reversed(range(5)):
        g = ((1 - hs[t + 1] ** 2) * g) @ W_hh  # (B, 2)
        expected.insert(0, np.linalg.norm(g))
    vt = torch.from_numpy(v)
    curve = gradient_flow(rnn, torch.from_numpy(x), torch.from_numpy(h0)[None], loss_fn=lambda h: (h @ vt).sum())
    np.testing.assert_allclose(curve.numpy(), expected, rtol=1e-12)


def _rnn(mode: str, seed: int, **kw) -> rnnkit.RNN:
    torch.manual_seed(seed)
    return rnnkit.RNN(mode, 3, 5, dtype=torch.float64, **kw)


@pytest.mark.parametrize("mode", MODES)
def test_curve_equals_split_runs(mode):
    """Oracle: dL/dh_t from a second run that starts at a detached h_t leaf (native backend, c_t held fixed)."""
    torch.manual_seed(1)
    rnn = _rnn(mode, seed=1, backend="native")
    head = torch.nn.Linear(5, 4, dtype=torch.float64)
    target = torch.tensor([0, 3])

    def loss_fn(h):  # (B, H) -> scalar
        return F.cross_entropy(head(h), target)

    x = torch.randn(2, 6, 3, dtype=torch.float64)  # (B, T, D)
    curve = gradient_flow(rnn, x, loss_fn=loss_fn)
    for t in range(6):
        _, state = rnn(x[:, : t + 1])
        if mode == "lstm":
            h = state.h.detach().requires_grad_()
            rest = LSTMState(h, state.c.detach())
        else:
            h = rest = state.detach().requires_grad_()
        last = rnn(x[:, t + 1 :], rest)[0][:, -1] if t < 5 else h[0]  # h_{T-1} (B, H)
        (g,) = torch.autograd.grad(loss_fn(last), h)
        assert curve[t].item() == pytest.approx(g.norm().item(), rel=1e-12, abs=1e-300), (mode, t)


@pytest.mark.parametrize("mode", MODES)
def test_last_step_equals_autograd_and_layouts_agree(mode):
    rnn = _rnn(mode, seed=2, backend="loop")
    x = torch.randn(3, 7, 3, dtype=torch.float64)  # (B, T, D)
    loss_fn = lambda h: (h**2).sum() / 2  # noqa: E731  dL/dh_{T-1} = h_{T-1}
    curve = gradient_flow(rnn, x, loss_fn=loss_fn)
    out, _ = rnn(x)  # (B, T, H)
    (g,) = torch.autograd.grad(loss_fn(out[:, -1]), out)
    assert curve.shape == (7,)
    assert curve[-1].item() == pytest.approx(g[:, -1].norm().item(), rel=1e-13)
    assert curve[-1].item() == pytest.approx(out[:, -1].norm().item(), rel=1e-13)

    time_major = _rnn(mode, seed=2, backend="loop", batch_first=False)
    torch.testing.assert_close(gradient_flow(time_major, x.transpose(0, 1), loss_fn=loss_fn), curve, rtol=0, atol=0)
    for p in rnn.parameters():  # frozen weights still give a curve
        p.requires_grad_(False)
    torch.testing.assert_close(gradient_flow(rnn, x, loss_fn=loss_fn), curve, rtol=0, atol=0)


def test_float32_curve_keeps_tiny_norms():
    """Gradients of ~1e-25 in float32 are representable; their norm must not underflow by squaring in float32."""
    torch.manual_seed(0)
    rnn = rnnkit.RNN("elman", 16, 64, backend="loop", dtype=torch.float64)
    x = torch.randn(8, 100, 16, dtype=torch.float64)
    c64 = gradient_flow(rnn, x)
    c32 = gradient_flow(rnn.float(), x.float())
    assert c64[0] < 1e-20 and c32.dtype == torch.float64
    torch.testing.assert_close(c32, c64, rtol=1e-4, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elman_vanishes_far_faster_than_lstm(seed):
    """T=100, H=64, torch's default init, LSTM forget bias 1. Seen over seeds 0-5: Elman ~1e-28..1e-25,
    LSTM ~1e-9..1e-7, GRU ~1e-21..1e-19; the assertion leaves many orders of magnitude of margin."""
    curves = compare_gradient_flow(seq_len=100, hidden_size=64, seed=seed)
    ratios = summary(curves)
    assert set(ratios) == set(MODES)
    assert all(c.shape == (100,) for c in curves.values())
    assert ratios["elman"] < 1e-6 * ratios["lstm"]
    assert ratios["elman"] < ratios["gru"] < ratios["lstm"] < 1.0


def test_plot_writes_png_and_replaces_only_after_success(tmp_path, monkeypatch):
    curves = {"elman": torch.tensor([1e-6, 1e-3, 1.0]), "lstm": torch.tensor([0.1, 0.5, 1.0])}
    path = tmp_path / "flow.png"
    path.write_bytes(b"old plot")

    def broken_savefig(self, *args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(Figure, "savefig", broken_savefig)
        with pytest.raises(OSError, match="disk full"):
            plot_gradient_flow(curves, path)
    assert path.read_bytes() == b"old plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.png"]  # no temporary file left behind

    assert plot_gradient_flow(curves, path) == path
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.png"]


def test_summary():
    ratios = summary({"a": torch.tensor([2.0, 4.0, 8.0]), "b": torch.tensor([3.0])})
    assert ratios == {"a": 0.25, "b": 1.0}


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: gradient_flow(torch.nn.RNN(3, 5), torch.zeros(1, 2, 3)), TypeError, "rnn must be an rnnkit.RNN"),
        (
            lambda: gradient_flow(_rnn("gru", 0), torch.zeros(1, 2, 4)),
            ValueError,
            r"x must .*D=input_size=3.*\(1, 2, 4\)",
        ),
        (
            lambda: gradient_flow(_rnn("gru", 0), torch.zeros(1, 2, 3, dtype=torch.float64), loss_fn=lambda h: h),
            ValueError,
            "scalar",
        ),
        (lambda: gradient_flow(_rnn("gru", 0), torch.zeros(1, 0, 3)), ValueError, "at least one time step, got T=0"),
        (lambda: summary({}), ValueError, "curves must be a non-empty dict"),
        (lambda: summary({"elman": torch.zeros(2, 2)}), ValueError, r"curves\['elman'\] must be .* got \(2, 2\)"),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --- stacked and bidirectional, and trained runs -----------------------------------------------------------------


def _positive_relu_rnn(num_layers: int, bidirectional: bool, H: int = 3) -> rnnkit.RNN:
    """A relu Elman RNN with positive weights and no bias: on positive inputs relu is the identity, so each layer
    is the linear recurrence h_t = W h_{t-1} + U x_t, whose gradient through k steps is (W^T)^k."""
    rnn = rnnkit.RNN("elman", 2, H, num_layers, bidirectional=bidirectional, nonlinearity="relu", bias=False,
                     dtype=torch.float64)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in rnn.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) * 0.4 + 0.1)
    return rnn


def test_stacked_linear_recurrence_by_hand():
    """Two layers, L = sum(h1_{T-1}): g1_t = (W1^T)^(T-1-t) 1 and g0_t = U1^T g1_t + W0^T g0_{t+1}."""
    T = 6
    rnn = _positive_relu_rnn(2, False)
    x = torch.rand(1, T, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1
    W0, W1, U1 = (getattr(rnn, n).detach().numpy() for n in ("weight_hh_l0", "weight_hh_l1", "weight_ih_l1"))
    g1 = [np.linalg.matrix_power(W1.T, T - 1 - t) @ np.ones(3) for t in range(T)]
    g0 = [None] * T
    g0[T - 1] = U1.T @ g1[T - 1]
    for t in reversed(range(T - 1)):
        g0[t] = U1.T @ g1[t] + W0.T @ g0[t + 1]
    flow = gradient_flow(rnn, x)
    assert flow.shape == (2, T)
    np.testing.assert_allclose(flow[1].numpy(), [np.linalg.norm(g) for g in g1], rtol=1e-12)
    np.testing.assert_allclose(flow[0].numpy(), [np.linalg.norm(g) for g in g0], rtol=1e-12)


def test_bidirectional_linear_recurrence_by_hand():
    """One bidirectional layer, L = sum of both final states: the forward direction's gradient is (W^T)^(T-1-t) 1,
    the reverse direction's (final state at t=0) (W_r^T)^t 1; a row shorter than T freezes past its length."""
    T = 5
    rnn = _positive_relu_rnn(1, True)
    x = torch.rand(1, T, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.1
    W, Wr = rnn.weight_hh_l0.detach().numpy(), rnn.weight_hh_l0_reverse.detach().numpy()
    flow = gradient_flow(rnn, x)
    forward = [np.linalg.norm(np.linalg.matrix_power(W.T, T - 1 - t) @ np.ones(3)) for t in range(T)]
    reverse = [np.linalg.norm(np.linalg.matrix_power(Wr.T, t) @ np.ones(3)) for t in range(T)]
    np.testing.assert_allclose(flow.numpy(), [forward, reverse], rtol=1e-12)
    assert summary({"layer 0 reverse": flow[1]})["layer 0 reverse"] == pytest.approx(reverse[-1] / reverse[0])
    short = gradient_flow(rnn, x, lengths=torch.tensor([3]))  # steps 3 and 4 are padding: no gradient reaches them
    assert (short[:, 3:] == 0).all() and (short[:, :3] > 0).all()


@pytest.mark.parametrize("mode", list(rnnkit.cells.CELLS))
def test_every_cell_stacked_and_bidirectional_equals_autograd_through_the_states(mode):
    """Per layer and direction, the curve is ||dL/dh_t|| of autograd through the RNN's own forward: checked on the
    last step of each direction (dL/dh_n of the final state) and the shape for every cell of the table."""
    torch.manual_seed(0)
    rnn = rnnkit.RNN(mode, 3, 4, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    flow = gradient_flow(rnn, x)
    assert flow.shape == (4, 5) and torch.isfinite(flow).all() and (flow > 0).any(dim=1).all()
    # the top layer's final states are the loss's own inputs: their gradient is all ones, norm sqrt(B * H)
    assert flow[2, -1].item() == pytest.approx(math.sqrt(8)) and flow[3, 0].item() == pytest.approx(math.sqrt(8))


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tiny trained run of each task: a 2-layer LM, a bidirectional text classifier, a minGRU seq2seq (its
    bidirectional encoder is its one rnnkit.RNN) and a 2-layer forecaster."""
    from rnnkit.cli import main

    root = tmp_path_factory.mktemp("gradflow-runs")
    (root / "text.txt").write_text("the cat sat on the mat. " * 60)
    (root / "labelled.tsv").write_text("".join(f"{'ab' * (i % 3 + 1)}{'c' * (i % 2)}\t{i % 2}\n" for i in range(40)))
    common = ["--max-minutes", "0", "--max-steps", "2", "--hidden-size", "6", "--no-plots"]
    (root / "pairs.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in ("abc", "bca", "cab", "abcd", "bd") * 4))
    rows = [f"s{i},{t},{10 + math.sin(t / 2 + i):.4f}" for i in range(3) for t in range(30)]
    (root / "series.csv").write_text("id,time,value\n" + "\n".join(rows) + "\n")
    runs = {task: root / task for task in ("lm", "classify", "seq2seq", "forecast")}
    argv = {"lm": ["train", "lm", "--data", str(root / "text.txt"), "--num-layers", "2", "--mode", "lstm",
                   "--bptt", "8", "--batch-size", "4", "--precision", "fp32", "--embedding-size", "4"],
            "classify": ["train", "classify", "--data", str(root / "labelled.tsv"), "--mode", "gru",
                         "--embedding-size", "4"],
            "seq2seq": ["train", "seq2seq", "--data", str(root / "pairs.tsv"), "--mode", "mingru",
                        "--embedding-size", "4"],
            "forecast": ["train", "forecast", "--data", str(root / "series.csv"), "--horizon", "2", "--num-layers",
                         "2", "--num-samples", "4", "--eval-samples", "4"]}  # fmt: skip
    for task, args in argv.items():
        assert main([*args, *common, "--out", str(runs[task])]) == 0
    return runs


GRADFLOW_RUNS = [("lm", ["layer 0", "layer 1"]), ("classify", ["layer 0", "layer 0 reverse"]),
                 ("seq2seq", ["encoder layer 0", "encoder layer 0 reverse", "decoder layer 0"]),
                 ("forecast", ["layer 0", "layer 1"])]  # fmt: skip


@pytest.mark.parametrize(("task", "names"), GRADFLOW_RUNS)
def test_gradflow_of_a_trained_run(task, names, tiny_runs, tmp_path, capsys):
    from rnnkit.checkpoint import load_run
    from rnnkit.cli import main
    from rnnkit.diagnostics import model_gradient_flow

    out = tmp_path / "flow.png"
    capsys.readouterr()
    assert main(["gradflow", "--run", str(tiny_runs[task]), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:-1] for line in lines[1:-1]] == [n.split() for n in names]
    assert all(float(line.split()[-1]) > 0 for line in lines[1:-1]) and out.read_bytes().startswith(PNG_MAGIC)
    # the same curves in Python: the run's loss on its validation batch, one curve per layer and direction
    run = load_run(tiny_runs[task])
    run.task.prepare(run.task.artefacts())
    batch = run.task.validation_batch()
    curves = model_gradient_flow(run.model, lambda m: run.task.loss(m, batch, None, torch.device("cpu"))[0])
    # one point per time step the network saw (a forecast batch is a dict of windows: context + horizon steps)
    T = batch[0].size(1) if isinstance(batch, tuple) else run.task.context + run.task.horizon
    assert list(curves) == names and all((c > 0).any() for c in curves.values())
    # the seq2seq decoder runs over the target (its own length); every other curve over the input
    assert all(c.shape == (T,) for name, c in curves.items() if not name.startswith("decoder"))


def test_gradflow_cli_modes_layers_directions(tmp_path, capsys):
    from rnnkit.cli import main

    capsys.readouterr()
    argv = ["gradflow", "--mode", "mingru", "lstm", "--num-layers", "2", "--bidirectional", "--seq-len", "6",
            "--hidden-size", "4", "--out", str(tmp_path / "f.png")]  # fmt: skip
    assert main(argv) == 0
    names = [" ".join(line.split()[:-1]) for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert names == [f"{m} layer {k}{r}" for m in ("mingru", "lstm") for k in (0, 1) for r in ("", " reverse")]
