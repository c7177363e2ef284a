"""The fused kernels in mixed precision (``kernels.fused.product_dtype``, ``kernels.ops.lower``): under bf16
autocast, or with bf16 parameters, every matrix product takes bfloat16 operands and the states, gates and
gradient sums stay in float32.

Oracle: the loop backend in float64 with each product's operands rounded to bf16 (``_rounded_linear``), which is
where the kernels round. bfloat16 keeps 8 significant bits, so rounding moves an operand by at most u = 2^-9 of
itself. What the kernels then do differently is float32 arithmetic (about 1e-7 relative), plus the rare
h_{t-1} that float32 error puts on the other side of a bf16 rounding boundary, which moves that operand by 2u.
Outputs and states: within 8u of the oracle (5 steps, |y| <= 1). Gradients: the kernels also round the gate
gradients before their products (dx, dW and the recurrent product), one more rounding of at most u on each
factor, which the oracle does not make: within 16u relative, on the norm of each gradient. Against plain float32
the error is the products' rounding itself, of order u times the sum of |w x| over a product: a looser bound,
checked on the norm too.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import rnnkit.precision
from rnnkit.cells import LSTMState
from rnnkit.kernels import extension, fused, ops
from rnnkit.kernels.fused import product_dtype
from rnnkit.recurrent import RNN

U = 2.0**-9  # bfloat16's unit roundoff
MODES = ["elman", "lstm", "gru"]
SEEDS = ["elman-io", "i2h"]  # the Elman kernel and one batched product (kernels/seeds.py)
B, T, D, H = 4, 5, 16, 32  # H >= 16: the C++ loops' vectorised rows


@pytest.fixture(autouse=True)
def bf16_cpu(monkeypatch):
    """A CPU with bf16 instructions, whatever this machine has: elsewhere the kernels would run float32 under
    autocast (see test_no_bf16_instructions_means_float32), while the products' arithmetic is the same."""
    monkeypatch.setattr(rnnkit.precision, "bf16_supported", lambda device: True)


class _Round(torch.autograd.Function):
    """x rounded to the nearest bfloat16, in x's dtype; the gradient passes unrounded."""

    @staticmethod
    def forward(ctx, x):
        return x.to(torch.bfloat16).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        return g


def _rounded_linear(linear):
    def rounded(x, w, b=None):
        return linear(_Round.apply(x), _Round.apply(w), b)

    return rounded


def _run(rnn, x, state, lengths, autocast: bool):
    """Outputs, final states and every gradient of a loss touching them all."""
    x = x.clone().requires_grad_(True)
    state = tuple(s.clone().requires_grad_(True) for s in state)
    arg = LSTMState(*state) if rnn.mode == "lstm" else state[0]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, final = rnn(x, arg, lengths)
    finals = tuple(final) if rnn.mode == "lstm" else (final,)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    loss = (out.to(weights.dtype) * weights).sum() + sum((f.float() ** 2).sum() for f in finals)
    rnn.zero_grad(set_to_none=True)
    loss.backward()
    grads = [x.grad, *(s.grad for s in state)] + [p.grad for p in rnn.parameters()]
    return [out, *finals], grads


def _case(mode, bidirectional, seed=0, bias=True):
    torch.manual_seed(seed)
    rnn = RNN(mode, D, H, 2, bidirectional=bidirectional, bias=bias)
    K = 2 if bidirectional else 1
    x = torch.randn(B, T, D)
    state = tuple(0.5 * torch.randn(2 * K, B, H) for _ in range(2 if mode == "lstm" else 1))
    return rnn, x, state


