"""Oracle tests for every cell of the table (``rnnkit.cells.CELLS``): a new cell is tested by registering it.

For each cell: its NumPy reference's hand-written backward equals finite differences of its forward; rnnkit's
loop equals the NumPy reference (outputs, states, every gradient); gradcheck passes on every backend; fused equals
loop; chunked-with-state equals one run; masking changes nothing past each length; ``Cell`` and ``RNN.step`` equal
``RNN``'s loop. minGRU/minLSTM's scan equals their step loop and stays finite on long, saturated sequences.
All in float64 on tiny sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from conftest import tol
from rnnkit.backends import available_backends
from rnnkit.cells import CELLS, Cell, LSTMState
from rnnkit.cells import reference as numpy_reference
from rnnkit.recurrent import RNN

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny sizes: threads only stall each other on a shared CPU

NAMES = list(CELLS)
SCAN_NAMES = [name for name in NAMES if CELLS[name].sequence is not None]
NO_TORCH = [name for name in NAMES if CELLS[name].torch_module is None]
F64 = torch.float64
B, T, D, H = 3, 5, 4, 3
LENGTHS = torch.tensor([5, 2, 4])


def _backends(name: str) -> list[str]:
    return [b for b in available_backends(CELLS[name]) if b in ("loop", "fused")]


def _cases(names: list[str], kinds=("loop", "fused")) -> list[tuple[str, str]]:
    return [(name, b) for name in names for b in _backends(name) if b in kinds]


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.6) -> None:
    """Normal parameters (LayerNorm gains and shifts too, so every parameter's gradient path is exercised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def _state(name: str, shape: tuple[int, ...], seed: int):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(shape, generator=g, dtype=F64)
    return LSTMState(h, torch.randn(shape, generator=g, dtype=F64)) if CELLS[name].has_cell else h


def _parts(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def _run(rnn: RNN, backend: str, x: torch.Tensor, state, lengths=None) -> list[torch.Tensor]:
    """Forward and backward of a loss touching every output and final state; returns outputs, final states and
    the gradients of x, the initial states and every parameter."""
    rnn.backend = backend
    rnn.zero_grad()
    x = x.clone().requires_grad_(True)
    parts = [s.clone().requires_grad_(True) for s in _parts(state)]
    arg = LSTMState(*parts) if rnn.spec.has_cell else parts[0]
    y, final = rnn(x, arg, lengths)
    g = torch.Generator().manual_seed(7)
    loss = (y * torch.randn(y.shape, generator=g, dtype=F64)).sum()
    loss = loss + sum((s * torch.randn(s.shape, generator=g, dtype=F64)).sum() for s in _parts(final))
    loss.backward()
    return [y, *_parts(final), x.grad, *(s.grad for s in parts)] + [p.grad.clone() for p in rnn.parameters()]


def _assert_all_close(got: list[torch.Tensor], expected: list[torch.Tensor], **kw) -> None:
    assert len(got) == len(expected)
    for k, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(a, b, **(kw or tol(F64)), msg=lambda m, k=k: f"item {k}: {m}")


# --- the NumPy reference -------------------------------------------------------------------------------------


def _numpy_loss(spec, params, x, state, reverse, wy, wf) -> float:
    ys, final, _ = numpy_reference.forward(spec, params, x, state, reverse)
    return float((wy * ys).sum() + sum((w * s).sum() for w, s in zip(_np_parts(wf), _np_parts(final), strict=True)))


def _np_parts(state) -> list[np.ndarray]:
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_reference_backward_equals_finite_differences(name, reverse):
    spec = CELLS[name]
    rng = np.random.default_rng(0)
    T_, B_, D_, H_ = 3, 2, 3, 2
    params = {kind: rng.normal(size=shape) * 0.7 for kind, shape in spec.parameters(D_, H_).items()}
    x = rng.normal(size=(T_, B_, D_))
    state = tuple(rng.normal(size=(B_, H_)) for _ in range(2)) if spec.has_cell else rng.normal(size=(B_, H_))
    wy = rng.normal(size=(T_, B_, H_))
    wf = tuple(rng.normal(size=(B_, H_)) for _ in range(2)) if spec.has_cell else rng.normal(size=(B_, H_))
    _, _, caches = numpy_reference.forward(spec, params, x, state, reverse)
    grads = numpy_reference.backward(spec, params, caches, wy, wf)
    inputs = dict(params, x=x)
    inputs |= dict(zip(("h0", "c0"), _np_parts(state), strict=False))
    assert set(grads) == set(inputs)
    eps = 1e-6
    for key, a in inputs.items():  # every array is perturbed in place, so params, x and state see the change
        numeric = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            up = _numpy_loss(spec, params, x, state, reverse, wy, wf)
            a[idx] = old - eps
            down = _numpy_loss(spec, params, x, state, reverse, wy, wf)
            a[idx] = old
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grads[key], numeric, rtol=1e-6, atol=1e-7, err_msg=f"{name}: d/d{key}")


@pytest.mark.parametrize("name", NAMES)
def test_loop_equals_numpy_reference(name):
    spec = CELLS[name]
    torch.manual_seed(0)
    rnn = RNN(name, D, H, backend="loop", dtype=F64)
    _randomise(rnn, 1)
    x = torch.randn(B, T, D, dtype=F64)
    state = _state(name, (1, B, H), 2)
    got = _run(rnn, "loop", x, state)

    params = {kind: p.detach().numpy() for kind, p in rnn.layer_params(0).items()}
    xt = x.transpose(0, 1).numpy()  # (T, B, D)
    state0 = tuple(s[0].numpy() for s in state) if spec.has_cell else state[0].numpy()
    ys, final, caches = numpy_reference.forward(spec, params, xt, state0)
    g = torch.Generator().manual_seed(7)  # the loss weights of _run, drawn in the same order
    wy = torch.randn((B, T, H), generator=g, dtype=F64)
    wf = [torch.randn((1, B, H), generator=g, dtype=F64) for _ in _np_parts(final)]
    dfinal = tuple(w[0].numpy() for w in wf) if spec.has_cell else wf[0][0].numpy()
    grads = numpy_reference.backward(spec, params, caches, wy.transpose(0, 1).numpy(), dfinal)

    expected = [np.swapaxes(ys, 0, 1), *(s[None] for s in _np_parts(final)), np.swapaxes(grads["x"], 0, 1)]
    expected += [grads[k][None] for k in ("h0", "c0") if k in grads]
    expected += [grads[kind] for kind in rnn.layer_params(0)]
    _assert_all_close(got, [torch.from_numpy(np.ascontiguousarray(e)) for e in expected])


# --- the torch backends --------------------------------------------------------------------------------------


# the loop's backward is torch's autograd through the step: checked in the slow tier (.ci/run); the fused
# kernels' hand-written backwards in every run of make test
@pytest.mark.parametrize(
    ("name", "backend"), [pytest.param(n, b, marks=[pytest.mark.slow] if b == "loop" else []) for n, b in _cases(NAMES)]
)
def test_gradcheck(name, backend):
    torch.manual_seed(0)
    rnn = RNN(name, 2, 2, num_layers=2, bidirectional=True, backend=backend, dtype=F64)
    names = [n for n, _ in rnn.named_parameters()]
    x = torch.randn(2, 3, 2, dtype=F64, requires_grad=True)
    state = [s.requires_grad_(True) for s in _parts(_state(name, (4, 2, 2), 1))]
    params = [p.detach().clone().requires_grad_(True) for p in rnn.parameters()]
    lengths = torch.tensor([3, 1])

    def f(x, *rest):
        arg = LSTMState(*rest[: len(state)]) if rnn.spec.has_cell else rest[0]
        y, final = functional_call(rnn, dict(zip(names, rest[len(state) :], strict=True)), (x, arg, lengths))
        return y, *_parts(final)

    assert torch.autograd.gradcheck(f, (x, *state, *params))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", [name for name in NAMES if "fused" in _backends(name)])
def test_fused_equals_loop(name, bias):
    torch.manual_seed(0)
    rnn = RNN(name, D, H, num_layers=2, bidirectional=True, bias=bias, dtype=F64)
    _randomise(rnn, 1)
    x = torch.randn(B, T, D, dtype=F64)
    state = _state(name, (4, B, H), 2)
    for lengths in (None, LENGTHS):
        _assert_all_close(_run(rnn, "fused", x, state, lengths), _run(rnn, "loop", x, state, lengths))


@pytest.mark.parametrize("name", SCAN_NAMES)
def test_scan_equals_step_loop(name):
    """The log-space scan is exact arithmetic of the same recurrence: 1e-10 in float64, with gates of all sizes."""
    torch.manual_seed(0)
    rnn = RNN(name, D, H, num_layers=1, bidirectional=True, dtype=F64)
    _randomise(rnn, 1, scale=3.0)  # pre-activations of +-10 and more: g's two branches, nearly shut gates
    x = torch.randn(B, 150, D, dtype=F64)  # three scan chunks (SCAN_CHUNK = 64), the last one partial
    state = _state(name, (2, B, H), 2) * 5  # h0 of either sign and well beyond g's range
    lengths = torch.tensor([150, 70, 1])
    got, expected = _run(rnn, "fused", x, state, lengths), _run(rnn, "loop", x, state, lengths)
    _assert_all_close(got, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("saturate", [0.0, 40.0])
@pytest.mark.parametrize("name", SCAN_NAMES)
def test_scan_is_stable_on_long_sequences(name, saturate):
    """T = 2000, and gates pushed to saturation by biases of +-40: no inf or NaN, forward or backward, and the scan
    still equals the loop (the cancellation in A_t + logcumsumexp grows with |A_t|, hence the looser bound)."""
    torch.manual_seed(0)
    rnn = RNN(name, 2, 2, dtype=F64)
    _randomise(rnn, 1, scale=1.0)
    with torch.no_grad():  # gate biases of +-40, opposite in each gate: one unit never forgets, the other at once
        gates = rnn.bias_ih_l0[:-2].view(-1, 2)  # (G-1, H=2): every gate block but the candidate's
        gates += saturate * torch.tensor([1.0, -1.0], dtype=F64) * torch.tensor([[1.0], [-1.0], [1.0]][: len(gates)])
    x = torch.randn(2, 2000, 2, dtype=F64)
    state = torch.randn(1, 2, 2, dtype=F64)
    got = _run(rnn, "fused", x, state, torch.tensor([2000, 1500]))
    assert all(bool(torch.isfinite(t).all()) for t in got)
    _assert_all_close(got, _run(rnn, "loop", x, state, torch.tensor([2000, 1500])), atol=1e-6, rtol=1e-7)


@pytest.mark.parametrize("name", SCAN_NAMES)
def test_scan_in_float32_stays_close_on_long_sequences(name):
    """The scan's rounding error grows with |A_t|; restarting it every SCAN_CHUNK steps keeps float32 outputs at
    T = 2000 within 5e-5 of the float64 loop (7e-6 measured; 3e-4 in one scan without chunks)."""
    torch.manual_seed(0)
    rnn = RNN(name, 8, 8, backend="loop", dtype=F64)
    x = torch.randn(4, 2000, 8, dtype=F64)
    state = torch.randn(1, 4, 8, dtype=F64)
    rnn32 = RNN(name, 8, 8, backend="fused")
    rnn32.load_state_dict({k: v.float() for k, v in rnn.state_dict().items()})
    with torch.no_grad():
        expected, _ = rnn(x, state)
        got, _ = rnn32(x.float(), state.float())
    assert float((got.double() - expected).abs().max()) < 5e-5


# --- state, masks and single steps ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "backend"), _cases(NAMES))
def test_chunked_with_state_equals_one_run(name, backend):
    torch.manual_seed(0)
    rnn = RNN(name, D, H, num_layers=2, backend=backend, dtype=F64)
    x = torch.randn(B, 7, D, dtype=F64)
    state = _state(name, (2, B, H), 1)
    whole, final = rnn(x, state)
    outputs, s = [], state
    for chunk in x.split([2, 1, 4], dim=1):
        y, s = rnn(chunk, s)
        outputs.append(y)
    _assert_all_close([torch.cat(outputs, dim=1), *_parts(s)], [whole, *_parts(final)])


@pytest.mark.parametrize(("name", "backend"), _cases(NAMES))
def test_padding_changes_nothing(name, backend):
    """Outputs past each length are zero, and what the padding holds changes no output and no final state."""
    torch.manual_seed(0)
    rnn = RNN(name, D, H, num_layers=2, bidirectional=True, backend=backend, dtype=F64)
    x = torch.randn(B, T, D, dtype=F64)
    state = _state(name, (4, B, H), 1)
    y, final = rnn(x, state, LENGTHS)
    pad = torch.arange(T).unsqueeze(0) >= LENGTHS.unsqueeze(1)  # (B, T)
    assert bool((y[pad] == 0).all())
    x2 = torch.where(pad.unsqueeze(-1), torch.randn_like(x) * 100, x)
    y2, final2 = rnn(x2, state, LENGTHS)
    _assert_all_close([y2, *_parts(final2)], [y, *_parts(final)], atol=0.0, rtol=0.0)
    for b in range(B):  # and each row equals that row alone, unpadded
        L = int(LENGTHS[b])
        row = _parts(state)
        row_state = LSTMState(*(s[:, b : b + 1] for s in row)) if rnn.spec.has_cell else row[0][:, b : b + 1]
        y_b, final_b = rnn(x[b : b + 1, :L], row_state)
        _assert_all_close([y_b[0], *(s[:, 0] for s in _parts(final_b))], [y[b, :L], *(s[:, b] for s in _parts(final))])


@pytest.mark.parametrize("name", NAMES)
def test_cell_stepped_by_hand_equals_rnn_loop(name):
    torch.manual_seed(0)
    rnn = RNN(name, D, H, backend="loop", dtype=F64)
    cell = Cell(name, D, H, dtype=F64)
    cell.load_state_dict({kind: p for kind, p in rnn.layer_params(0).items()})
    x = torch.randn(B, T, D, dtype=F64)
    state = _state(name, (1, B, H), 1)
    y, final = rnn(x, state)
    s = LSTMState(state.h[0], state.c[0]) if rnn.spec.has_cell else state[0]
    outputs = []
    for x_t in x.unbind(1):
        y_t, s = cell(x_t, s)
        outputs.append(y_t)
    _assert_all_close([torch.stack(outputs, 1), *(p[None] for p in _parts(s))], [y, *_parts(final)])


@pytest.mark.parametrize(("name", "backend"), _cases(NAMES))
def test_step_equals_forward_on_one_step(name, backend):
    torch.manual_seed(0)
    rnn = RNN(name, D, H, num_layers=2, backend=backend, dtype=F64)
    x_t = torch.randn(B, D, dtype=F64)
    state = _state(name, (2, B, H), 1)
    y, final = rnn(x_t.unsqueeze(1), state)
    y_t, new = rnn.step(x_t, state)
    _assert_all_close([y_t, *_parts(new)], [y[:, 0], *_parts(final)])


@pytest.mark.parametrize("name", NO_TORCH)
def test_to_torch_refuses_a_cell_torch_lacks(name):
    rnn = RNN(name, D, H)
    with pytest.raises(ValueError, match=f"cell '{name}' has no torch.nn equivalent"):
        rnn.to_torch()


@pytest.mark.parametrize("name", NAMES)
def test_every_cell_is_complete(name):
    """What the table promises: a title, equations, a NumPy reference, and parameters that exist."""
    spec = CELLS[name]
    assert spec.title and spec.equations and spec.reference is not None
    shapes = spec.parameters(D, H)
    assert "weight_ih" in shapes
    assert spec.recurrent_weight is None or spec.recurrent_weight in shapes
    assert (spec.recurrent_weight is None) == (spec.sequence is not None)  # only the scan cells lack one
