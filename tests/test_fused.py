"""The "fused" backend (hand-written BPTT) equals the "loop" reference; fast_step equals a length-1 forward."""

from __future__ import annotations

import itertools

import pytest
import torch

from rnnkit import backends
from rnnkit.cells import LSTMState
from rnnkit.kernels import extension, fast_step, ops
from rnnkit.kernels.elman import ElmanFunction
from rnnkit.kernels.gru import GRUFunction
from rnnkit.kernels.lstm import LSTMFunction
from rnnkit.kernels.step import CPP_STEP_MAX_BATCH, torch_step
from rnnkit.recurrent import RNN

MODES = ["elman", "lstm", "gru"]
B, T, D, H = 3, 5, 4, 3
LENGTHS = torch.tensor([5, 2, 4])


def auto_backend(rnn: RNN, x: torch.Tensor) -> str:
    """``backends.auto_backend`` on the plan and the parameters of ``rnn``."""
    return backends.auto_backend(rnn.plan(), x, rnn.forward_weights())


def _run(rnn: RNN, backend: str, x, state, lengths):
    """Forward and backward of a loss touching every output; returns outputs, final states and all grads."""
    rnn.backend = backend
    x = x.clone().requires_grad_(True)
    state = None if state is None else tuple(s.clone().requires_grad_(True) for s in state)
    arg = None if state is None else LSTMState(*state) if rnn.mode == "lstm" else state[0]
    out, final = rnn(x, arg, lengths)
    finals = tuple(final) if rnn.mode == "lstm" else (final,)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    loss = (out * weights).sum() + sum((f * f).sum() for f in finals)
    rnn.zero_grad(set_to_none=True)
    loss.backward()
    grads = [x.grad, *(s.grad for s in state or ())] + [p.grad for p in rnn.parameters()]
    return [out, *finals], grads


CASES = list(itertools.product(MODES, [1, 2], [False, True], [False, True], [torch.float64, torch.float32]))


@pytest.mark.parametrize(("mode", "layers", "bidirectional", "padded", "dtype"), CASES)
def test_fused_equals_loop(mode, layers, bidirectional, padded, dtype, loops):
    torch.manual_seed(0)
    K = 2 if bidirectional else 1
    for bias, with_state in [(True, False), (False, True)]:
        rnn = RNN(mode, D, H, layers, bias=bias, bidirectional=bidirectional, dtype=dtype)
        x = torch.randn(B, T, D, dtype=dtype)
        n_state = 2 if mode == "lstm" else 1
        state = tuple(torch.randn(layers * K, B, H, dtype=dtype) for _ in range(n_state)) if with_state else None
        lengths = LENGTHS if padded else None
        ref_out, ref_grads = _run(rnn, "loop", x, state, lengths)
        out, grads = _run(rnn, "fused", x, state, lengths)
        tol = {"atol": 1e-10, "rtol": 1e-9} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}
        for a, b in zip(ref_out + ref_grads, out + grads, strict=True):
            torch.testing.assert_close(b, a, **tol)
        if padded:  # nothing leaks past a row's length
            assert out[0][1, 2:].abs().max() == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("slice_steps", [1, 2])
def test_backward_in_time_slices_equals_loop(mode, bidirectional, slice_steps, monkeypatch):
    """The C++ backward carries the gradient from slice to slice of the time axis (ops.backward_slices); with
    slices of 1 and 2 steps (T = 5: uneven), outputs and every gradient equal the "loop" reference."""
    if not extension.available():
        pytest.skip("the C++ loops are off")
    monkeypatch.setattr(ops, "SLICE_ROWS", slice_steps * B)
    torch.manual_seed(0)
    rnn = RNN(mode, D, H, 2, bidirectional=bidirectional, dtype=torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64)
    assert len(ops.backward_slices(T, B, False)) == -(-T // slice_steps)
    ref_out, ref_grads = _run(rnn, "loop", x, None, LENGTHS)
    out, grads = _run(rnn, "fused", x, None, LENGTHS)
    for a, b in zip(ref_out + ref_grads, out + grads, strict=True):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_rows_split_over_threads_equal_loop(mode):
    """A step wide enough that the C++ loops split its rows over threads (row_grain in recurrence.cpp: B * G*H
    of 2 x 16384 or more values), with H = 200 (not a multiple of the vector width) and lengths."""
    if not extension.available():
        pytest.skip("needs the C++ loops")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # whatever the process had (one per xdist worker on two cores)
    try:
        torch.manual_seed(0)
        rnn = RNN(mode, 8, 200, bidirectional=True, dtype=torch.float64)
        x = torch.randn(170, 3, 8, dtype=torch.float64)
        lengths = torch.randint(1, 4, (170,))
        ref_out, ref_grads = _run(rnn, "loop", x, None, lengths)
        out, grads = _run(rnn, "fused", x, None, lengths)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(ref_out + ref_grads, out + grads, strict=True):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-9)


