"""CharLM: shapes, step equals forward, chunked with state equals one pass, weight tying, init, errors."""

from __future__ import annotations

import pytest
import torch

from rnnkit.errors import ConfigError
from rnnkit.tasks import CharLM, lm_loss
from rnnkit.tasks.language_model import LMModelConfig as ModelConfig

MODES = ["lstm", "gru", "elman"]


def _model(mode="lstm", **kw) -> CharLM:
    torch.manual_seed(0)
    cfg = ModelConfig(mode=mode, embedding_size=kw.pop("E", 6), hidden_size=kw.pop("H", 8), **kw)
    return CharLM(11, cfg).double().eval()


@pytest.mark.parametrize("mode", MODES)
def test_forward_shapes_and_step_equals_forward(mode):
    m = _model(mode, num_layers=2)
    tokens = torch.randint(0, 11, (3, 9))
    logits, state = m(tokens)
    assert logits.shape == (3, 9, 11)
    stepped, s = [], None
    for t in range(9):
        out, s = m.step(tokens[:, t], s)  # (B, V)
        stepped.append(out)
    torch.testing.assert_close(torch.stack(stepped, 1), logits, rtol=1e-9, atol=1e-10)
    for a, b in zip(state if isinstance(state, tuple) else (state,), s if isinstance(s, tuple) else (s,), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_chunks_with_carried_state_equal_one_pass(mode):
    m = _model(mode)
    tokens = torch.randint(0, 11, (2, 12))
    full, _ = m(tokens)
    first, state = m(tokens[:, :5])
    second, _ = m(tokens[:, 5:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=1e-9, atol=1e-10)


def test_loss_is_mean_cross_entropy_by_hand():
    m = _model()
    tokens, targets = torch.randint(0, 11, (2, 4)), torch.randint(0, 11, (2, 4))
    logits, _ = m(tokens)
    log_p = logits.log_softmax(-1)
    by_hand = -sum(log_p[b, t, targets[b, t]] for b in range(2) for t in range(4)) / 8
    torch.testing.assert_close(lm_loss(logits, targets), by_hand)


def test_weight_tying_shares_one_tensor():
    m = _model(E=8, H=8, tie_weights=True)
    assert m.head.weight is m.embedding.weight
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in _model(E=8, H=8).parameters()) - 11 * 8
    with pytest.raises(ConfigError, match="embedding_size == hidden_size, got embedding_size=6, hidden_size=8"):
        ModelConfig(embedding_size=6, hidden_size=8, tie_weights=True)


def test_orthogonal_init_and_forget_bias():
    m = _model("lstm", init="orthogonal", H=8)
    for block in m.rnn.weight_hh_l0.split(8):
        torch.testing.assert_close(block @ block.T, torch.eye(8, dtype=block.dtype), rtol=0, atol=1e-6)
    assert torch.all(m.rnn.bias_ih_l0[8:16] == 1) and torch.all(m.rnn.bias_hh_l0[8:16] == 0)


def test_bad_inputs():
    m = _model()
    with pytest.raises(ValueError, match=r"tokens must be a \(B, T\) int64 Tensor, got \(3,\)"):
        m(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="token must be a"):
        m.step(torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        CharLM(0, ModelConfig())
    with pytest.raises(TypeError, match="ModelConfig"):
        CharLM(5, {"hidden_size": 4})
