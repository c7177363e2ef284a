"""The NumPy BPTT reference: finite differences, and equality with autograd through rnnkit's torch modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rnnkit
from rnnkit import reference

MODES = ("elman", "lstm", "gru")
T, B, D, H, V = 5, 3, 4, 6, 7


def make_problem(mode: str, seed: int):
    rng = np.random.default_rng(seed)
    params = reference.init_params(mode, D, H, V, rng)
    x = rng.standard_normal((T, B, D))
    h0 = rng.standard_normal((B, H)) * 0.5
    state = (h0, rng.standard_normal((B, H)) * 0.5) if mode == "lstm" else h0
    targets = rng.integers(0, V, size=(T, B))
    return params, x, state, targets


def inputs_of(mode, params, x, state):
    """Every differentiable array by its gradient name (the arrays themselves, so edits show in the loss)."""
    arrays = dict(params) | {"x": x}
    if mode == "lstm":
        arrays |= {"h0": state[0], "c0": state[1]}
    else:
        arrays |= {"h0": state}
    return arrays


@pytest.mark.parametrize("mode", MODES)
def test_finite_differences(mode):
    params, x, state, targets = make_problem(mode, seed=1)
    _, grads = reference.loss_and_grads(mode, params, x, state, targets)
    arrays = inputs_of(mode, params, x, state)
    assert set(grads) == set(arrays)
    rng = np.random.default_rng(2)
    eps = 1e-5
    for name, a in arrays.items():
        assert grads[name].shape == a.shape, name
        for flat in rng.choice(a.size, size=min(6, a.size), replace=False):
            idx = np.unravel_index(flat, a.shape)
            old = a[idx]
            a[idx] = old + eps
            plus, _ = reference.forward(mode, params, x, state, targets)
            a[idx] = old - eps
            minus, _ = reference.forward(mode, params, x, state, targets)
            a[idx] = old
            numeric = (plus - minus) / (2 * eps)
            analytic = grads[name][idx]
            rel = abs(numeric - analytic) / max(abs(numeric) + abs(analytic), 1e-8)
            assert rel < 1e-6, f"{mode} {name}{idx}: numeric {numeric}, analytic {analytic}, rel {rel}"


@pytest.mark.parametrize("backend", ["loop", "native", "fused"])
@pytest.mark.parametrize("mode", MODES)
def test_equals_autograd_through_rnnkit(mode, backend):
    params, x, state, targets = make_problem(mode, seed=3)
    loss, grads = reference.loss_and_grads(mode, params, x, state, targets)

    rnn = rnnkit.RNN(mode, D, H, batch_first=False, backend=backend, dtype=torch.float64)
    head = torch.nn.Linear(H, V, dtype=torch.float64)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(rnn, f"{name}_l0").copy_(torch.from_numpy(params[name]))
        head.weight.copy_(torch.from_numpy(params["weight_hy"]))
        head.bias.copy_(torch.from_numpy(params["bias_y"]))
    xt = torch.from_numpy(x).requires_grad_()
    if mode == "lstm":
        h0, c0 = (torch.from_numpy(s)[None].requires_grad_() for s in state)  # (1, B, H)
        leaves = {"x": xt, "h0": h0, "c0": c0}
        out, _ = rnn(xt, (h0, c0))
    else:
        h0 = torch.from_numpy(state)[None].requires_grad_()
        leaves = {"x": xt, "h0": h0}
        out, _ = rnn(xt, h0)  # (T, B, H)
    logits = head(out)  # (T, B, V)
    t_loss = F.cross_entropy(logits.reshape(T * B, V), torch.from_numpy(targets).reshape(T * B), reduction="sum")
    t_loss.backward()

    assert abs(t_loss.item() - loss) < 1e-10 * max(1.0, abs(loss))
    torch_grads = {name: getattr(rnn, f"{name}_l0").grad for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    torch_grads |= {"weight_hy": head.weight.grad, "bias_y": head.bias.grad}
    torch_grads |= {name: leaf.grad.reshape(grads[name].shape) for name, leaf in leaves.items()}
    assert set(torch_grads) == set(grads)
    for name, g in torch_grads.items():
        np.testing.assert_allclose(grads[name], g.numpy(), rtol=0, atol=1e-10, err_msg=f"{mode} {name}")


@pytest.mark.parametrize("mode", MODES)
def test_step_matches_forward_and_rnnkit_step(mode):
    params, x, state, targets = make_problem(mode, seed=4)
    _, cache = reference.forward(mode, params, x, state, targets)
    s = state
    rnn = rnnkit.RNN(mode, D, H, backend="loop", dtype=torch.float64)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(rnn, f"{name}_l0").copy_(torch.from_numpy(params[name]))
    ts = tuple(torch.from_numpy(a)[None] for a in state) if mode == "lstm" else torch.from_numpy(state)[None]
    for t in range(T):
        h, s = reference.step(mode, params, x[t], s)
        np.testing.assert_array_equal(h, cache["steps"][t]["h"])
        with torch.no_grad():
            th, ts = rnn.step(torch.from_numpy(x[t]), ts)
        np.testing.assert_allclose(h, th.numpy(), rtol=0, atol=1e-12)
    assert reference.output(params, h).shape == (B, V)


def test_zero_state_is_default():
    params, x, _, targets = make_problem("gru", seed=5)
    loss_none, _ = reference.forward("gru", params, x, None, targets)
    loss_zero, _ = reference.forward("gru", params, x, np.zeros((B, H)), targets)
    assert loss_none == loss_zero


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p, x, y: reference.forward("tanh", p, x, None, y), r"mode must be one of .* got 'tanh'"),
        (lambda p, x, y: reference.forward("gru", p, x[0], None, y), r"x must have shape \(T, B, D=4\), got \(3, 4\)"),
        (lambda p, x, y: reference.forward("gru", p, x, None, y[:, :2]), r"targets must have shape \(T, B\)"),
        (
            lambda p, x, y: reference.forward("lstm", p, x, None, y),
            r"params\['weight_hh'\] must be \(G\*H, H\) with G=4",
        ),
        (lambda p, x, y: reference.step("gru", p, x[0, :, :2], None), r"x_t must have shape \(B, D=4\), got \(3, 2\)"),
        (lambda p, x, y: reference.forward("gru", {}, x, None, y), r"params must have keys .* missing"),
    ],
)
def test_errors(call, match):
    params, x, _, targets = make_problem("gru", seed=6)
    with pytest.raises(ValueError, match=match):
        call(params, x, targets)
