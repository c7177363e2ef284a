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
        (lambda: gradient_flow(_rnn("gru", 0, num_layers=2), torch.zeros(1, 2, 3)), ValueError, "num_layers=2"),
        (lambda: gradient_flow(_rnn("gru", 0, bidirectional=True), torch.zeros(1, 2, 3)), ValueError, "bidirectional"),
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
