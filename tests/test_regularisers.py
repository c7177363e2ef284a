"""Zoneout, weight-drop and locked dropout on rnnkit.RNN: each against a hand-written oracle, across backends,
and from the command line of every task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import one_error_line
from rnnkit import RNN, layers
from rnnkit.cells import CELLS, Cell, LSTMState
from rnnkit.cli import main
from rnnkit.kernels import extension, ops
from rnnkit.kernels.fused import LAYERS, ZONEOUT
from rnnkit.layers import locked_dropout

B, T, D, H = 3, 7, 4, 5
LENGTHS = torch.tensor([7, 4, 1])


def _rnn(mode="lstm", **kw):
    torch.manual_seed(0)
    return RNN(mode, D, H, dtype=torch.float64, **kw)


def _x():
    return torch.randn(B, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _cell_like(rnn: RNN) -> Cell:
    cell = Cell(rnn.mode, D, H, dtype=torch.float64)
    cell.load_state_dict({k: v for k, v in rnn.layer_params(0, 0).items() if v is not None})
    return cell


# --- zoneout ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lstm", "gru", "elman", "layernorm-lstm"])
def test_zoneout_eval_is_the_expectation_by_hand(mode):
    rnn = _rnn(mode, zoneout=(0.3, 0.6)).eval()
    cell = _cell_like(rnn)
    x = _x()
    out, final = rnn(x)
    state = cell.initial_state(B, dtype=torch.float64)
    for t in range(T):
        _, new = cell(x[:, t], state)
        if rnn.spec.has_cell:
            state = type(new)(0.3 * state.h + 0.7 * new.h, 0.6 * state.c + 0.4 * new.c)
        else:
            state = 0.3 * state + 0.7 * new
        torch.testing.assert_close(out[:, t], state.h if rnn.spec.has_cell else state)
    torch.testing.assert_close(final.h[0] if rnn.spec.has_cell else final[0], out[:, -1])


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_zoneout_training_keeps_each_unit_or_updates_it(mode):
    p = 0.4
    rnn = _rnn(mode, zoneout=p).train()
    cell = _cell_like(rnn)
    x = torch.randn(64, 50, D, dtype=torch.float64)
    out, _ = rnn(x)
    kept = total = 0
    h_prev = torch.zeros(64, H, dtype=torch.float64)
    for t in range(50):
        h = out[:, t]
        # replay the step from the zoned previous state: c follows h's mask only in expectation, so replay h only
        # for the GRU (its state is h); for the LSTM check every unit is the old value or a fresh one
        if not rnn.spec.has_cell:
            _, new = cell(x[:, t], h_prev)
            is_old, is_new = torch.isclose(h, h_prev), torch.isclose(h, new)
            assert bool((is_old | is_new).all())
            kept += int((is_old & ~is_new).sum())
            total += int((is_old ^ is_new).sum())
        else:
            kept += int(torch.isclose(h, h_prev).sum())
            total += h.numel()
        h_prev = h
    assert abs(kept / total - p) < 0.03  # 16,000 units: the share kept is p within a few standard errors


def test_zoneout_backends_and_conversions():
    rnn = _rnn("gru", zoneout=0.1)
    assert rnn.resolved_backend(_x()) == "fused"  # Elman, GRU and LSTM: the fused kernels have zoneout
    assert _rnn("lstm", zoneout=0.1).resolved_backend(_x()) == "fused"
    assert _rnn("layernorm-gru", zoneout=0.1).resolved_backend(_x()) == "loop"  # its kernel has none
    with pytest.raises(ValueError, match=r"backend 'native' cannot run this RNN \(cell 'gru', zoneout\)"):
        RNN("gru", D, H, zoneout=0.1, backend="native")
    with pytest.raises(ValueError, match=r"backend 'fused' cannot run this RNN \(cell 'i2h', zoneout\)"):
        RNN("i2h", D, H, zoneout=0.1, backend="fused")
    with pytest.raises(ValueError, match=r"zoneout=\(0.1, 0.1\) has no torch.nn equivalent"):
        rnn.to_torch()
    with pytest.raises(ValueError, match=r"zoneout must be a number in \[0, 1\), got 1.0"):
        RNN("gru", D, H, zoneout=1.0)
    with pytest.raises(ValueError, match=r"zoneout\[1\] must be a number in \[0, 1\), got -0.5"):
        RNN("lstm", D, H, zoneout=(0.1, -0.5))


def test_zoneout_zero_changes_nothing_and_gradcheck():
    x = _x().requires_grad_()
    plain, zoned = _rnn("lstm"), _rnn("lstm", zoneout=0.0)
    torch.testing.assert_close(zoned(x, lengths=LENGTHS)[0], plain(x, lengths=LENGTHS)[0], rtol=0, atol=0)
    rnn = _rnn("lstm", zoneout=0.25)

    def f(x):
        torch.manual_seed(3)  # the same masks on every call, so finite differences see one function
        return rnn(x, lengths=LENGTHS)[0]

    assert torch.autograd.gradcheck(f, (x,))


# --- zoneout in the fused kernels -----------------------------------------------------------------------------


def _zoned_run(rnn: RNN, backend: str, x, state, lengths) -> list[torch.Tensor]:
    """Outputs, final states, the gradients of x, the initial state and every parameter, under seed 5; and a
    number drawn after the forward (the RNG's state: both backends must consume the same draws)."""
    rnn.backend = backend
    rnn.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    parts = [s.clone().requires_grad_(True) for s in state]
    torch.manual_seed(5)
    y, final = rnn(x, LSTMState(*parts) if rnn.spec.has_cell else parts[0], lengths)
    after = torch.rand(1, dtype=torch.float64)
    finals = list(final) if rnn.spec.has_cell else [final]
    g = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    loss = loss + sum((f * torch.randn(f.shape, generator=g, dtype=y.dtype)).sum() for f in finals)
    loss.backward()
    return [y, *finals, after, x.grad, *(s.grad for s in parts)] + [p.grad for p in rnn.parameters()]


ZONED = [("elman", "tanh"), ("elman", "relu"), ("gru", "tanh"), ("lstm", "tanh")]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(("mode", "nonlinearity"), ZONED)
def test_zoneout_fused_equals_loop(mode, nonlinearity, training, loops):
    """Fused zoneout (every step's masks drawn before the layer's kernel, layers.zoneout_weights) against the
    loop's (drawn step by step) under one seed, float64: outputs, final states, the RNG's state after, and every
    gradient; 2 layers, both directions, rates (0.3, 0.6), with and without lengths; training (Bernoulli masks)
    and evaluation (the expectation)."""
    assert mode in ZONEOUT
    torch.manual_seed(0)
    rnn = RNN(mode, D, H, 2, bidirectional=True, nonlinearity=nonlinearity, zoneout=(0.3, 0.6), dtype=torch.float64)
    rnn.train(training)
    x = _x()
    state = [torch.randn(4, B, H, dtype=torch.float64) for _ in range(2 if rnn.spec.has_cell else 1)]
    for lengths in (None, LENGTHS):
        expected = _zoned_run(rnn, "loop", x, state, lengths)
        got = _zoned_run(rnn, "fused", x, state, lengths)
        for k, (a, b) in enumerate(zip(got, expected, strict=True)):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, msg=lambda m, k=k: f"item {k}: {m}")
    if training:  # and the masks are really drawn: another seed, other outputs
        rnn.backend = "fused"
        torch.manual_seed(6)
        assert not torch.allclose(rnn(x, lengths=LENGTHS)[0], got[0])


