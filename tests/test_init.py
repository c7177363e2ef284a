"""init_orthogonal_ and init_forget_bias_ on rnnkit and torch.nn modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnkit.cells import ElmanCell, GRUCell, LSTMCell
from rnnkit.init import init_forget_bias_, init_orthogonal_
from rnnkit.recurrent import RNN

D, H = 3, 5


def _recurrent_weights(module: nn.Module):
    return {n: p for n, p in module.named_parameters() if n.rsplit(".", 1)[-1].startswith("weight_hh")}


def _assert_blocks_orthogonal(module: nn.Module, gates: int, gain: float = 1.0) -> None:
    weights = _recurrent_weights(module)
    assert weights
    for name, w in weights.items():
        assert w.shape == (gates * H, H), name
        for q in w.detach().double().split(H):  # one (H, H) block per gate
            torch.testing.assert_close(q.T @ q, gain**2 * torch.eye(H, dtype=torch.float64), rtol=0, atol=1e-6)
            torch.testing.assert_close(q @ q.T, gain**2 * torch.eye(H, dtype=torch.float64), rtol=0, atol=1e-6)


MODULES = [
    (lambda: RNN("lstm", D, H, 2, bidirectional=True), 4),
    (lambda: RNN("gru", D, H), 3),
    (lambda: RNN("elman", D, H, 3), 1),
    (lambda: nn.LSTM(D, H, 2, bidirectional=True), 4),
    (lambda: nn.GRU(D, H), 3),
    (lambda: nn.RNN(D, H), 1),
    (lambda: LSTMCell(D, H), 4),
    (lambda: GRUCell(D, H), 3),
    (lambda: ElmanCell(D, H), 1),
    (lambda: nn.LSTMCell(D, H), 4),
    (lambda: nn.Sequential(nn.Linear(D, D), nn.GRU(D, H)), 3),  # found inside a container too
]


@pytest.mark.parametrize(("make", "gates"), MODULES)
def test_init_orthogonal(make, gates):
    torch.manual_seed(0)
    module = make()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    assert init_orthogonal_(module) is module
    _assert_blocks_orthogonal(module, gates)
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(_recurrent_weights(module))  # nothing but weight_hh* is touched
    # gain scales every block; the gates get different matrices
    init_orthogonal_(module, gain=0.5)
    _assert_blocks_orthogonal(module, gates, gain=0.5)
    if gates > 1:
        w = next(iter(_recurrent_weights(module).values()))
        assert not torch.allclose(w[:H], w[H : 2 * H])


def test_init_orthogonal_generator_is_reproducible():
    a, b, c = (RNN("gru", D, H, 2) for _ in range(3))
    init_orthogonal_(a, generator=torch.Generator().manual_seed(1))
    init_orthogonal_(b, generator=torch.Generator().manual_seed(1))
    init_orthogonal_(c, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.weight_hh_l1, b.weight_hh_l1)
    assert not torch.allclose(a.weight_hh_l1, c.weight_hh_l1)


def test_init_orthogonal_keeps_dtype_and_grad():
    rnn = RNN("lstm", D, H, dtype=torch.float64)
    init_orthogonal_(rnn)
    assert rnn.weight_hh_l0.dtype == torch.float64 and rnn.weight_hh_l0.requires_grad
    _assert_blocks_orthogonal(rnn, 4)


def test_init_orthogonal_error():
    with pytest.raises(ValueError, match=r"module must have recurrent weights named weight_hh\*, got Linear"):
        init_orthogonal_(nn.Linear(D, H))


@pytest.mark.parametrize(
    "make",
    [
        lambda: RNN("lstm", D, H, 2, bidirectional=True),
        lambda: nn.LSTM(D, H, 2, bidirectional=True),
        lambda: LSTMCell(D, H),
        lambda: nn.LSTMCell(D, H),
        lambda: nn.Sequential(nn.LSTM(D, H), nn.Linear(H, 2)),  # the Linear's bias is left alone
    ],
)
def test_init_forget_bias(make):
    torch.manual_seed(0)
    module = make()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    assert init_forget_bias_(module, 1.5) is module
    biases = {n: p for n, p in module.named_parameters() if n.rsplit(".", 1)[-1].startswith("bias_")}
    assert biases and len(biases) % 2 == 0
    for name, b in module.named_parameters():
        if name not in biases:
            assert torch.equal(b, before[name]), name
            continue
        expected = before[name].clone()
        expected[H : 2 * H] = 1.5 if "bias_ih" in name else 0.0
        assert torch.equal(b.detach(), expected), name  # i, g, o slices untouched
    # the forget gate's total bias b_if + b_hf, as the cell adds them, is the value
    for name in biases:
        if "bias_ih" in name:
            total = biases[name][H : 2 * H] + biases[name.replace("bias_ih", "bias_hh")][H : 2 * H]
            assert torch.equal(total, torch.full((H,), 1.5))


def test_init_forget_bias_default_is_one_and_changes_the_output():
    torch.manual_seed(0)
    rnn = RNN("lstm", D, H, backend="loop")
    x = torch.randn(2, 4, D)
    before = rnn(x)[0]
    init_forget_bias_(rnn)
    assert torch.equal(rnn.bias_ih_l0[H : 2 * H], torch.ones(H))
    # equals torch.nn.LSTM given the same treatment
    theirs = nn.LSTM(D, H, batch_first=True)
    theirs.load_state_dict(rnn.state_dict())
    torch.testing.assert_close(rnn(x)[0], theirs(x)[0])
    assert not torch.allclose(rnn(x)[0], before)


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (RNN("gru", D, H), r"init_forget_bias_ needs LSTM biases of size 4H=20, got 15 for bias_ih_l0"),
        (nn.GRU(D, H), r"init_forget_bias_ needs LSTM biases of size 4H=20, got 15 for bias_ih_l0"),
        (ElmanCell(D, H), r"init_forget_bias_ needs LSTM biases of size 4H=20, got 5 for bias_ih"),
        (RNN("lstm", D, H, bias=False), r"module must have LSTM biases named bias_ih\*/bias_hh\*, got RNN"),
        (nn.Linear(D, H), r"module must have LSTM biases named bias_ih\*/bias_hh\*, got Linear"),
    ],
)
def test_init_forget_bias_errors(module, message):
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(ValueError, match=message):
        init_forget_bias_(module)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))  # nothing changed


def test_init_forget_bias_error_changes_nothing_in_a_mixed_module():
    """An LSTM next to a GRU: the error comes before any bias is written (the LSTM is not half-initialised)."""
    module = nn.ModuleDict({"a": nn.LSTM(D, H), "b": nn.GRU(D, H)})
    before = module["a"].bias_ih_l0.detach().clone()
    with pytest.raises(ValueError, match=r"needs LSTM biases of size 4H=20, got 15 for b.bias_ih_l0"):
        init_forget_bias_(module)
    assert torch.equal(module["a"].bias_ih_l0, before)