def _oracle(rnn, x, state, lengths, monkeypatch):
    """The loop backend in float64 with every product's operands rounded to bf16."""
    ref = RNN(rnn.mode, D, H, 2, bidirectional=rnn.bidirectional, bias=rnn.bias, dtype=torch.float64, backend="loop")
    ref.load_state_dict({k: v.double() for k, v in rnn.state_dict().items()})
    with monkeypatch.context() as m:
        m.setattr(F, "linear", _rounded_linear(F.linear))
        return _run(ref, x.double(), tuple(s.double() for s in state), lengths, autocast=False)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize(
    ("mode", "bidirectional", "padded"), list(itertools.product(MODES + SEEDS, [False, True], [False, True]))
)
def test_autocast_equals_rounded_oracle(mode, bidirectional, padded, loops, monkeypatch):
    rnn, x, state = _case(mode, bidirectional)
    rnn.backend = "fused"
    lengths = torch.tensor([5, 2, 4, 1]) if padded else None
    ref_out, ref_grads = _oracle(rnn, x, state, lengths, monkeypatch)
    out, grads = _run(rnn, x, state, lengths, autocast=True)
    for a, b in zip(out, ref_out, strict=True):
        assert a.dtype == torch.float32  # states and outputs stay float32 under autocast
        assert (a.double() - b).abs().max().item() <= 8 * U
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.dtype == torch.float32  # fp32 master weights get fp32 gradients
        assert _rel(g, r) <= 16 * U
    if padded:  # nothing leaks past a row's length
        assert out[0][3, 1:].abs().max() == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [True, False])
def test_autocast_close_to_float32(mode, bias, loops):
    rnn, x, state = _case(mode, bidirectional=False, bias=bias)
    rnn.backend = "fused"
    ref_out, ref_grads = _run(rnn, x, state, None, autocast=False)
    out, grads = _run(rnn, x, state, None, autocast=True)
    for a, b in zip(out + grads, ref_out + ref_grads, strict=True):
        assert _rel(a, b) <= 32 * U  # the products' own rounding, about u * sum |w x| per pre-activation


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_zoneout_under_autocast_close_to_float32(mode, training, loops):
    """Zoneout's masks are drawn in the states' dtype, float32 under autocast, so one seed zones the same units as
    in a float32 run (training), and its weights are widened to float32 (evaluation; the Elman kernel then keeps
    act' in bf16 for the backward); what differs is the products' rounding."""
    rnn, x, state = _case(mode, bidirectional=True)
    rnn.zoneout, rnn.backend = (0.3, 0.6), "fused"
    rnn.train(training)
    torch.manual_seed(9)
    ref_out, ref_grads = _run(rnn, x, state, None, autocast=False)
    torch.manual_seed(9)
    out, grads = _run(rnn, x, state, None, autocast=True)
    for a, b in zip(out + grads, ref_out + ref_grads, strict=True):
        assert _rel(a, b) <= 32 * U


@pytest.mark.parametrize("mode", MODES)
def test_bf16_parameters_run_mixed_and_return_bf16(mode, loops, monkeypatch):
    """A model cast to bf16 runs the same mixed kernels: fp32 inside, its outputs and gradients in bf16."""
    rnn, x, state = _case(mode, bidirectional=False)
    ref_out, ref_grads = _oracle(rnn, x, state, None, monkeypatch)
    low = rnn.to(torch.bfloat16)
    low.backend = "fused"
    out, grads = _run(low, x.bfloat16(), tuple(s.bfloat16() for s in state), None, autocast=False)
    for a, b in zip(out, ref_out, strict=True):
        assert a.dtype == torch.bfloat16
        assert (a.double() - b).abs().max().item() <= 8 * U + 2 * U  # and one rounding of the result
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.dtype == torch.bfloat16
        assert _rel(g, r) <= 24 * U


def test_product_dtype():
    x, w = torch.randn(2, 3), {"weight_ih": torch.randn(3, 3), "bias_ih": None}
    assert product_dtype(x, w) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert product_dtype(x, w) == torch.bfloat16
        assert product_dtype(x.double(), w) is None  # float64 is never lowered
    assert product_dtype(x, {"weight_ih": w["weight_ih"].bfloat16()}) == torch.bfloat16
    assert product_dtype(x.bfloat16(), w) == torch.bfloat16


def test_no_bf16_instructions_means_float32(monkeypatch, caplog):
    """On a CPU without bf16 instructions, autocast leaves the fused kernels in float32, said in one log line."""
    monkeypatch.setattr(rnnkit.precision, "bf16_supported", lambda device: False)
    monkeypatch.setattr(fused, "_warned", [])
    x, w = torch.randn(2, 3), {"weight_ih": torch.randn(3, 3)}
    rnn, xs, _ = _case("gru", bidirectional=False)
    rnn.backend = "fused"
    ref, _ = rnn(xs)
    with caplog.at_level("WARNING", logger="rnnkit.kernels.fused"), torch.autocast("cpu", dtype=torch.bfloat16):
        assert product_dtype(x, w) is None
        out, _ = rnn(xs)
        rnn(xs)
    assert torch.equal(out, ref)
    assert len([r for r in caplog.records if "without avx512_bf16" in r.getMessage()]) == 1