@pytest.mark.parametrize("mode", ZONEOUT)
def test_zoneout_backward_in_time_slices_equals_loop(mode, monkeypatch):
    """The C++ backward runs over slices of the time axis (ops.backward_slices), each reading its own rows of the
    zoneout weights: with slices of one and two steps (T = 7, uneven), fused still equals the loop."""
    if not extension.available():
        pytest.skip("the C++ loops are off")
    torch.manual_seed(0)
    rnn = RNN(mode, D, H, 2, bidirectional=True, zoneout=(0.3, 0.6), dtype=torch.float64).train()
    x = _x()
    state = [torch.randn(4, B, H, dtype=torch.float64) for _ in range(2 if rnn.spec.has_cell else 1)]
    expected = _zoned_run(rnn, "loop", x, state, LENGTHS)
    for steps in (1, 2):
        monkeypatch.setattr(ops, "SLICE_ROWS", steps * B)
        got = _zoned_run(rnn, "fused", x, state, LENGTHS)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mode", ZONEOUT)
def test_zoneout_gradcheck_with_fixed_masks(mode, training, reverse, loops):
    """The fused layers' hand-written backward with zoneout, by finite differences: fixed bool masks (training) or
    the rates as weights (evaluation), lengths, both directions."""
    spec = CELLS[mode]
    gen = torch.Generator().manual_seed(3)
    T_, B_, D_, H_ = 4, 2, 3, 3
    n = 2 if spec.has_cell else 1

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    x = rand(T_, B_, D_)
    state = [rand(B_, H_) for _ in range(n)]
    kinds = list(spec.shapes(D_, H_))
    weights = [rand(*shape) for shape in spec.shapes(D_, H_).values()]
    mask = (torch.arange(T_).unsqueeze(1) < torch.tensor([4, 2]).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)
    if training:
        z = torch.rand(T_, n, B_, H_, generator=gen, dtype=torch.float64) < 0.4  # bool masks, as while training
    else:
        z = torch.tensor([0.3, 0.6][:n], dtype=torch.float64).view(1, n, 1, 1).expand(T_, n, B_, H_).contiguous()

    def f(x, *rest):
        s = LSTMState(*rest[:n]) if spec.has_cell else rest[0]
        y, final = LAYERS[mode](x, s, mask, reverse, dict(zip(kinds, rest[n:], strict=True)), zoneout=z)
        return y, *(final if spec.has_cell else [final])

    assert torch.autograd.gradcheck(f, (x, *state, *weights))