def test_relu_elman_equals_loop(loops):
    torch.manual_seed(0)
    rnn = RNN("elman", D, H, 2, nonlinearity="relu", bidirectional=True, dtype=torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64)
    ref_out, ref_grads = _run(rnn, "loop", x, None, LENGTHS)
    out, grads = _run(rnn, "fused", x, None, LENGTHS)
    for a, b in zip(ref_out + ref_grads, out + grads, strict=True):
        torch.testing.assert_close(b, a)


def _gradcheck_inputs(mode: str):
    G = {"elman": 1, "lstm": 4, "gru": 3}[mode]
    gen = torch.Generator().manual_seed(3)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    x, h0, c0 = rand(4, 2, 3), rand(2, 3), rand(2, 3)  # (T, B, D), (B, H)
    weights = (rand(G * 3, 3), rand(G * 3, 3), rand(G * 3), rand(G * 3))
    return x, h0, c0, weights


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck(mode, reverse, loops):
    x, h0, c0, w = _gradcheck_inputs(mode)
    mask = (torch.arange(4).unsqueeze(1) < torch.tensor([4, 2]).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)
    if mode == "lstm":
        fn, inputs = (
            (lambda x, h0, c0, *w: LSTMFunction.apply(x, h0, c0, mask, reverse, *w, None, None)),
            (x, h0, c0, *w),
        )
    elif mode == "gru":
        fn, inputs = (lambda x, h0, *w: GRUFunction.apply(x, h0, mask, reverse, *w, None, None)), (x, h0, *w)
    else:
        fn, inputs = (lambda x, h0, *w: ElmanFunction.apply(x, h0, mask, reverse, "tanh", *w, None, None)), (x, h0, *w)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_identity_elman(reverse, loops):
    """The Elman kernel with the identity activation (i2h's linear state), with lengths and a single bias."""
    x, h0, _, (w_ih, w_hh, b_ih, _) = _gradcheck_inputs("elman")
    mask = (torch.arange(4).unsqueeze(1) < torch.tensor([4, 2]).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)

    def fn(x, h0, w_ih, w_hh, b_ih):
        return ElmanFunction.apply(x, h0, mask, reverse, "identity", w_ih, w_hh, b_ih, None, None, None)

    assert torch.autograd.gradcheck(fn, (x, h0, w_ih, w_hh, b_ih))


SEEDS = ["elman-io", "i2h"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", SEEDS)
def test_seed_cells_fused_equal_loop(mode, dtype, loops):
    """elman-io and i2h (kernels/seeds.py: the Elman kernel and one batched product) on both the C++ and the
    Python loops: 2 layers, both directions, lengths, with and without biases and an initial state."""
    torch.manual_seed(0)
    tol = {"atol": 1e-10, "rtol": 1e-9} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}
    for bias, with_state in [(True, False), (False, True)]:
        rnn = RNN(mode, D, H, 2, bias=bias, bidirectional=True, dtype=dtype)
        x = torch.randn(B, T, D, dtype=dtype)
        state = (torch.randn(4, B, H, dtype=dtype),) if with_state else None
        for lengths in (None, LENGTHS):
            ref_out, ref_grads = _run(rnn, "loop", x, state, lengths)
            out, grads = _run(rnn, "fused", x, state, lengths)
            for a, b in zip(ref_out + ref_grads, out + grads, strict=True):
                torch.testing.assert_close(b, a, **tol)
    assert rnn.resolved_backend(x) == "fused"  # auto runs the kernel


@pytest.mark.parametrize("mode", MODES)
def test_backward_twice_with_retain_graph(mode, loops):
    torch.manual_seed(0)
    rnn = RNN(mode, D, H, 2, bidirectional=True, backend="fused")
    x = torch.randn(B, T, D, requires_grad=True)
    out, _ = rnn(x, None, LENGTHS)
    out.sum().backward(retain_graph=True)
    first = x.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)


def test_dropout_masks_match_loop_under_same_seed():
    rnn = RNN("gru", D, H, 3, dropout=0.5).train()
    x = torch.randn(B, T, D)
    outs = []
    for backend in ("loop", "fused"):
        rnn.backend = backend
        torch.manual_seed(7)
        outs.append(rnn(x)[0])
    torch.testing.assert_close(outs[1], outs[0])
    rnn.backend = "fused"
    torch.manual_seed(8)
    assert not torch.allclose(rnn(x)[0], outs[0])  # another seed, other masks: dropout is really applied


