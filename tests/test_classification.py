"""Sequence classification and the task contract: every task trains, checkpoints, resumes bit-exactly, evaluates.

The classifier is checked against hand-made rules it must learn, against padding (more padding changes no
prediction), and through the command line on good and bad input.
"""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch

from conftest import one_error_line as _error_line
from rnnkit.checkpoint import load_checkpoint, load_run, save_checkpoint
from rnnkit.cli import main
from rnnkit.errors import CheckpointError, ConfigError
from rnnkit.sequence import pad_sequences
from rnnkit.tasks import (
    TASKS,
    ClassifyConfig,
    ClassifyTask,
    CTCConfig,
    CTCTask,
    ForecastConfig,
    ForecastTask,
    LMConfig,
    LMTask,
    MusicConfig,
    MusicTask,
    Seq2SeqConfig,
    Seq2SeqTask,
    SequenceClassifier,
)
from rnnkit.tasks.classification import ClassifyModelConfig
from rnnkit.tasks.classify_parts import NgramBag, distinct_ngrams, ngram_buckets_for
from rnnkit.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _contains_ab(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """Strings over {a, b, c}; the label says whether "ab" occurs (an order-sensitive rule)."""
    rows = []
    for _ in range(n):
        s = "".join(rng.choice("abc") for _ in range(rng.randint(3, 14)))
        rows.append((s, "yes" if "ab" in s else "no"))
    return rows


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("classify")
    rng = random.Random(0)
    for name, n in (("train", 600), ("test", 200)):
        rows = _contains_ab(rng, n)
        (d / f"{name}.tsv").write_text("text\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return d / "train.tsv", d / "test.tsv"


def _series(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two channels of noisy sines; class 1 has twice the frequency of class 0; lengths 20 to 40."""
    T = 40
    y = rng.integers(0, 2, n)
    t = np.arange(T)[None, :]
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    freq = np.where(y[:, None] == 1, 0.5, 0.25)
    x0 = np.sin(freq * t + phase) * 3 + 10  # offset and scale: standardisation must handle them
    x1 = np.cos(freq * t + phase)
    X = np.stack([x0, x1], -1) + rng.normal(0, 0.1, (n, T, 2))
    lengths = rng.integers(20, T + 1, n)
    return X.astype(np.float32), y, lengths


@pytest.fixture(scope="module")
def series_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("series")
    rng = np.random.default_rng(0)
    for name, n in (("train", 300), ("test", 100)):
        X, y, lengths = _series(rng, n)
        np.savez(d / f"{name}.npz", X=X, y=y, lengths=lengths)
    return d / "train.npz", d / "test.npz"


def _classify_config(data, **train) -> ClassifyConfig:
    t = {"batch_size": 16, "max_steps": 6, "max_minutes": 0, "eval_every": 3, "log_every": 1, "warmup_steps": 2}
    return ClassifyConfig.from_dict(
        {
            "model": {"hidden_size": 12, "embedding_size": 6, "head_size": 8, "dropout": 0.2},
            "data": {"data": str(data)},
            "train": t | train,
        }
    )


def _lm_config(text_file, **train) -> LMConfig:
    t = {"batch_size": 4, "bptt": 10, "max_steps": 6, "max_minutes": 0, "eval_every": 3, "log_every": 1}
    m = {"mode": "lstm", "embedding_size": 6, "hidden_size": 12, "num_layers": 2, "dropout": 0.2}
    return LMConfig.from_dict({"model": m, "data": {"data": str(text_file), "val_fraction": 0.1}, "train": t | train})


@pytest.fixture(scope="module")
def lm_text(tmp_path_factory):
    p = tmp_path_factory.mktemp("lm") / "text.txt"
    p.write_text("def f(x):\n    return x * 2 + 1\n" * 40)
    return p


# --- the contract, for every task -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def series_csv(tmp_path_factory):
    p = tmp_path_factory.mktemp("forecast") / "series.csv"
    rng = np.random.default_rng(0)
    rows = [f"s{i},{t},{10 + np.sin(t / 2 + i) + rng.normal(0, 0.1):.4f}" for i in range(4) for t in range(30)]
    p.write_text("id,time,value\n" + "\n".join(rows) + "\n")
    return p


def _forecast_config(data, **train) -> ForecastConfig:
    t = {"batch_size": 8, "max_steps": 6, "max_minutes": 0, "eval_every": 3, "log_every": 1, "warmup_steps": 2}
    m = {"hidden_size": 12, "num_layers": 2, "dropout": 0.2, "num_samples": 8}
    d = {"data": str(data), "horizon": 4, "season_length": 6, "eval_samples": 8}
    return ForecastConfig.from_dict({"model": m, "data": d, "train": t | train})


@pytest.fixture(scope="module")
def pairs_tsv(tmp_path_factory):
    p = tmp_path_factory.mktemp("seq2seq") / "pairs.tsv"
    words = ["abc", "bca", "cab", "abcd", "dcab", "bd", "db", "cc", "ad", "da"]
    p.write_text("".join(f"{w}\t{w[::-1]}\n" for w in words * 4))
    return p


def _seq2seq_config(data, **train) -> Seq2SeqConfig:
    t = {"batch_size": 8, "max_steps": 6, "max_minutes": 0, "eval_every": 3, "log_every": 1, "warmup_steps": 2}
    m = {"hidden_size": 8, "embedding_size": 4, "dropout": 0.2}
    return Seq2SeqConfig.from_dict({"model": m, "data": {"data": str(data), "val_fraction": 0.2}, "train": t | train})


@pytest.fixture(scope="module")
def features_npz(tmp_path_factory):
    p = tmp_path_factory.mktemp("ctc") / "features.npz"
    g = np.random.default_rng(0)
    np.savez(p, X=g.normal(size=(40, 16, 5)).astype(np.float32), lengths=g.integers(8, 17, 40),
             targets=np.array(["ab", "ba", "abc", "c"] * 10))  # fmt: skip
    return p


def _ctc_config(data, **train) -> CTCConfig:
    t = {"batch_size": 8, "max_steps": 6, "max_minutes": 0, "eval_every": 3, "log_every": 1, "warmup_steps": 2}
    m = {"hidden_size": 8, "num_layers": 2, "dropout": 0.2, "subsample": 2}
    d = {"data": str(data), "val_fraction": 0.2, "specaugment": True}  # masks drawn per batch: resume must match
    return CTCConfig.from_dict({"model": m, "data": d, "train": t | train})


@pytest.fixture(scope="module")
def midi_dir(tmp_path_factory):
    from rnnkit.data.music import write_midi

    d = tmp_path_factory.mktemp("music")
    rng = np.random.default_rng(0)
    for k in range(6):
        frames = rng.random((12, 6)) < 0.3
        frames[-1, 0] = True
        (d / f"piece{k}.mid").write_bytes(write_midi(frames, 4, low=60))
    return d


def _music_config(data, **train) -> MusicConfig:
    t = {"batch_size": 2, "max_steps": 6, "max_minutes": 0, "eval_every": 3, "log_every": 1, "warmup_steps": 2}
    m = {"hidden_size": 8, "nade_size": 4, "dropout": 0.2, "num_layers": 2}
    d = {"data": [str(data)], "val_fraction": 0.3, "seq_len": 8, "transpose": 2}
    return MusicConfig.from_dict({"model": m, "data": d, "train": t | train})


@pytest.fixture
def tasks(text_files, lm_text, series_csv, pairs_tsv, features_npz, midi_dir):
    """name -> a function making a fresh task of that name with train settings overridden."""
    return {
        "lm": lambda **train: LMTask(_lm_config(lm_text, **train)),
        "classify": lambda **train: ClassifyTask(_classify_config(text_files[0], **train)),
        "forecast": lambda **train: ForecastTask(_forecast_config(series_csv, **train)),
        "seq2seq": lambda **train: Seq2SeqTask(_seq2seq_config(pairs_tsv, **train)),
        "ctc": lambda **train: CTCTask(_ctc_config(features_npz, **train)),
        "music": lambda **train: MusicTask(_music_config(midi_dir, **train)),
    }


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_trains_checkpoints_and_resumes_bit_exactly(name, tasks, tmp_path):
    assert set(TASKS) == set(tasks)  # a new task joins this test by its name in the tasks fixture
    straight = train(tasks[name](), tmp_path / "straight")
    assert straight.steps == 6 and straight.stopped_because == "max_steps" and straight.task == name
    files = {p.name for p in (tmp_path / "straight").iterdir()}
    assert {"config.json", "last.pt", "best.pt", "metrics.jsonl", "summary.json", "loss.png"} <= files
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["task"] == name and summary["steps"] == 6 and summary["best"] == straight.best

    def interrupt(event):
        if event["kind"] == "step" and event["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tasks[name](), tmp_path / "resumed", on_event=interrupt, plots=False)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 4
    resumed = train(tasks[name](), tmp_path / "resumed", resume=True, plots=False)
    assert resumed.steps == 6 and resumed.last == straight.last and resumed.best == straight.best
    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    assert a["kind"] == b["kind"] == name
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    run = load_run(tmp_path / "resumed", "last")
    assert type(run.task) is TASKS[name] and run.step == 6
    assert type(run.model) is type(straight.model)
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, straight.model.state_dict()[key]), key


@pytest.mark.parametrize("name", sorted(TASKS))
def test_resume_with_another_step_budget_warns(name, tasks, tmp_path, caplog):
    train(tasks[name](max_steps=3), tmp_path / "r", plots=False)
    with caplog.at_level("WARNING", logger="rnnkit.train"):
        result = train(tasks[name](max_steps=5), tmp_path / "r", resume=True, plots=False)
    assert result.steps == 5
    assert any("learning-rate schedule changes" in r.getMessage() for r in caplog.records)


# --- the classifier ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_classifier_learns_an_order_sensitive_rule(text_files, tmp_path):
    cfg = ClassifyConfig.from_dict(
        {
            "model": {"hidden_size": 24, "embedding_size": 8, "head_size": 16, "dropout": 0.0},
            "data": {"data": str(text_files[0])},
            "train": {"batch_size": 32, "max_steps": 250, "max_minutes": 0, "eval_every": 50, "lr": 1e-2},
        }
    )
    result = train(ClassifyTask(cfg), tmp_path / "run")
    run = load_run(tmp_path / "run")
    test = run.task.encode(__import__("rnnkit.data.labelled", fromlist=["x"]).read_examples(text_files[1]))
    m = run.task.scores(run.model, test)
    assert m["accuracy"] >= 0.95, (m, result.best)
    assert (tmp_path / "run" / "confusion.png").stat().st_size > 1000


@pytest.mark.slow  # the series path is also learned in test_classify_series.py
def test_classifier_learns_series_frequency(series_files, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "classify", "--data", str(series_files[0]), "--out", str(out), "--hidden-size", "16",
            "--max-steps", "120", "--max-minutes", "0", "--eval-every", "40", "--lr", "0.01", "--pooling", "mean",
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    labels = json.loads((out / "labels.json").read_text())
    assert labels["labels"] == ["0", "1"] and labels["channels"] == 2
    assert labels["mean"][0] == pytest.approx(10.0, abs=0.3)  # the standardisation was fitted on the data


def test_eval_json_and_predict_csv_match_the_library(text_files, tmp_path, capsys):
    out = tmp_path / "run"
    train(ClassifyTask(_classify_config(text_files[0], max_steps=20, eval_every=10)), out)
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--data", str(text_files[1]), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    run = load_run(out)
    from rnnkit.data.labelled import read_examples

    data = run.task.encode(read_examples(text_files[1]))
    probs, order = run.task.predict_proba(run.model, data)
    pred = torch.empty(len(order), dtype=torch.long)
    pred[torch.tensor(order)] = probs.argmax(-1)
    y = data.targets
    accuracy = float((pred == y).double().mean())
    recall_yes = float((pred[y == 1] == 1).double().mean())  # labels sorted: ["no", "yes"]
    assert got["task"] == "classify" and got["n"] == 200
    assert got["accuracy"] == pytest.approx(accuracy) and got["recall"]["yes"] == pytest.approx(recall_yes)
    assert set(got) >= {"accuracy", "macro_f1", "n", "recall", "loss"}

    csv_path = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(out), "--data", str(text_files[1]), "--out", str(csv_path)]) == 0
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "label,p_no,p_yes" and len(lines) == 201
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == [run.task.labels[i] for i in pred.tolist()]  # input order
    assert all(abs(float(r[1]) + float(r[2]) - 1) < 1e-5 for r in rows)
    # an existing --out is never overwritten without --force
    before = csv_path.read_bytes()
    assert main(["predict", "--run", str(out), "--data", str(text_files[1]), "--out", str(csv_path)]) == 2
    assert csv_path.read_bytes() == before
    assert main(["predict", "--run", str(out), "--data", str(text_files[1]), "--out", str(csv_path), "--force"]) == 0


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "attention"])
@pytest.mark.parametrize("mode", ["lstm", "gru", "elman"])
def test_more_padding_changes_no_prediction(pooling, mode):
    torch.manual_seed(0)
    cfg = ClassifyModelConfig(mode=mode, hidden_size=8, embedding_size=5, pooling=pooling, num_layers=2,
                              bidirectional=True, head_size=6)  # fmt: skip
    model = SequenceClassifier(cfg, 3, vocab_size=11).double().eval()
    seqs = [torch.randint(2, 11, (n,)) for n in (5, 2, 7, 1)]
    x, lengths = pad_sequences(seqs)  # (4, 7)
    more = torch.cat([x, torch.zeros(4, 6, dtype=torch.long)], 1)  # (4, 13): six more padded steps
    alone = torch.cat([model(s[None], torch.tensor([len(s)])) for s in seqs])  # each row in a batch of its own
    torch.testing.assert_close(model(x, lengths), alone, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model(more, lengths), alone, rtol=1e-10, atol=1e-10)


def _bag_reference(tokens: list[int], ngrams: int, vocab_size: int, buckets: int) -> list[int]:
    """The bucket of every 1- to ngrams-gram of tokens marked at both ends (no lone mark), by the hash's definition."""
    marked = [vocab_size, *tokens, vocab_size]
    ids = []
    for n in range(1, ngrams + 1):
        for start in range(len(marked) - n + 1):
            gram = marked[start : start + n]
            if gram == [vocab_size]:
                continue
            h = n
            for t in gram:
                h = (h * (vocab_size + 1) + t) % NgramBag._PRIME
            ids.append(h % buckets)
    return ids


def test_the_ngram_bag_is_the_mean_embedding_of_each_rows_marked_ngrams():
    torch.manual_seed(0)
    bag = NgramBag(ngrams=3, buckets=97, width=4, vocab_size=11).double()
    rows = [[3, 4, 5, 3], [7, 8], [9]]
    x, lengths = pad_sequences([torch.tensor(r) for r in rows])  # (3, 4), zero-padded
    got = bag(x, lengths)
    for row, features in zip(rows, got, strict=True):
        ids = _bag_reference(row, 3, 11, 97)
        assert len(ids) == len(row) + (len(row) + 1) + len(row)  # unigrams, bigrams and trigrams with the marks
        torch.testing.assert_close(features, bag.embedding.weight[ids].mean(0))
    # the same letters in another order share the unigrams only: order within a gram counts
    ab, ba = _bag_reference([3, 4], 2, 11, 10**6), _bag_reference([4, 3], 2, 11, 10**6)
    assert set(ab[:2]) == set(ba[:2]) and set(ab[2:]).isdisjoint(ba[2:])


@pytest.mark.parametrize("mode", ["gru", "lstm"])
def test_the_ngram_bag_changes_no_prediction_with_more_padding_and_reaches_the_head(mode):
    torch.manual_seed(0)
    cfg = ClassifyModelConfig(mode=mode, hidden_size=8, embedding_size=5, pooling="mean", head_size=6, ngrams=4,
                              ngram_buckets=64)  # fmt: skip
    model = SequenceClassifier(cfg, 3, vocab_size=11).double().eval()
    assert model.head[0].in_features == 2 * 8 + 5
    seqs = [torch.randint(2, 11, (n,)) for n in (5, 2, 7, 1)]
    x, lengths = pad_sequences(seqs)
    more = torch.cat([x, torch.zeros(4, 6, dtype=torch.long)], 1)
    alone = torch.cat([model(s[None], torch.tensor([len(s)])) for s in seqs])
    torch.testing.assert_close(model(x, lengths), alone, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model(more, lengths), alone, rtol=1e-10, atol=1e-10)
    before = model(x, lengths)
    with torch.no_grad():
        model.bag.embedding.weight.add_(1.0)  # the head reads the bag
    assert not torch.allclose(model(x, lengths), before)
    series = SequenceClassifier(cfg, 3, input_channels=2)  # a series has no tokens: no bag
    assert series.bag is None and series.head[0].in_features == 2 * 8


def test_series_model_fills_missing_values_with_the_channel_mean():
    torch.manual_seed(0)
    model = SequenceClassifier(ClassifyModelConfig(hidden_size=4, pooling="mean"), 2, input_channels=2).eval()
    model.embedding.mean.copy_(torch.tensor([5.0, -1.0]))  # the series' input layer: Standardise
    model.embedding.std.copy_(torch.tensor([2.0, 0.5]))
    x = torch.tensor([[[7.0, float("nan")], [5.0, 0.0]]])  # (1, 2, 2)
    filled = torch.tensor([[[7.0, -1.0], [5.0, 0.0]]])  # NaN -> the channel mean
    torch.testing.assert_close(model(x, torch.tensor([2])), model(filled, torch.tensor([2])))
    torch.testing.assert_close(model.encode(filled, torch.tensor([2])), torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]))


def test_the_bags_buckets_follow_the_training_sets_ngrams_and_are_saved_with_the_run(text_files, tmp_path):
    assert distinct_ngrams([["a", "b"], ["b", "a"]], 2) == 2 + 6  # a, b; <a ab b> and <b ba a>
    assert distinct_ngrams([["a"]], 3) == 1 + 2 + 1  # a; <a a>; <a>
    assert ngram_buckets_for(1000, 64) == 1024 and ngram_buckets_for(1025, 64) == 2048
    assert ngram_buckets_for(10**6, 64) == 2**16 and ngram_buckets_for(10**6, 32) == 2**17  # at most 4M weights
    run = tmp_path / "run"
    train(ClassifyTask(_classify_config(text_files[0], max_steps=2)), run, plots=False)
    texts = [line.split("\t")[0] for line in text_files[0].read_text().splitlines()[1:]]
    expected = ngram_buckets_for(distinct_ngrams([list(t) for t in texts], 5), 6)
    loaded = load_run(run)
    assert loaded.model.bag.buckets == expected == loaded.model.bag.embedding.num_embeddings
    assert json.loads((run / "labels.json").read_text())["ngram_buckets"] == expected


def test_a_text_run_saved_before_the_ngram_bag_loads_and_resumes_without_one(text_files, tmp_path, capsys):
    """Its config lacks ``ngrams``: the run had no bag, so it must not get today's default one."""
    run = tmp_path / "old"
    config = _classify_config(text_files[0], max_steps=3)
    train(
        ClassifyTask(dataclasses.replace(config, model=dataclasses.replace(config.model, ngrams=0))), run, plots=False
    )
    for name in ("best.pt", "last.pt"):
        payload = load_checkpoint(run / name)
        del payload["config"]["model"]["ngrams"], payload["config"]["model"]["ngram_buckets"]
        save_checkpoint(run / name, payload)
    saved = json.loads((run / "config.json").read_text())
    del saved["model"]["ngrams"], saved["model"]["ngram_buckets"]
    (run / "config.json").write_text(json.dumps(saved))
    loaded = load_run(run)
    assert loaded.config.model.ngrams == 0 and loaded.model.bag is None
    assert main(["train", "classify", "--out", str(run), "--resume", "--max-steps", "6", "--no-plots"]) == 0
    assert load_checkpoint(run / "last.pt")["step"] == 6 and load_run(run).model.bag is None
    assert ClassifyConfig.from_dict({}).model.ngrams == 5  # a new run has the bag


def test_a_state_dict_from_before_the_input_and_pooling_modules_loads():
    """Checkpoints kept the series statistics and the attention's layers at the top level of the classifier."""
    cfg = ClassifyModelConfig(hidden_size=4, pooling="attention", head_size=0)
    model = SequenceClassifier(cfg, 2, input_channels=3)
    old = {"embedding.mean": "mean", "embedding.std": "std"}
    old |= {f"pool.{m}.{p}": f"{m}.{p}" for m in ("score", "attend") for p in ("weight", "bias")}
    state = {old.get(k, k): v + 1 for k, v in model.state_dict().items()}
    assert list(state)[:2] == ["mean", "std"] and "score.weight" in state
    model.load_state_dict(state)  # strict: every key found, none left over
    torch.testing.assert_close(model.embedding.std, state["std"])
    torch.testing.assert_close(model.pool.attend.weight, state["attend.weight"])


def test_balanced_class_weights_are_n_over_c_times_count(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("".join(f"x{i}\ta\n" for i in range(6)) + "".join(f"y{i}\tb\n" for i in range(2)))
    task = ClassifyTask(_classify_config(p, class_weights="balanced"))
    task.prepare(None)
    # val_fraction 0.1 of 6 "a" rounds to 1 held out; of 2 "b" to 0: train counts a=5, b=2, n=7, C=2
    assert task.counts.tolist() == [5, 2]
    torch.testing.assert_close(task.weight, torch.tensor([7 / (2 * 5), 7 / (2 * 2)]))


# --- the command line: wrong task, bad input -----------------------------------------------------------------------


def test_a_run_of_the_wrong_task_is_one_line(text_files, lm_text, tmp_path, capsys):
    clf, lm = tmp_path / "clf", tmp_path / "lm"
    train(ClassifyTask(_classify_config(text_files[0], max_steps=2, eval_every=2)), clf, plots=False)
    train(LMTask(_lm_config(lm_text, max_steps=2, eval_every=2)), lm, plots=False)
    line = _error_line(capsys, main(["predict", "--run", str(lm), "--data", str(text_files[1])]))
    assert line == (
        f"rnnkit: error: {lm} is a char LM run; predict needs a classify, forecast, seq2seq or CTC speech run "
        "(char LM runs answer eval, sample)"
    )
    line = _error_line(capsys, main(["sample", "--run", str(clf)]))
    assert line == (
        f"rnnkit: error: {clf} is a classify run; sample needs a char LM or music run (classify runs answer eval, "
        "predict)"
    )
    with pytest.raises(CheckpointError, match="is a classify run"):
        load_run(clf, task="lm")
    # eval serves both tasks, each with its own file kind
    assert "not UTF-8" not in _error_line(capsys, main(["eval", "--run", str(clf), "--data", str(lm_text)]))


def test_lm_eval_scores_any_text_and_counts_unknown_characters(lm_text, tmp_path, capsys):
    lm = tmp_path / "lm"
    train(LMTask(_lm_config(lm_text, max_steps=2, eval_every=2)), lm, plots=False)
    odd = tmp_path / "odd.txt"
    odd.write_text("def f(€):\n    return € * 2\n")  # every other character is in the training text
    capsys.readouterr()
    assert main(["eval", "--run", str(lm), "--data", str(odd), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["unknown_chars"] == 2 and got["chars"] == len(odd.read_text()) - 1


def _write(path, data: str | bytes):
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_bad_inputs_one_line_exit_2_and_nothing_written(text_files, tmp_path, capsys):
    run = tmp_path / "run"
    train(ClassifyTask(_classify_config(text_files[0], max_steps=2, eval_every=2)), run, plots=False)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    nan_npz = tmp_path / "nan.npz"
    np.savez(nan_npz, X=np.array([[[1.0], [np.nan]], [[0.0], [1.0]]]), y=np.array([0, 1]))
    cases = {
        "empty": _write(tmp_path / "empty.tsv", ""),
        "no label": _write(tmp_path / "nolabel.tsv", "abc\tx\nabd\n"),
        "one class": _write(tmp_path / "one.tsv", "abc\tx\nabd\tx\n"),
        "empty text": _write(tmp_path / "emptytext.tsv", "abc\tx\n\ty\n"),
        "nan": nan_npz,
        "ragged channels": _write(
            tmp_path / "ragged.ts", "@dimensions 2\n@classLabel true a b\n@data\n1,2,3:4,5:a\n1,2:3,4:b\n"
        ),
        "no @data": _write(tmp_path / "nodata.ts", "@classLabel true a b\n1,2:a\n"),
        "wrong kind": _write(tmp_path / "text.txt", "abc\tx\nabd\ty\n"),
    }
    for name, path in cases.items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        line = _error_line(
            capsys, main(["train", "classify", "--data", str(path), "--out", str(out), "--max-steps", "2"])
        )
        assert str(path) in line or "classes" in line, (name, line)
        assert not out.exists(), name
    # training over an existing run, or evaluating labels the run does not know
    line = _error_line(capsys, main(["train", "classify", "--data", str(text_files[0]), "--out", str(run)]))
    assert "--resume" in line
    unseen = _write(tmp_path / "unseen.tsv", "abc\tmaybe\n")
    line = _error_line(capsys, main(["eval", "--run", str(run), "--data", str(unseen)]))
    assert "'maybe' is not in the run's label set" in line
    line = _error_line(capsys, main(["train", "classify", "--out", str(tmp_path / "o")]))
    assert "--data" in line
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="pooling must be one of last, mean, max, attention, got 'sum'"):
        ClassifyModelConfig(pooling="sum")
    with pytest.raises(ConfigError, match=r"val_fraction must be a number in \[0.0, 0.5\], got 0.7"):
        ClassifyConfig.from_dict({"data": {"val_fraction": 0.7}})
    with pytest.raises(ConfigError, match="monitor must be one of accuracy, macro_f1"):
        ClassifyConfig.from_dict({"train": {"monitor": "loss"}})


def test_attention_weights_sum_to_one_over_the_valid_steps_and_make_the_features():
    torch.manual_seed(0)
    model = SequenceClassifier(ClassifyModelConfig(pooling="attention", hidden_size=4, ngrams=0), 2, vocab_size=7)
    model = model.double()
    x, lengths = pad_sequences([torch.tensor([2, 3, 4, 5]), torch.tensor([6, 2])])
    a = model.attention(x, lengths)  # (2, 4)
    torch.testing.assert_close(a.sum(1), torch.ones(2, dtype=torch.float64))
    assert (a[1, 2:] == 0).all() and (a[1, :2] > 0).all()
    y, _ = model.rnn(model.encode(x, lengths), lengths=lengths)  # (2, 4, 8)
    torch.testing.assert_close(model.features(x, lengths), (a.unsqueeze(-1) * y).sum(1))
    with pytest.raises(ValueError, match="pooling='attention'"):
        SequenceClassifier(ClassifyModelConfig(pooling="mean"), 2, vocab_size=7).attention(x, lengths)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_resuming_a_finished_run_changes_nothing(name, tasks, tmp_path):
    train(tasks[name](), tmp_path / "r", plots=False)
    before = load_checkpoint(tmp_path / "r" / "last.pt")
    result = train(tasks[name](), tmp_path / "r", resume=True, plots=False)
    assert result.steps == 6 and result.stopped_because == "max_steps"
    after = load_checkpoint(tmp_path / "r" / "last.pt")
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])


REGULARISED_MODELS = {  # task -> a cell torch.nn lacks, with every regulariser on
    "lm": {"mode": "layernorm-lstm"},
    "classify": {"mode": "minlstm", "weight_drop": 0.0},  # minLSTM has no recurrent weight to drop
    "forecast": {"mode": "layernorm-gru"},
    "seq2seq": {"mode": "elman-io"},
    "ctc": {"mode": "layernorm-lstm"},
    "music": {"mode": "layernorm-lstm"},
}


@pytest.mark.parametrize("name", sorted(REGULARISED_MODELS))
def test_every_task_trains_a_new_cell_with_every_regulariser_and_resumes_bit_exactly(name, tasks, tmp_path):
    """The task contract with the cell table and the regularisers: masks drawn from the checkpointed RNG, so a run
    stopped at step 4 and resumed ends bit-identical to one that ran straight through."""
    import dataclasses

    options = {"zoneout": 0.1, "weight_drop": 0.2, "dropout_input": 0.1, "dropout_output": 0.1, "locked_dropout": True}

    def make():
        task = tasks[name]()
        model = dataclasses.replace(task.config.model, **(options | REGULARISED_MODELS[name]))
        return TASKS[name](dataclasses.replace(task.config, model=model))

    straight = train(make(), tmp_path / "straight", plots=False)
    assert straight.steps == 6

    def interrupt(event):
        if event["kind"] == "step" and event["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(make(), tmp_path / "resumed", on_event=interrupt, plots=False)
    resumed = train(make(), tmp_path / "resumed", resume=True, plots=False)
    assert resumed.last == straight.last
    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    assert a["config"]["model"]["mode"] == REGULARISED_MODELS[name]["mode"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
