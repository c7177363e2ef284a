"""Series classification: the first layer's input scale (the UCR ArrowHead collapse) and the series' scalings.

The collapse: z-normalised series all have mean 0, and a recurrent layer driven at a twentieth of unit scale is
nearly linear, so its output averaged over time came out the same for every series; the pooled features did not
differ and training sat at the class prior. ``ZNormalise`` is checked against a NumPy z-normalisation by hand, on
constant and padded series, and through a saved run (eval and predict scale as training did).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnkit.checkpoint import load_run
from rnnkit.cli import main
from rnnkit.data.labelled import read_examples
from rnnkit.sequence import pad_sequences
from rnnkit.tasks import ClassifyConfig, ClassifyTask, SequenceClassifier
from rnnkit.tasks.classification import ClassifyModelConfig
from rnnkit.tasks.classify_parts import ConvBranch, Standardise, ZNormalise, init_input_weights_

pytestmark = pytest.mark.usefixtures("one_thread")


def _bumps(rng: np.random.Generator, n: int, T: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(n, T) series, each z-normalised (mean 0, std 1, as the UCR archive ships them): a narrow bump (class 1)
    or a wide one (class 0) at a random place."""
    y = rng.integers(0, 2, n)
    t = np.arange(T)
    centre = rng.uniform(8, 32, (n, 1))
    width = np.where(y[:, None] == 1, 2.0, 6.0)
    x = np.exp(-0.5 * ((t - centre) / width) ** 2) + rng.normal(0, 0.05, (n, T))
    return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True), y


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_untrained_features_of_zero_mean_series_differ(pooling):
    """The default classifier's pooled features at initialisation must tell series of mean 0 apart.

    With torch.nn's U(+-1/sqrt(H)) input weights on one channel the gates saw the series at std 0.05, and mean
    pooling gave features whose spread across series was 0.0006 here (below 0.00005 on ArrowHead); training sat at
    the class prior."""
    X, _ = _bumps(np.random.default_rng(0), 64)
    x, lengths = torch.tensor(X, dtype=torch.float32)[..., None], torch.full((64,), X.shape[1])  # (64, 40, 1)
    torch.manual_seed(0)
    model = SequenceClassifier(ClassifyModelConfig(pooling=pooling), 2, input_channels=1).eval()
    with torch.no_grad():
        pre = model.encode(x, lengths) @ model.rnn.weight_ih_l0.T  # (64, 40, 3H): the gates' input part
        spread = model.features(x, lengths).std(0).mean()  # across series, mean over units
    assert 0.4 < float(pre.std()) < 1.6
    assert spread > 0.02, float(spread)


def test_input_weights_have_variance_one_over_the_input_width():
    torch.manual_seed(0)  # a fixed draw: with 1 channel the variance is estimated from 192 weights
    for channels in (1, 6, 40):
        model = SequenceClassifier(ClassifyModelConfig(hidden_size=64), 3, input_channels=channels)
        for name in ("weight_ih_l0", "weight_ih_l0_reverse"):
            w = model.rnn.get_parameter(name).detach()
            assert w.abs().max() <= (3 / channels) ** 0.5
            assert float(w.var()) * channels == pytest.approx(1.0, rel=0.15), (channels, name)
    text = SequenceClassifier(ClassifyModelConfig(hidden_size=64), 3, vocab_size=9)  # text keeps torch.nn's init
    assert text.rnn.weight_ih_l0.abs().max() <= 64**-0.5
    with pytest.raises(ValueError, match="weight_ih_l0"):
        init_input_weights_(torch.nn.Linear(2, 2))


# --- per-series z-normalisation -----------------------------------------------------------------------------------


