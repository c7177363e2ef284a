"""Dynamic evaluation: scored before it learns, equal to a hand-written loop, static at lr 0, model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from rnnkit.data import Vocab
from rnnkit.metrics import evaluate_dynamic, evaluate_ids
from rnnkit.tasks import CharLM
from rnnkit.tasks.language_model import LMModelConfig as ModelConfig

TEXT = "".join(f"def f{i % 7}(x):\n    return x * {i % 5} + {i % 3}\n" for i in range(40))


def _model(mode="lstm", seed=0):
    vocab = Vocab.from_text(TEXT)
    torch.manual_seed(seed)
    model = CharLM(len(vocab), ModelConfig(mode=mode, embedding_size=6, hidden_size=12, backend="loop"))
    return model.double(), vocab.encode(TEXT, tensor=True)


def test_lr_zero_is_the_static_figure():
    model, ids = _model()
    static = evaluate_ids(model, ids, batch_size=3, bptt=20, device="cpu")
    dynamic = evaluate_dynamic(model, ids, lr=0.0, batch_size=3, bptt=20)
    assert dynamic["chars"] == static["chars"]
    assert dynamic["loss"] == pytest.approx(static["loss"], rel=1e-12)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_equals_score_then_step_by_hand(mode, normalize):
    model, ids = _model(mode)
    T, decay, beta = 9, 0.05, 0.9
    lr = 0.01 if normalize else 0.3
    ids = ids[: 3 * T + 1]  # batch_size=1: three chunks of one row
    got = evaluate_dynamic(model, ids, lr=lr, normalize=normalize, beta=beta, decay=decay, batch_size=1, bptt=T)

    m = copy.deepcopy(model).eval()
    theta0 = [p.detach().clone() for p in m.parameters()]
    mean_sq = [None] * len(theta0)
    total, state = 0.0, None
    for k in range(3):
        x, y = ids[k * T : (k + 1) * T][None], ids[k * T + 1 : (k + 1) * T + 1][None]  # (1, T)
        logits, state = m(x, state)
        loss = F.cross_entropy(logits[0], y[0])  # mean over the chunk
        total += loss.item() * T  # the chunk's score uses the parameters from before its own step
        grads = torch.autograd.grad(loss, list(m.parameters()))
        with torch.no_grad():
            for k, (p, g, p0) in enumerate(zip(m.parameters(), grads, theta0, strict=True)):
                if normalize:  # RMS-normalised step, v = running mean of g^2 started at the first g^2
                    mean_sq[k] = g**2 if mean_sq[k] is None else beta * mean_sq[k] + (1 - beta) * g**2
                    p -= lr * g / (mean_sq[k].sqrt() + 1e-8)
                else:
                    p -= lr * g
                p += decay * (p0 - p)
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
    assert got["chars"] == 3 * T
    assert got["loss"] == pytest.approx(total / (3 * T), rel=1e-10)


def test_adapting_helps_on_repetitive_text_and_leaves_the_model_alone():
    model, _ = _model()
    vocab = Vocab.from_text(TEXT)
    ids = vocab.encode("return x * 2 + 1\n" * 60, tensor=True)  # a pattern the untrained model has not seen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    static = evaluate_ids(model, ids, batch_size=2, bptt=16, device="cpu")
    dynamic = evaluate_dynamic(model, ids, lr=4.0, normalize=False, batch_size=2, bptt=16)
    assert dynamic["bpc"] < 0.5 * static["bpc"]  # measured: 4.46 static, 1.78 dynamic
    normalized = evaluate_dynamic(model, ids, lr=0.01, batch_size=2, bptt=16)
    assert normalized["bpc"] < 0.5 * static["bpc"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"lr": -1.0}, "lr must be"), ({"lr": 0.1, "decay": 2.0}, "decay"), ({"lr": 0.1, "beta": 1.0}, "beta")],
)
def test_bad_arguments(kwargs, message):
    model, ids = _model()
    with pytest.raises(ValueError, match=message):
        evaluate_dynamic(model, ids, **kwargs)
