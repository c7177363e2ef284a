"""Sampling: primed-then-stepped equals one forward pass, greedy/seeded determinism, top-k/top-p, private RNG."""

import pytest
import torch

from rnnkit.data import Vocab
from rnnkit.errors import DataError
from rnnkit.sampling import filter_logits, generate, sample_text, start_text
from rnnkit.tasks.language_model import CharLM
from rnnkit.tasks.language_model import LMModelConfig as ModelConfig

TEXT = "hello world\nthe quick brown fox jumps over the lazy dog\n"


@pytest.fixture(params=["lstm", "gru", "elman"])
def lm(request):
    torch.manual_seed(0)
    vocab = Vocab.from_text(TEXT)
    model = CharLM(len(vocab), ModelConfig(mode=request.param, embedding_size=8, hidden_size=16, num_layers=2))
    return model.eval(), vocab


def _greedy_by_forward(model, vocab, prompt, length):
    """Oracle: re-run one full forward pass over prompt + generated text for every new character."""
    text = prompt
    for _ in range(length):
        ids = torch.tensor([vocab.encode(text)])  # (1, T)
        logits, _ = model(ids)  # (1, T, V)
        text += vocab.decode([int(logits[0, -1].argmax())])
    return text[len(prompt) :]


def test_primed_then_stepped_logits_equal_full_forward(lm):
    model, vocab = lm
    ids = torch.tensor([vocab.encode(TEXT[:20])])  # (1, 20)
    with torch.no_grad():
        full, _ = model(ids)  # (1, 20, V)
        logits, state = model(ids[:, :8])  # (1, 8, V)
        stepped = [logits[:, -1]]
        for t in range(8, 19):
            lt, state = model.step(ids[:, t], state)  # (1, V)
            stepped.append(lt)
    torch.testing.assert_close(torch.stack(stepped, 1), full[:, 7:19], atol=1e-6, rtol=1e-6)


def test_greedy_matches_full_forward_oracle_and_is_deterministic(lm):
    model, vocab = lm
    out = sample_text(model, vocab, "the ", 15, temperature=0)
    assert len(out) == 15
    assert out == _greedy_by_forward(model, vocab, "the ", 15)
    assert out == sample_text(model, vocab, "the ", 15, temperature=0, generator=torch.Generator().manual_seed(5))


def test_seed_reproducible_and_seeds_differ(lm):
    model, vocab = lm

    def run(seed):
        return sample_text(model, vocab, "he", 60, temperature=1.5, generator=torch.Generator().manual_seed(seed))

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert set(run(3)) <= set(TEXT)


def test_top_k_one_equals_greedy(lm):
    model, vocab = lm
    greedy = sample_text(model, vocab, "fox", 20, temperature=0)
    k1 = sample_text(model, vocab, "fox", 20, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(3))
    assert k1 == greedy


def test_generate_streams_lazily(lm):
    model, vocab = lm
    it = generate(model, vocab, "a", 1000, temperature=1.0)
    assert len(next(it)) == 1


def test_does_not_touch_global_rng(lm):
    model, vocab = lm
    before = torch.random.get_rng_state()
    sample_text(model, vocab, "the", 30, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    sample_text(model, vocab, "", 10, temperature=1.0)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_top_p_keeps_smallest_set_with_mass_at_least_p():
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])  # sorted: .4 .3 .15 .1 .05
    logits = probs.log()
    for p, keep in [
        (0.3, {1}),
        (0.4, {1}),
        (0.41, {1, 3}),
        (0.7, {1, 3}),
        (0.71, {1, 3, 4}),
        (0.9, {1, 2, 3, 4}),
        (1.0, {0, 1, 2, 3, 4}),
    ]:
        out = filter_logits(logits, top_p=p)
        kept = {i for i in range(5) if torch.isfinite(out[i])}
        assert kept == keep, (p, kept)
        assert torch.equal(out[list(kept)], logits[list(kept)])


def test_top_k_filter_batched():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0], [4.0, 0.0, 1.0, 9.0]])  # (2, 4)
    out = filter_logits(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[False, True, True, False], [True, False, False, True]]


def test_empty_prompt_starts_from_newline(lm):
    model, vocab = lm
    assert start_text(vocab) == "\n"
    assert start_text(Vocab.from_text("ba")) == "a"
    assert sample_text(model, vocab, "", 10, temperature=0) == sample_text(model, vocab, "\n", 10, temperature=0)


def test_errors(lm):
    model, vocab = lm
    with pytest.raises(DataError, match="'€'"):
        sample_text(model, vocab, "a€", 5)
    for kwargs, name in [
        ({"temperature": -1}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ]:
        with pytest.raises(ValueError, match=name):
            sample_text(model, vocab, "a", 5, **kwargs)
    with pytest.raises(ValueError, match="length"):
        sample_text(model, vocab, "a", -1)
    assert sample_text(model, vocab, "a", 0) == ""


def test_tiny_temperature_is_greedy_not_nan():
    from rnnkit.sampling import _pick

    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0 - 1e-3]])
    gen = torch.Generator().manual_seed(0)
    for temperature in (1e-300, 1e-30):
        assert _pick(logits, temperature, 0, 1.0, gen).item() == 1
        assert _pick(logits, temperature, 0, 1e-300, gen).item() == 1