def test_conv_branch_is_fcn_with_same_padding_and_ignores_padding():
    """Three conv-BN-ReLU blocks, "same" padding as torch's own ``padding="same"`` pads, averaged over time; a
    series padded into a batch gives what it gives alone."""
    torch.manual_seed(0)
    branch = ConvBranch(2, 4).eval()
    for norm in branch.norms:  # statistics other than the initial 0 and 1, as training leaves them
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    series = [torch.randn(T, 2) for T in (13, 7, 1)]
    with torch.no_grad():
        alone = []
        for x in series:
            h = x.T[None]  # (1, 2, T)
            for conv, norm in zip(branch.convs, branch.norms, strict=True):
                h = torch.relu(norm(F.conv1d(h, conv.weight, conv.bias, padding="same")))
            alone.append(h.mean(2)[0])
        batch = branch(*pad_sequences(series))
    torch.testing.assert_close(batch, torch.stack(alone), rtol=1e-5, atol=1e-6)
    assert [c.out_channels for c in branch.convs] == [4, 8, 4] and [c.kernel_size[0] for c in branch.convs] == [8, 5, 3]


def test_the_conv_branch_feeds_the_head_of_series_models_only():
    model = SequenceClassifier(ClassifyModelConfig(hidden_size=8, conv_filters=16), 3, input_channels=2)
    assert model.conv is not None and model.head[0].in_features == 2 * 8 + 16
    x, lengths = torch.randn(4, 9, 2), torch.tensor([9, 5, 3, 1])
    assert model.features(x, lengths).shape == (4, 32)
    text = SequenceClassifier(ClassifyModelConfig(hidden_size=8, ngrams=0, conv_filters=16), 3, vocab_size=10)
    assert text.conv is None  # text has its n-gram bag instead
    off = SequenceClassifier(ClassifyModelConfig(hidden_size=8), 3, input_channels=2)  # the default: off
    assert off.conv is None and off.head[0].in_features == 16


def _znorm_by_hand(x: np.ndarray) -> np.ndarray:
    """(T, D) -> each channel minus its mean over its non-missing steps, over their population std (1 if 0)."""
    m = np.nanmean(x, axis=0)
    s = np.nanstd(x, axis=0)
    s = np.where(s > 1e-8, s, 1.0)
    return np.nan_to_num((x - m) / s, nan=0.0)


def test_znormalise_matches_numpy_and_ignores_padding():
    rng = np.random.default_rng(1)
    series = [rng.normal(5, 3, (7, 2)), rng.normal(-2, 0.5, (4, 2)), np.full((5, 2), 3.0)]  # the last is constant
    series[1][0, 1] = series[1][0, 1] * 100 + 7  # an outlier must move that row's statistics only
    series[0][2, 0] = np.nan  # missing: left out of the statistics, 0 after
    x, lengths = pad_sequences([torch.tensor(s) for s in series])  # (3, 7, 2), zero-padded
    z = ZNormalise(2)(x, lengths)
    assert not torch.isnan(z).any()
    for i, s in enumerate(series):
        np.testing.assert_allclose(z[i, : len(s)].numpy(), _znorm_by_hand(s), rtol=1e-10, atol=1e-12)
        assert (z[i, len(s) :] == 0).all()
    assert (z[2] == 0).all()  # a constant series is only centred
    z0 = z[0, :, 0].numpy()[[0, 1, 3, 4, 5, 6]]
    assert z0.mean() == pytest.approx(0, abs=1e-12) and z0.std() == pytest.approx(1, abs=1e-12)
    more, _ = pad_sequences([torch.tensor(s) for s in series] + [torch.zeros(11, 2)])  # more padding
    torch.testing.assert_close(ZNormalise(2)(more, torch.tensor([7, 4, 5, 11]))[:3, :7], z)


def test_series_scaling_is_chosen_by_the_config_and_gradients_stay_finite():
    cfg = ClassifyModelConfig(hidden_size=4)
    assert isinstance(SequenceClassifier(cfg, 2, input_channels=2).embedding, Standardise)
    model = SequenceClassifier(cfg, 2, input_channels=2, scaling="series")
    assert isinstance(model.embedding, ZNormalise) and not list(model.embedding.buffers())
    x = torch.cat([torch.full((1, 6, 2), 4.0), torch.randn(1, 6, 2)]).requires_grad_()  # a constant row
    model(x, torch.tensor([6, 6])).sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="scaling must be one of"):
        SequenceClassifier(cfg, 2, input_channels=2, scaling="minmax")


