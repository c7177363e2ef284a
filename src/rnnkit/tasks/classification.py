"""Sequence classification: text (characters or words) or time series -> RNN -> pooling -> MLP -> class.

    tokens (B, T) --embedding--> (B, T, E)  |  series (B, T, D) --standardise per channel--> (B, T, D)
        --rnnkit.RNN (lengths)--> (B, T, K*H) --pool over the valid steps--> (B, K*H) --MLP--> logits (B, C)

Text also feeds the MLP a bag of its hashed token 1- to ``ngrams``-grams (``NgramBag``, fastText's features, on by
default: (B, E) beside the pooled (B, K*H)), which a recurrent net on a few thousand examples per class learns less
well for itself (the words-to-language benchmark in docs/results.md). A series can feed it a convolutional
branch (``ConvBranch``, FCN's three conv-BN-ReLU blocks averaged over time, as LSTM-FCN does: (B, F) beside the
pooled (B, K*H), ``conv_filters``, off by default: on the UCR validation splits it did not beat the RNN alone in
the 2-minute budget, docs/results.md).

Pooling reads only the valid steps of each row: ``last`` (the final state of each direction: the forward one
at the row's last valid step, the backward one at step 0), ``mean``, ``max``, or ``attention`` (a learned
score per step, softmax over the valid steps, weighted sum; Bahdanau-style, as in Yang et al. 2016). The model,
its poolings and the two kinds of input (``TextInput``, ``SeriesInput``) are in ``rnnkit.tasks.classify_parts``.

``ClassifyTask`` is ``rnnkit train classify``: batches grouped by length (``LengthBuckets``), cross-entropy
with optional class weights and label smoothing, early stopping on validation accuracy or macro-F1, and a
confusion-matrix PNG in the run folder. Missing values in a series (only where a ``.ts`` file declares them)
are set to the channel's training mean, 0 after standardisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.config import (
    RecurrentConfig,
    RunConfig,
    TrainConfig,
    check_bool,
    check_choice,
    check_float,
    check_int,
    recurrent_field,
)
from rnnkit.data.labelled import (
    BucketBatches,
    Examples,
    LengthBuckets,
    TokenVocab,
    read_examples,
    stratified_split,
)
from rnnkit.distributed import all_reduce
from rnnkit.errors import ConfigError, DataError
from rnnkit.io import atomic_write_json
from rnnkit.metrics import classification_metrics, confusion_matrix, plot_confusion
from rnnkit.precision import at_least_fp32
from rnnkit.sequence import pad_sequences
from rnnkit.tasks.base import DATA, Command, Flag, Param, Table, Task
from rnnkit.tasks.classify_parts import INPUTS, POOLINGS, SCALINGS, SequenceClassifier, as_examples

__all__ = [
    "ClassifyConfig",
    "ClassifyDataConfig",
    "ClassifyModelConfig",
    "ClassifyTask",
    "ClassifyTrainConfig",
    "SequenceClassifier",
]


@dataclass(frozen=True)
class ClassifyModelConfig(RecurrentConfig):
    """Embedding or standardisation -> rnnkit.RNN -> pooling -> MLP head (``SequenceClassifier``)."""

    mode: str = recurrent_field("mode", "gru")
    hidden_size: int = recurrent_field("hidden_size", 128, "hidden state width per layer and direction (units)")
    dropout: float = recurrent_field("dropout", 0.1, "dropout between layers and in the head, in [0, 1)")
    embedding_size: int = field(default=64, metadata={"help": "token embedding width (units; text only)"})
    bidirectional: bool = field(default=True, metadata={"help": "read each sequence both ways"})
    pooling: str = field(default="mean", metadata={"help": "over the valid steps: last, mean, max or attention"})
    head_size: int = field(default=128, metadata={"help": "hidden width of the MLP head (units, 0 = one linear layer)"})
    ngrams: int = field(
        default=5,
        metadata={"help": "text only: beside the RNN, a bag of hashed token 1- to N-grams for the head (N; 0 = off)"},
    )
    ngram_buckets: int = field(
        default=0,
        metadata={"help": "text only: hash buckets of the n-gram bag, rows of its table (0 = about one per distinct "
                  "n-gram of the training set, at most 4M weights)"},
    )  # fmt: skip
    conv_filters: int = field(
        default=0,
        metadata={"help": "series only: beside the RNN, a convolutional branch (FCN: 3 blocks of F, 2F, F filters) "
                  "for the head (F; 0 = off)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("bidirectional", self.bidirectional)
        check_choice("pooling", self.pooling, tuple(POOLINGS))
        check_int("head_size", self.head_size, 0, 2**20)
        check_int("ngrams", self.ngrams, 0, 8)
        check_int("ngram_buckets", self.ngram_buckets, 0, 2**24)
        check_int("conv_filters", self.conv_filters, 0, 2**12)


@dataclass(frozen=True)
class ClassifyDataConfig:
    """The training file, the validation data, and how text is cut into tokens."""

    data: str | None = field(
        default=None,
        metadata={"help": "training file: .tsv, .csv, .ts or .npz (path; required; labels read as Unicode NFC)"},
    )
    val: str | None = field(
        default=None, metadata={"help": "validation file of the same kind (unset: a stratified split of --data)"}
    )
    val_fraction: float = field(
        default=0.1,
        metadata={
            "help": "without --val: share of each class held out, in [0, 0.5] (0 = validate on the training set)"
        },
    )
    tokens: str = field(default="chars", metadata={"help": "text tokens: chars or words (split on whitespace)"})
    scaling: str = field(
        default="dataset",
        metadata={"help": "series: dataset (each channel by the training set's mean and std) or series (each series "
                  "and channel to mean 0, std 1: the UCR convention)"},
    )  # fmt: skip
    max_vocab: int = field(default=50_000, metadata={"help": "keep the most frequent tokens (count, words only)"})
    max_length: int = field(default=0, metadata={"help": "truncate longer examples (time steps, 0 = no limit)"})
    bucket: bool = field(default=True, metadata={"help": "group examples of similar length into batches"})

    def __post_init__(self) -> None:
        for name in ("data", "val"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name} must be a non-empty file path or unset, got {value!r}")
        check_float("val_fraction", self.val_fraction, 0.0, 0.5)
        check_choice("tokens", self.tokens, ("chars", "words"))
        check_choice("scaling", self.scaling, tuple(SCALINGS))
        check_int("max_vocab", self.max_vocab, 3, 2**24)
        check_int("max_length", self.max_length, 0)
        check_bool("bucket", self.bucket)


@dataclass(frozen=True)
class ClassifyTrainConfig(TrainConfig):
    """The trainer's settings plus the classifier's objective and the metric early stopping follows.

    Early stopping is on by default: a classifier learns a small training set by heart and from then on its
    validation loss rises (1.12 to 2.84 on the Python-identifiers set of issue 23); ``best.pt``, which eval and
    predict load, is the best evaluation, and ``patience`` evaluations without a better one end the run.
    """

    patience: int = field(
        default=5,
        metadata={"help": "stop after this many evaluations without a better --monitor (ties: lower loss) (evals, "
                  "0 = off)"},
    )  # fmt: skip
    monitor: str = field(
        default="accuracy", metadata={"help": "metric for best.pt and early stopping: accuracy or macro_f1"}
    )
    class_weights: str = field(default="none", metadata={"help": "none, or balanced (weight n / (C * n_c) per class)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the cross-entropy, in [0, 1)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("monitor", self.monitor, ("accuracy", "macro_f1"))
        check_choice("class_weights", self.class_weights, ("none", "balanced"))
        check_float("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class ClassifyConfig(RunConfig):
    """The whole classification run: ``model``, ``data`` and ``train`` sections."""

    model: ClassifyModelConfig = field(default_factory=ClassifyModelConfig)
    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    train: ClassifyTrainConfig = field(default_factory=ClassifyTrainConfig)

    SAVED_BEFORE: ClassVar[dict[tuple[str, str], Any]] = {("model", "ngrams"): 0}  # runs from before the bag had none


class _ClassifyTokens(nn.Module):
    """Export graph (``rnnkit export``) of a text classifier: tokens (B, T) int64, lengths (B,) int64 -> logits
    (B, C). The argument names are the TorchScript file's input names, as ``Graph.input_names`` are ONNX's."""

    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        return self.model(tokens, lengths)


class _ClassifySeries(_ClassifyTokens):
    """Export graph of a series classifier: series (B, T, D) float32, lengths (B,) int64 -> logits (B, C)."""

    def forward(self, series: Tensor, lengths: Tensor) -> Tensor:
        return self.model(series, lengths)


MAX_CLASSES = 2_000  # the confusion matrix is C x C int64 (32 MB at 2,000), made at every evaluation


def _natural_order(labels: set[str]) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), others in code-point order."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


class _Encoded:
    """Examples as model inputs: a list of (T_i,) id tensors or (T_i, D) float tensors, label ids, lengths."""

    def __init__(self, inputs: list[Tensor], targets: Tensor | None, unknown_tokens: int = 0) -> None:
        self.inputs, self.targets, self.unknown_tokens = inputs, targets, unknown_tokens
        self.lengths = [x.size(0) for x in inputs]

    def batch(self, idx: Tensor | list[int]) -> tuple[Tensor, Tensor, Tensor | None]:
        idx = idx.tolist() if isinstance(idx, Tensor) else idx
        x, lengths = pad_sequences([self.inputs[i] for i in idx])  # (B, T) or (B, T, D), (B,)
        y = None if self.targets is None else self.targets[idx]
        return x, lengths, y


class ClassifyTask(Task):
    """``rnnkit train classify``: one label per sequence (text or time series)."""

    name = "classify"
    title = "classify"
    help = "sequence classifier (text or time series)"
    commands = (
        Command("eval", "score", "scores", "accuracy, macro-F1 and recall on labelled examples", (DATA,)),
        Command("predict", "predict_rows", "table", "the label and class probabilities of each input", (
            Flag("--data", "examples to label (.tsv, .csv, .ts or .npz; labels ignored)", required=True,
                 metavar="FILE"),
        )),
    )  # fmt: skip
    Config = ClassifyConfig
    higher_is_better = True
    tuned = (
        Param("model", "embedding_size", choices=(32, 64, 128)),
        Param("model", "bidirectional", choices=(True, False)),
        Param("model", "pooling", choices=tuple(POOLINGS)),
        Param("model", "head_size", choices=(0, 64, 128)),
        Param("model", "ngrams", choices=(0, 3, 5)),
        Param("train", "label_smoothing", low=0.0, high=0.2),
    )

    @property
    def primary(self) -> str:  # type: ignore[override]
        return self.config.train.monitor

    @property
    def kind(self) -> str:
        """What the run classifies: "text" or "series"."""
        return self.input.kind

    @property
    def vocab(self) -> TokenVocab | None:
        """A text run's token vocabulary (None for series)."""
        return getattr(self.input, "vocab", None)

    # --- data ---------------------------------------------------------------------------------------------------

    def prepare(self, artefacts: dict[str, Any] | None) -> None:
        d = self.config.data
        if d.data is None:
            raise ConfigError("classify needs --data FILE (a .tsv, .csv, .ts or .npz file of labelled examples)")
        train = read_examples(d.data)
        val = read_examples(d.val) if d.val is not None else None
        if val is not None and val.kind != train.kind:
            raise DataError(f"{d.val}: holds {val.kind} examples, but {d.data} holds {train.kind}")
        if artefacts is not None:
            self.restore(artefacts)
        else:
            self._fit(train)
        if val is None and d.val_fraction > 0:
            tr, va = stratified_split(train.labels, d.val_fraction, self.config.train.seed)
            val = Examples(train.kind, [train.inputs[i] for i in va], [train.labels[i] for i in va], train.source)
            train = Examples(train.kind, [train.inputs[i] for i in tr], [train.labels[i] for i in tr], train.source)
        self.train_set = self.encode(train)
        self.val_set = self.encode(val) if val is not None and len(val) else self.train_set
        self.val_is_train = self.val_set is self.train_set
        self.counts = torch.bincount(self.train_set.targets, minlength=len(self.labels))
        self.weight = self._class_weights()

    def _fit(self, train: Examples) -> None:
        """The label set, and the vocabulary (text) or the channel statistics (series), from the training file."""
        found = set(train.labels)
        if len(found) < 2:
            raise DataError(f"{train.source}: a classifier needs at least 2 classes, found only {sorted(found)}")
        if len(found) > MAX_CLASSES:  # each evaluation keeps a C x C confusion matrix; 10,000 classes hung the plot
            raise DataError(f"{train.source}: {len(found):,} classes, more than the {MAX_CLASSES:,} a classifier "
                            "here takes (is the label column the right one?)")  # fmt: skip
        declared = train.declared_labels
        self.labels = list(declared) if declared and found <= set(declared) else _natural_order(found)
        self.input = INPUTS[train.kind](self.config.data, self.config.model).fit(train)

    def encode(self, examples: Examples, *, with_labels: bool = True) -> _Encoded:
        """Model inputs for ``examples``; a label outside the run's label set is a DataError."""
        if examples.kind != self.kind:
            raise DataError(f"{examples.source}: holds {examples.kind} examples, but this run classifies {self.kind}")
        inputs, unknown_tokens = self.input.encode(examples, self.config.data.max_length or None)
        targets = None
        if with_labels and examples.labels is not None:
            index = {y: i for i, y in enumerate(self.labels)}
            bad = sorted({y for y in examples.labels if y not in index})
            if bad:
                raise DataError(f"{examples.source}: label {bad[0]!r} is not in the run's label set {self.labels}")
            targets = torch.tensor([index[y] for y in examples.labels], dtype=torch.long)
        return _Encoded(inputs, targets, unknown_tokens)

    def restore(self, artefacts: dict[str, Any]) -> None:
        self.labels = list(artefacts["labels"])
        self.input = INPUTS[artefacts["kind"]](self.config.data, self.config.model).restore(artefacts)

    def artefacts(self) -> dict[str, Any]:
        return {"labels": self.labels, "kind": self.kind, **self.input.artefacts()}

    def write_files(self, run_dir: Path) -> None:
        labels = {"labels": self.labels, "kind": self.kind, "train_counts": self.counts.tolist()}
        atomic_write_json(run_dir / "labels.json", labels | self.input.summary())
        self.input.write_files(run_dir)

    def build_model(self) -> SequenceClassifier:
        return self.input.build_model(self.config.model, len(self.labels))

    def export_graphs(self, model: SequenceClassifier) -> list:
        """One graph: the padded batch (``tokens`` or ``series``) and its ``lengths`` in, the ``logits`` out (a tensor;
        softmax them for probabilities)."""
        from rnnkit.export import Graph, to_torch_modules

        lengths = torch.tensor([4, 2, 3])  # ragged, so the trace records the packed path the lengths take
        x = self.input.example(3, 4)
        name, cls = ("tokens", _ClassifyTokens) if self.input.kind == "text" else ("series", _ClassifySeries)
        axes = {name: {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "logits": {0: "batch"}}
        return [Graph(cls(to_torch_modules(model).eval()), (x, lengths), [name, "lengths"], ["logits"], axes)]

    def describe(self) -> dict[str, Any]:
        return {
            "train_examples": len(self.train_set.inputs), "val_examples": len(self.val_set.inputs),
            "validates_on_training_set": self.val_is_train, "classes": len(self.labels), "inputs": self.kind,
            "padding_share": self._buckets(0, 1).padding_share(0),
        }  # fmt: skip

    # --- training and evaluation ----------------------------------------------------------------------------------

    def _buckets(self, rank: int, world_size: int) -> LengthBuckets:
        cfg = self.config
        return LengthBuckets(self.train_set.lengths, cfg.train.batch_size, cfg.train.seed, bucket=cfg.data.bucket,
                             rank=rank, world_size=world_size)  # fmt: skip

    def batches(self, rank: int, world_size: int) -> BucketBatches:
        return BucketBatches(self.train_set, self._buckets(rank, world_size), lambda batch: batch[0].size(0))

    def validation_batch(self):
        """The first batch of the validation set (in the training batches' form)."""
        cfg = self.config.train
        buckets = LengthBuckets(self.val_set.lengths, cfg.batch_size, cfg.seed, bucket=self.config.data.bucket)
        return BucketBatches(self.val_set, buckets, lambda batch: batch[0].size(0)).get(0, 0)

    def _class_weights(self) -> Tensor | None:
        if self.config.train.class_weights == "none":
            return None
        counts = self.counts.double()
        weights = counts.sum() / (len(counts) * counts.clamp(min=1))  # n / (C * n_c), scikit-learn's "balanced"
        return weights.float()

    def loss(self, model: nn.Module, batch, state, device: torch.device) -> tuple[Tensor, None]:
        x, lengths, y = batch
        logits = at_least_fp32(model(x.to(device), lengths))  # (B, C); the loss in fp32 under bf16 autocast too
        weight = None if self.weight is None else self.weight.to(device)
        return F.cross_entropy(
            logits, y.to(device), weight=weight, label_smoothing=self.config.train.label_smoothing
        ), None

    @torch.no_grad()
    def predict_proba(self, model: nn.Module, data: _Encoded, device="cpu", batch_size: int = 256, *,
                      rank: int = 0, world_size: int = 1) -> tuple[Tensor, list[int]]:  # fmt: skip
        """Class probabilities (N_r, C) of this rank's share of ``data``, and the example indices they belong to.

        Examples are scored in order of length (little padding); a row's result does not depend on its batch.
        """
        was_training = model.training
        model.eval()
        order = sorted(range(len(data.inputs)), key=lambda i: data.lengths[i])[rank::world_size]
        probs = []
        for start in range(0, len(order), batch_size):
            x, lengths, _ = data.batch(order[start : start + batch_size])
            probs.append(torch.softmax(model(x.to(device), lengths).float(), -1).cpu())  # (b, C)
        model.train(was_training)
        C = len(self.labels)
        return (torch.cat(probs) if probs else torch.zeros(0, C)), order

    def predict(self, model: nn.Module, inputs: Examples | list, device="cpu") -> tuple[list[str], Tensor]:
        """Labels and class probabilities (N, C) for ``inputs`` (texts, (T, D) arrays, or ``Examples``), in order."""
        if not isinstance(inputs, Examples):
            inputs = as_examples(inputs)
        probs, order = self.predict_proba(model, self.encode(inputs, with_labels=False), device)
        by_input = torch.empty_like(probs)
        by_input[torch.tensor(order, dtype=torch.long)] = probs  # back to input order
        return [self.labels[i] for i in by_input.argmax(-1).tolist()], by_input

    def scores(self, model: nn.Module, data: _Encoded, device="cpu", dist_info=None) -> dict[str, Any]:
        """Loss, accuracy, macro-F1, per-class recall, and the confusion matrix of ``data`` (labels needed)."""
        rank, world = (dist_info.rank, dist_info.world_size) if dist_info is not None else (0, 1)
        probs, order = self.predict_proba(model, data, device, rank=rank, world_size=world)
        y = data.targets[order]
        C = len(self.labels)
        conf = confusion_matrix(y, probs.argmax(-1), C) if len(order) else torch.zeros(C, C, dtype=torch.long)
        nll = float(-torch.log(probs.gather(1, y[:, None]).clamp(min=1e-30)).sum()) if len(order) else 0.0
        if dist_info is not None and dist_info.enabled:
            totals = all_reduce([nll, *conf.flatten().double().tolist()], "sum", dist_info, torch.device(device))
            nll, conf = totals[0], torch.tensor(totals[1:]).round().long().view(C, C)
        m = classification_metrics(conf)
        return {"loss": nll / max(m["n"], 1), **m, "confusion": conf}

    def evaluate(self, model: nn.Module, device: torch.device, dist_info) -> dict[str, float]:
        m = self.scores(model, self.val_set, device, dist_info)
        self.last_confusion = m["confusion"]  # the plot at the end shows the last step's evaluation
        return {"loss": m["loss"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    def plots(self, model: nn.Module, run_dir: Path, device: torch.device) -> None:
        conf = getattr(self, "last_confusion", None)
        if conf is None:  # a resumed run that had already finished: nothing evaluated in this session
            conf = self.scores(model, self.val_set, device)["confusion"]
        where = "training set" if self.val_is_train else "validation set"
        title = f"confusion matrix, {where} (last step)"
        plot_confusion(conf, self.labels, run_dir / "confusion.png", title)

    # --- inference commands -----------------------------------------------------------------------------------

    def score(self, model: nn.Module, *, data: str) -> dict[str, Any]:
        """``rnnkit eval``: accuracy, macro-F1, loss and per-class recall on the labelled examples in ``data``."""
        encoded = self.encode(read_examples(data))
        m = self.scores(model, encoded)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "loss": m["loss"], "n": m["n"],
                "recall": dict(zip(self.labels, m["recall"], strict=True)),
                "unknown_tokens": encoded.unknown_tokens}  # fmt: skip

    def predict_rows(self, model: nn.Module, *, data: str) -> Table:
        """``rnnkit predict``: each input's label and class probabilities, in input order (labels are ignored)."""
        labels, probs = self.predict(model, read_examples(data, labels="optional"))
        rows = ([label, *(f"{p:.6f}" for p in row)] for label, row in zip(labels, probs.tolist(), strict=True))
        return Table(["label", *(f"p_{label}" for label in self.labels)], rows)