def test_in_place_change_of_output_keeps_gradients_right(loops):
    torch.manual_seed(0)
    rnn = RNN("gru", D, H, backend="fused")
    x = torch.randn(B, T, D)
    grads = []
    for backend in ("loop", "fused"):
        rnn.backend = backend
        rnn.zero_grad(set_to_none=True)
        out, _ = rnn(x)
        out.mul_(2).pow(2).sum().backward()
        grads.append(rnn.weight_hh_l0.grad)
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("mode", MODES)
def test_fast_step_equals_forward_and_follows_weight_updates(mode, loops):
    torch.manual_seed(0)
    rnn = RNN(mode, D, H, 3, backend="loop")
    x = torch.randn(2, D)
    state = None
    with torch.no_grad():
        for _ in range(2):  # the second round runs on weights changed in place, as an optimizer does
            for _ in range(3):
                y, new_state = fast_step(rnn, x, rnn.initial_state(2) if state is None else state)
                ref_y, ref_state = rnn(x.unsqueeze(1), state)
                torch.testing.assert_close(y, ref_y.squeeze(1))
                for a, b in zip(
                    new_state if mode == "lstm" else [new_state],
                    ref_state if mode == "lstm" else [ref_state],
                    strict=True,
                ):
                    torch.testing.assert_close(a, b)
                state = ref_state
            for p in rnn.parameters():
                p.mul_(0.5)


def _assert_step_equals_forward(step, mode, hidden, batch, seed, bias=True, **tolerance):
    """``step`` from a random float64 state against a length-1 forward of the same 2-layer RNN."""
    torch.manual_seed(seed)
    rnn = RNN(mode, D, hidden, 2, bias=bias, backend="loop", dtype=torch.float64)
    x = torch.randn(batch, D, dtype=torch.float64)
    state = rnn.initial_state(batch)
    state = LSTMState(*(torch.randn_like(s) for s in state)) if mode == "lstm" else torch.randn_like(state)
    with torch.no_grad():
        y, new_state = step(rnn, x, state)
        ref_y, ref_state = rnn(x.unsqueeze(1), state)
    torch.testing.assert_close(y, ref_y.squeeze(1), **tolerance)
    torch.testing.assert_close(
        tuple(new_state) if mode == "lstm" else new_state,
        tuple(ref_state) if mode == "lstm" else ref_state,
        **tolerance,
    )


@pytest.mark.parametrize("hidden", [H, 384])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_cpu_step_float64_equals_forward(mode, bias, hidden, loops):
    """The CPU steps in float64 from a random state, with and without biases: the C++ step (batches up to
    CPP_STEP_MAX_BATCH) and the torch one (larger batches, or without the extension)."""
    for batch in (1, 3, CPP_STEP_MAX_BATCH + 1):
        _assert_step_equals_forward(fast_step, mode, hidden, batch, seed=1, bias=bias, rtol=1e-12, atol=1e-12)


def test_relu_elman_step_equals_forward(loops):
    torch.manual_seed(0)
    rnn = RNN("elman", D, H, 2, nonlinearity="relu", backend="loop", dtype=torch.float64)
    x, state = torch.randn(2, D, dtype=torch.float64), torch.randn(2, 2, H, dtype=torch.float64)
    with torch.no_grad():
        y, new_state = fast_step(rnn, x, state)
        ref_y, ref_state = rnn(x.unsqueeze(1), state)
    torch.testing.assert_close(y, ref_y.squeeze(1))
    torch.testing.assert_close(new_state, ref_state)


@pytest.mark.parametrize("mode", MODES)
def test_torch_step_equals_forward(mode):
    """The torch-ops step (the path off CPU) on CPU float64 against a length-1 forward."""
    _assert_step_equals_forward(torch_step, mode, H, 2, seed=0)


def test_step_with_autograd_keeps_gradients():
    rnn = RNN("lstm", D, H, 2)
    y, _ = rnn.step(torch.randn(1, D))
    y.sum().backward()
    assert rnn.weight_ih_l1.grad is not None and rnn.weight_ih_l1.grad.abs().sum() > 0