# --- weight-drop ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lstm", "gru", "elman"])
def test_weight_drop_is_torch_nn_on_the_masked_weights(mode):
    rnn = _rnn(mode, weight_drop=0.5, num_layers=2, bidirectional=True).train()
    x = _x()
    torch.manual_seed(5)
    weights = rnn.forward_weights()  # the masks a forward pass under this seed draws first
    for w, k in zip(weights, range(4), strict=True):
        raw = rnn.layer_params(k // 2, k % 2)["weight_hh"]
        dropped = w["weight_hh"]
        assert bool(((dropped == 0) | torch.isclose(dropped, 2 * raw)).all())
        assert 0.3 < float((dropped == 0).double().mean()) < 0.7
    reference = rnn.to_torch().eval()  # torch.nn with the dropped weights, no dropout
    reference.batch_first = True
    with torch.no_grad():
        for w, k in zip(weights, range(4), strict=True):
            for kind, value in w.items():
                getattr(reference, rnn._param_name(kind, k // 2, k % 2)).copy_(value)
    expected, _ = reference(x)
    for backend in ("loop", "native", "fused"):
        rnn.backend = backend
        torch.manual_seed(5)
        out, _ = rnn(x)
        torch.testing.assert_close(out, expected, msg=backend)


def test_weight_drop_gradient_is_masked_and_eval_is_plain():
    rnn = _rnn("gru", weight_drop=0.5).train()
    torch.manual_seed(2)
    mask = rnn.forward_weights()[0]["weight_hh"] == 0
    torch.manual_seed(2)
    rnn(_x())[0].sum().backward()
    assert bool((rnn.weight_hh_l0.grad[mask] == 0).all()) and bool((rnn.weight_hh_l0.grad[~mask] != 0).all())
    plain = _rnn("gru")
    torch.testing.assert_close(rnn.eval()(_x())[0], plain.eval()(_x())[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"weight_drop must be a number in \[0, 1\), got 1"):
        RNN("gru", D, H, weight_drop=1)


# --- locked dropout ------------------------------------------------------------------------------------------


def test_locked_dropout_one_mask_for_all_steps():
    x = torch.ones(8, 30, 16, dtype=torch.float64)
    y = locked_dropout(x, 0.25, True)
    assert bool((y == y[:, :1]).all())  # every step has the mask of step 0
    assert set(y.unique().tolist()) <= {0.0, 1 / 0.75}
    assert torch.equal(locked_dropout(x, 0.25, False), x) and torch.equal(locked_dropout(x, 0.0, True), x)
    y = locked_dropout(x.transpose(0, 1), 0.5, True, time_dim=0)  # time-major
    assert bool((y == y[:1]).all())


def test_dropout_input_and_output_are_masks_on_x_and_y():
    rnn = _rnn("lstm", dropout_input=0.3, dropout_output=0.2).train()
    plain = _rnn("lstm")
    x = _x()
    torch.manual_seed(7)
    out, _ = rnn(x)
    torch.manual_seed(7)
    x_masked = locked_dropout(x, 0.3, True)
    torch.manual_seed(7)
    torch.empty(B, 1, D).bernoulli_(0.7)  # the input's mask is drawn first
    y_mask = torch.empty(B, 1, H, dtype=torch.float64).bernoulli_(0.8).div_(0.8)
    expected, _ = plain(x_masked)
    torch.testing.assert_close(out, expected * y_mask)


def test_locked_between_layers_equal_on_loop_and_fused_and_not_native(monkeypatch):
    rnn = _rnn("gru", num_layers=3, dropout=0.4, locked_dropout=True).train()
    x = _x()
    assert rnn.resolved_backend(x) != "native"
    outs = []
    for backend in ("loop", "fused"):
        rnn.backend = backend
        torch.manual_seed(11)
        outs.append(rnn(x, lengths=LENGTHS)[0])
    torch.testing.assert_close(outs[0], outs[1])
    with pytest.raises(ValueError, match=r"backend 'native' cannot run this RNN"):
        RNN("gru", D, H, 3, dropout=0.4, locked_dropout=True, backend="native")
    # one mask per sequence between layers: a 2-layer RNN whose first layer outputs a constant sees one mask
    x = torch.zeros(4, 20, D)
    deep = RNN("elman", D, H, 2, dropout=0.5, locked_dropout=True, backend="loop").train()
    with torch.no_grad():
        deep.weight_hh_l0.zero_()  # h1_t = tanh(W_ih 0 + b): the same every step
    masks = []
    orig = layers.between_layers  # what the skeleton applies between layers (rnnkit.layers.run_plan)
    monkeypatch.setattr(layers, "between_layers", lambda xt, **kw: masks.append(orig(xt, **kw)) or masks[-1])
    deep(x)
    assert bool((masks[0] == masks[0][:1]).all())


# --- every task, from the command line ------------------------------------------------------------------------

TINY = ["--hidden-size", "8", "--batch-size", "4", "--max-steps", "3", "--max-minutes", "0", "--eval-every", "3",
        "--device", "cpu", "--warmup-steps", "1"]  # fmt: skip
REGULARISED = ["--zoneout", "0.1", "--weight-drop", "0.2", "--dropout-input", "0.1", "--dropout-output", "0.1",
               "--locked-dropout", "true", "--num-layers", "2", "--dropout", "0.1"]  # fmt: skip


def test_lm_trains_with_every_regulariser_and_a_new_cell(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("abc def ghi\n" * 200, encoding="utf-8")
    out = tmp_path / "r"
    args = ["train", "lm", "--data", str(text), "--out", str(out), "--bptt", "8", "--eval-chars", "200",
            "--embedding-size", "8", "--mode", "layernorm-lstm", *TINY, *REGULARISED]  # fmt: skip
    assert main(args) == 0
    config = (out / "config.json").read_text()
    assert '"zoneout": 0.1' in config and '"mode": "layernorm-lstm"' in config
    assert main(["sample", "--run", str(out), "--length", "5", "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "lm", "--data", str(text), "--out", str(tmp_path / "bad"), "--zoneout", "1.5"]) == 2
    assert "zoneout must be a number in [0.0, 1.0), got 1.5" in one_error_line(capsys, 2)


def test_seq2seq_decoder_takes_any_cell():
    from rnnkit.seq2seq import Seq2Seq

    torch.manual_seed(0)
    model = Seq2Seq(9, 7, mode="layernorm-gru", embedding_size=4, hidden_size=6,
                    encoder_options={"weight_drop": 0.3, "zoneout": 0.1})  # fmt: skip
    memory, state = model.encode(torch.randint(4, 9, (2, 5)), torch.tensor([5, 3]))
    logits, _, weights = model.step(torch.tensor([2, 2]), state, memory)
    assert logits.shape == (2, 7) and torch.allclose(weights.sum(-1), torch.ones(2))
    assert F.softmax(logits, -1).isfinite().all()


def test_auto_rule_for_the_scan_cells():
    rnn = RNN("mingru", D, 16)
    assert rnn.resolved_backend(torch.randn(8, 20, D)) == "fused"  # 8 x 16 state values: the scan
    assert rnn.resolved_backend(torch.randn(8, 1, D)) == "loop"  # one step
    assert RNN("minlstm", D, 256).resolved_backend(torch.randn(32, 20, D)) == "loop"  # 8192 values: the loop
    assert RNN("layernorm-lstm", D, 256).resolved_backend(torch.randn(32, 20, D)) in ("fused", "loop")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mode", "lstm", "--zoneout", "0.1", "--backend", "native"],
         "backend native cannot run mode 'lstm' with zoneout; use one of auto, loop"),
        (["--mode", "layernorm-lstm", "--zoneout", "0.1", "--backend", "fused"],
         "backend fused cannot run mode 'layernorm-lstm' with zoneout; use one of auto, loop"),
        (["--mode", "gru", "--num-layers", "2", "--dropout", "0.2", "--locked-dropout", "true", "--backend", "native"],
         "backend native cannot run mode 'gru' with locked dropout between layers; use one of auto, loop, fused"),
        (["--mode", "mingru", "--init", "orthogonal"], "init orthogonal needs a cell with recurrent weights"),
        (["--mode", "minlstm", "--weight-drop", "0.3"], "weight_drop needs a cell with recurrent weights"),
    ],
)  # fmt: skip
def test_cell_and_backend_mismatches_are_one_line(flags, message, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("abc\n" * 50, encoding="utf-8")
    assert main(["train", "lm", "--data", str(text), "--out", str(tmp_path / "r"), *flags]) == 2
    assert message in one_error_line(capsys, 2)
    assert not (tmp_path / "r").exists()