@pytest.mark.parametrize("mode", ["layernorm-lstm", "layernorm-gru", "mingru", "minlstm"])
def test_cells_without_bf16_kernels_run_float32_under_autocast(mode):
    """The LayerNorm kernels keep float32 under autocast, and the minGRU/minLSTM scan keeps its log-space
    arithmetic in float32 (its one input product is autocast's, in bf16: about u of error, where a bf16 scan
    was off by 0.045 relative)."""
    torch.manual_seed(0)
    rnn = RNN(mode, D, H, 2, backend="fused")
    x = torch.randn(B, T, D)
    ref, _ = rnn(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = rnn(x)
    assert out.dtype == torch.float32
    tol = 1e-6 if mode.startswith("layernorm") else 4 * U
    assert _rel(out, ref) <= tol


def test_cpp_casts_equal_torch():
    """csrc/precision.h's casts round as torch does (to nearest, ties to even), widen exactly, and bias sums of
    bf16 gradients accumulate in float32."""
    if extension.ops() is None:
        pytest.skip("the C++ loops are not built here")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 257, generator=g) * torch.logspace(-30, 30, 257)
    ties = (torch.randint(0, 2**15, (1000,), generator=g, dtype=torch.int32) << 16) | 0x8000  # exactly halfway
    ties = ties.view(torch.float32)  # and some NaNs among them
    for t in (x, ties.view(1, -1)):
        with extension.use_extension(True):
            low = ops.narrow(t, torch.bfloat16)
        ref = t.to(torch.bfloat16)
        nan = ref.isnan()
        assert torch.equal(low.isnan(), nan)  # a NaN stays a NaN, whatever its bits
        assert torch.equal(low.view(torch.int16)[~nan], ref.view(torch.int16)[~nan])
    y = x.to(torch.bfloat16)
    b = torch.randn(257, generator=g)
    with extension.use_extension(True):
        assert torch.equal(ops.widen(y, None, torch.float32), y.float())
        assert torch.equal(ops.widen(y, b, torch.float32), y.float() + b)
        out = torch.empty(300, 300)[:, :257]  # rows contiguous, not the whole tensor
        ops.widen(y, b, torch.float32, out=out)
        assert torch.equal(out, y.float() + b)
        acc = torch.randn(300, 257, generator=g)
        expected = acc + y.float()
        assert torch.equal(ops.accumulate(acc, y), expected)
        sums = ops.column_sums(y[:, :200], torch.float32)  # a column slice: rows contiguous, strided
        torch.testing.assert_close(sums, y[:, :200].double().sum(0).float(), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [1, 8])  # the C++ step and the torch step
def test_generation_step_under_autocast_runs_in_the_parameters_precision(mode, batch, loops):
    """RNN.step under bf16 autocast (``rnnkit sample`` of a bf16 run) equals the float32 step, state and all."""
    torch.manual_seed(0)
    rnn = RNN(mode, D, H, 2)
    x = torch.randn(batch, D)
    with torch.no_grad():
        y, state = rnn.step(x)
        y, state = rnn.step(x, state)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_ac, state_ac = rnn.step(x)
            y_ac, state_ac = rnn.step(x, state_ac)
    assert torch.equal(y_ac, y)
    for a, b in zip(state_ac if mode == "lstm" else [state_ac], state if mode == "lstm" else [state], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_generation_after_a_forward_under_autocast(mode, loops):
    """rnnkit sample's path: the prompt through a forward under autocast (native: oneDNN's bf16 LSTM, whose state
    comes back in bf16), then steps: they run in the parameters' precision whatever the state's dtype."""
    if mode == "lstm" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN's bf16 LSTM needs AVX-512 (torch.nn raises on this CPU)")
    torch.manual_seed(0)
    rnn = RNN(mode, D, H, 2, backend="native")
    prompt, x = torch.randn(1, 3, D), torch.randn(1, D)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = rnn(prompt)
        y, state = rnn.step(x, state)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    for s in state if mode == "lstm" else [state]:
        assert s.dtype == torch.float32