def test_auto_backend_rule_with_cpp_loops():
    if not extension.available():
        pytest.skip("the C++ loops are off")
    small, lm = torch.randn(1, 2, D), torch.randn(32, 2, D)
    for x in (small, lm):  # LSTM: oneDNN's kernel, training or not
        assert auto_backend(RNN("lstm", D, 256), x) == "native"
        with torch.no_grad():
            assert auto_backend(RNN("lstm", D, 256), x) == "native"
            assert backends.auto_backend(RNN("lstm", D, 256).plan(), x, RNN("lstm", D, 256).forward_weights(),
                                         padded=True) == "native"  # fmt: skip
    # ... except training on a padded batch, which torch.nn packs and leaves oneDNN for (its backward: T^2)
    padded = RNN("lstm", D, 256)
    assert backends.auto_backend(padded.plan(), lm, padded.forward_weights(), padded=True) == "fused"
    assert padded.resolved_backend(lm, padded=True) == "fused" and padded.resolved_backend(lm) == "native"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: fused trains the LSTM, oneDNN infers
        assert auto_backend(RNN("lstm", D, 256), lm) == "fused"
        with torch.no_grad():  # ... where oneDNN has a bf16 LSTM (AVX-512): without it torch.nn raises
            onednn = torch.ops.mkldnn._is_mkldnn_bf16_supported()
            assert auto_backend(RNN("lstm", D, 256), lm) == ("native" if onednn else "fused")
    assert auto_backend(RNN("lstm", D, 256, dtype=torch.bfloat16), lm.bfloat16()) == "fused"
    assert auto_backend(RNN("gru", D, 8), small) == "fused"  # GRU trains fused at every size measured
    assert auto_backend(RNN("elman", D, 256), small) == "native"  # B * H = 256 < 512
    assert auto_backend(RNN("elman", D, 256), torch.randn(2, 2, D)) == "fused"
    with torch.no_grad():  # inference: fused from 2^19 multiply-adds per step
        assert auto_backend(RNN("gru", D, 128), torch.randn(11, 2, D)) == "fused"  # 11 * 3 * 128^2 >= 2^19
        assert auto_backend(RNN("gru", D, 128), torch.randn(10, 2, D)) == "native"
        assert auto_backend(RNN("elman", D, 256), torch.randn(8, 2, D)) == "fused"
        assert auto_backend(RNN("elman", D, 256), torch.randn(7, 2, D)) == "native"


def test_auto_backend_rule_without_cpp_loops():
    x = torch.randn(1, 2, D)
    with extension.use_extension(False):
        for mode in MODES:  # small: torch.nn's kernels, training or not
            assert auto_backend(RNN(mode, D, H), x) == "native"
            with torch.no_grad():
                assert auto_backend(RNN(mode, D, H), x) == "native"
        big = torch.randn(22, 2, D)  # 22 * 3*512 * 512 >= 2**24 multiply-adds per step for GRU, 22*512*512 < for Elman
        assert auto_backend(RNN("gru", D, 512), big) == "fused"
        assert auto_backend(RNN("gru", D, 512), big[:21]) == "native"
        assert auto_backend(RNN("elman", D, 512), big) == "native"
        assert auto_backend(RNN("elman", D, 512), torch.randn(64, 2, D)) == "fused"
        assert auto_backend(RNN("lstm", D, 512), torch.randn(64, 2, D)) == "native"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", MODES)
def test_fused_on_cuda_equals_loop(mode):
    torch.manual_seed(0)
    rnn = RNN(mode, D, H, 2, bidirectional=True, device="cuda")
    x = torch.randn(B, T, D, device="cuda")
    lengths = LENGTHS
    ref_out, ref_grads = _run(rnn, "loop", x, None, lengths)
    out, grads = _run(rnn, "fused", x, None, lengths)
    for a, b in zip(ref_out + ref_grads, out + grads, strict=True):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
    assert auto_backend(rnn, x) == "native"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", MODES)
def test_saturated_gates_stay_finite_and_equal_loop(mode, dtype, loops):
    """Inputs scaled by 1000 saturate every gate. The C++ loops are built with -ffast-math, which assumes no
    infinities: an exp that overflowed there used to give NaN (found when an LM with locked dropout diverged)."""
    torch.manual_seed(0)
    hidden = 8  # wide enough for the compiler's vector exp, where the NaN came from (H = 3 ran scalar code)
    rnn = RNN(mode, D, hidden, 2, bidirectional=True, dtype=dtype)
    x = torch.randn(B, T, D, dtype=dtype) * 1000
    ref_out, ref_grads = _run(rnn, "loop", x, None, LENGTHS)
    out, grads = _run(rnn, "fused", x, None, LENGTHS)
    for k, (a, b) in enumerate(zip(ref_out + ref_grads, out + grads, strict=True)):
        assert bool(b.isfinite().all())
        # saturated float32 gates leave gradients made of 1 - z ~ 1e-7, which the two loops round differently (the
        # C++ one through exp, torch through its sigmoid): float64 is the tight check, float32 the finiteness one
        if dtype == torch.float64 or k < len(ref_out):
            tol = 1e-10 if dtype == torch.float64 else 1e-5
            torch.testing.assert_close(b, a, atol=tol * (1 + float(a.abs().max())), rtol=1e-4)
    with torch.no_grad():  # the generation step (C++ at batch 1)
        uni = RNN(mode, D, hidden, 2, dtype=dtype).eval()
        y, _ = uni.step(x[:1, 0])
        expected, _ = uni(x[:1, :1])
    torch.testing.assert_close(y, expected[:, 0])