@pytest.fixture(scope="module")
def series_run(tmp_path_factory):
    """A run trained with --scaling series on bumps whose level and size vary by series, and a test file."""
    d = tmp_path_factory.mktemp("znorm")
    rng = np.random.default_rng(0)
    for name, n in (("train", 96), ("test", 48)):
        X, y = _bumps(rng, n)
        X = X * rng.uniform(0.1, 10, (n, 1)) + rng.uniform(-50, 50, (n, 1))  # each series its own level and scale
        np.savez(d / f"{name}.npz", X=X[..., None].astype(np.float32), y=y)
    out = d / "run"
    argv = ["train", "classify", "--data", str(d / "train.npz"), "--out", str(out), "--scaling", "series",
            "--hidden-size", "16", "--head-size", "16", "--max-steps", "40", "--max-minutes", "0",
            "--eval-every", "20", "--lr", "0.01", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    return out, d / "test.npz"


def test_a_saved_run_scales_eval_and_predict_as_training_did(series_run, capsys):
    out, test = series_run
    assert json.loads((out / "labels.json").read_text())["scaling"] == "series"
    run = load_run(out)
    assert run.task.input.scaling == "series" and isinstance(run.model.embedding, ZNormalise)
    examples = read_examples(test)
    labels, probs = run.task.predict(run.model, examples)
    # the same series at another level and scale: per-series z-normalisation makes the predictions equal
    shifted = [x * 3.5 - 20 for x in examples.inputs]
    labels2, probs2 = run.task.predict(run.model, shifted)
    assert labels2 == labels
    torch.testing.assert_close(probs2, probs, rtol=1e-4, atol=1e-5)
    # predict's probabilities are the model's on the hand-z-normalised series
    x = torch.tensor(_znorm_by_hand(examples.inputs[0].astype(np.float64)), dtype=torch.float32)[None]  # (1, T, 1)
    plain = SequenceClassifier(run.model.config, 2, input_channels=1, scaling="dataset").eval()
    plain.load_state_dict(run.model.state_dict(), strict=False)  # Standardise at mean 0, std 1: the identity
    with torch.no_grad():
        by_hand = torch.softmax(plain(x, torch.tensor([x.size(1)])), -1)[0]
    torch.testing.assert_close(probs[0], by_hand, rtol=1e-4, atol=1e-5)
    assert main(["eval", "--run", str(out), "--data", str(test), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["accuracy"] == pytest.approx(float(np.mean(np.array(labels) == examples.labels)))
    assert scores["accuracy"] >= 0.8, scores


def test_a_run_from_before_the_choice_scales_by_the_dataset(series_run, tmp_path):
    task = ClassifyTask(ClassifyConfig.from_dict({"data": {"data": str(series_run[1]), "scaling": "series"}}))
    task.restore({"labels": ["0", "1"], "kind": "series", "channels": 1, "mean": torch.zeros(1), "std": torch.ones(1)})
    assert task.input.scaling == "dataset"  # artefacts without "scaling": the run was trained before it existed
    assert isinstance(task.build_model().embedding, Standardise)


def test_early_stopping_is_on_by_default_and_eval_loads_the_best_evaluation(series_run, tmp_path, capsys):
    """With a learning rate too small to change anything no evaluation beats the first: the default patience ends
    the run 5 evaluations later, and eval scores best.pt (step 1), not the last step."""
    out = tmp_path / "run"
    argv = ["train", "classify", "--data", str(series_run[1]), "--out", str(out), "--hidden-size", "4",
            "--head-size", "0", "--lr", "1e-30", "--max-steps", "50", "--max-minutes", "0", "--eval-every", "1",
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_because"] == "patience" and summary["steps"] == 6
    assert main(["eval", "--run", str(out), "--data", str(series_run[1]), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["step"] == 1 and scores["checkpoint"].endswith("best.pt")
    assert load_run(out, "last").step == 6
