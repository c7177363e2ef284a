"""The classifier's parts: its inputs (text or series), its pooling over time, and the model they make.

    TextInput    tokens (B, T) --embedding--> (B, T, E)       vocabulary fitted on the training texts
    SeriesInput  series (B, T, D) --standardise--> (B, T, D)  per-channel mean and std fitted on the training data

    --rnnkit.RNN (lengths)--> (B, T, K*H) --pooling over the valid steps--> (B, K*H) --MLP--> logits (B, C)

An input is a strategy ``ClassifyTask`` asks instead of branching on the data's kind: it fits what it learns from
the training examples, encodes examples as model inputs, saves and restores its artefacts, and builds the model
with its input layer. A pooling is an ``nn.Module`` chosen by the config's ``pooling`` string (``POOLINGS``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.config import RecurrentConfig
from rnnkit.data.labelled import Examples, TokenVocab
from rnnkit.errors import DataError
from rnnkit.init import initialise_
from rnnkit.io import atomic_write_json
from rnnkit.recurrent import RNN
from rnnkit.sequence import lengths_to_mask

# the configs are rnnkit.tasks.classification's ClassifyModelConfig (a RecurrentConfig with the classifier's own
# fields) and ClassifyDataConfig, typed loosely here: that module imports this one
ClassifyModelConfig = RecurrentConfig
ClassifyDataConfig = Any

__all__ = [
    "INPUTS",
    "POOLINGS",
    "AttentionPooling",
    "LastPooling",
    "MaxPooling",
    "MeanPooling",
    "SequenceClassifier",
    "SeriesInput",
    "Standardise",
    "TextInput",
    "as_examples",
]


# --- pooling over time ------------------------------------------------------------------------------------------


class Pooling(nn.Module):
    """The RNN's outputs y (B, T, K*H) (zero past each length), lengths (B,), mask (B, T, 1) of the valid steps
    and final state -> one vector (B, K*H) per row, from the valid steps only."""

    def __init__(self, width: int, directions: int) -> None:
        super().__init__()
        self.width, self.directions = width, directions

    def forward(self, y: Tensor, lengths: Tensor, mask: Tensor, state: Any) -> Tensor:
        raise NotImplementedError


class LastPooling(Pooling):
    """The final state of each direction of the last layer: the forward one at the row's last valid step, the
    backward one at step 0."""

    def forward(self, y: Tensor, lengths: Tensor, mask: Tensor, state: Any) -> Tensor:
        h = state.h if isinstance(state, tuple) else state  # (L*K, B, H)
        return torch.cat(list(h[-self.directions :]), dim=-1)  # (B, K*H)


class MeanPooling(Pooling):
    """The mean over the valid steps."""

    def forward(self, y: Tensor, lengths: Tensor, mask: Tensor, state: Any) -> Tensor:
        return y.sum(1) / lengths.to(y.device, y.dtype).unsqueeze(1)  # (B, K*H); y is zero past each length


class MaxPooling(Pooling):
    """The maximum over the valid steps, per unit."""

    def forward(self, y: Tensor, lengths: Tensor, mask: Tensor, state: Any) -> Tensor:
        return y.masked_fill(~mask, float("-inf")).amax(1)  # (B, K*H)


class AttentionPooling(Pooling):
    """A learned score per step, softmax over the valid steps, weighted sum (Bahdanau-style, as in Yang et al.
    2016): a_t = softmax_t(v^T tanh(W y_t + b)), pooled = sum_t a_t y_t."""

    def __init__(self, width: int, directions: int) -> None:
        super().__init__(width, directions)
        self.score = nn.Linear(width, 1)  # v (and a bias, which the softmax ignores)
        self.attend = nn.Linear(width, width)  # W, b

    def weights(self, y: Tensor, mask: Tensor) -> Tensor:
        """a (B, T, 1), zero past each length."""
        e = self.score(torch.tanh(self.attend(y))).masked_fill(~mask, float("-inf"))  # (B, T, 1)
        return torch.softmax(e, dim=1)

    def forward(self, y: Tensor, lengths: Tensor, mask: Tensor, state: Any) -> Tensor:
        return (self.weights(y, mask) * y).sum(1)  # (B, K*H)


POOLINGS: dict[str, type[Pooling]] = {
    "last": LastPooling,
    "mean": MeanPooling,
    "max": MaxPooling,
    "attention": AttentionPooling,
}


# --- the model ------------------------------------------------------------------------------------------------


class Standardise(nn.Module):
    """A series' input layer: (x - mean) / std per channel, set from the training set; a missing value (NaN) becomes
    the channel mean, 0 after standardising."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return torch.nan_to_num((x - self.mean) / self.std, nan=0.0)  # (B, T, D)


class SequenceClassifier(nn.Module):
    """Embedding (``vocab_size``) or per-channel standardisation (``input_channels``) -> RNN -> pooling -> MLP.

    ``forward(x, lengths) -> logits (B, C)``: x is (B, T) int64 token ids (padding 0) or (B, T, D) float series
    (NaN allowed: missing values become the channel mean); ``lengths`` (B,) the valid steps of each row.
    """

    # Checkpoints written before inputs and poolings were modules kept these at the top level; they load as before.
    _OLD_KEYS: ClassVar[dict[str, str]] = {
        "mean": "embedding.mean", "std": "embedding.std", "score.weight": "pool.score.weight",
        "score.bias": "pool.score.bias", "attend.weight": "pool.attend.weight", "attend.bias": "pool.attend.bias",
    }  # fmt: skip

    def __init__(self, config: ClassifyModelConfig, num_classes: int, *, vocab_size: int = 0,
                 input_channels: int = 0) -> None:  # fmt: skip
        super().__init__()
        if (vocab_size > 0) == (input_channels > 0):
            raise ValueError(
                f"give exactly one of vocab_size and input_channels, got {vocab_size} and {input_channels}"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.config, self.num_classes = config, num_classes
        if vocab_size:
            self.embedding = nn.Embedding(vocab_size, config.embedding_size, padding_idx=0)
            D = config.embedding_size
        else:
            self.embedding = Standardise(input_channels)  # its statistics are set from the training set
            D = input_channels
        K, H = 2 if config.bidirectional else 1, config.hidden_size
        self.rnn = RNN(config.mode, D, H, config.num_layers, dropout=config.dropout,
                       bidirectional=config.bidirectional, backend=config.backend, **config.rnn_options())  # fmt: skip
        self.pool = POOLINGS[config.pooling](K * H, K)
        self.drop = nn.Dropout(config.dropout)
        if config.head_size:
            self.head = nn.Sequential(nn.Linear(K * H, config.head_size), nn.ReLU(), nn.Dropout(config.dropout),
                                      nn.Linear(config.head_size, num_classes))  # fmt: skip
        else:
            self.head = nn.Linear(K * H, num_classes)
        initialise_(self.rnn, config.init)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for old, new in self._OLD_KEYS.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode(self, x: Tensor) -> Tensor:
        """The RNN's input: token embeddings (B, T) -> (B, T, E), or standardised series (B, T, D)."""
        return self.embedding(x)

    def features(self, x: Tensor, lengths: Tensor) -> Tensor:
        """The pooled representation (B, K*H) of a padded batch."""
        y, state = self.rnn(self.encode(x), lengths=lengths)  # y (B, T, K*H), zero past each length
        mask = lengths_to_mask(lengths.to(y.device), y.size(1)).unsqueeze(-1)  # (B, T, 1)
        return self.pool(y, lengths, mask, state)  # (B, K*H)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x (B, T) or (B, T, D), lengths (B,) -> logits (B, C)."""
        return self.head(self.drop(self.features(x, lengths)))

    def attention(self, x: Tensor, lengths: Tensor) -> Tensor:
        """The attention weights (B, T) of ``pooling="attention"`` (zero past each length)."""
        if not isinstance(self.pool, AttentionPooling):
            raise ValueError(f"attention needs pooling='attention', got {self.config.pooling!r}")
        y, _ = self.rnn(self.encode(x), lengths=lengths)  # (B, T, K*H)
        mask = lengths_to_mask(lengths.to(y.device), y.size(1)).unsqueeze(-1)  # (B, T, 1)
        return self.pool.weights(y, mask).squeeze(-1)  # (B, T)


# --- inputs -------------------------------------------------------------------------------------------------------


class TextInput:
    """Text cut into characters or words (``tokens``), as ids of a vocabulary of the training set's ``max_vocab``
    most frequent tokens; any other token is <unk> (id 1) and counted."""

    kind: ClassVar[str] = "text"

    def __init__(self, data: ClassifyDataConfig) -> None:
        self.tokens, self.max_vocab = data.tokens, data.max_vocab
        self.vocab: TokenVocab | None = None

    def split(self, text: str) -> list[str]:
        return text.split() if self.tokens == "words" else list(text)

    def fit(self, train: Examples) -> TextInput:
        self.vocab = TokenVocab.build([self.split(t) for t in train.inputs], self.max_vocab)
        return self

    def encode(self, examples: Examples, cap: int | None) -> tuple[list[Tensor], int]:
        """(T_i,) id tensors of the first ``cap`` tokens of each example, and the count of unknown tokens."""
        inputs, unknown_tokens = [], 0
        for i, text in enumerate(examples.inputs):
            tokens = self.split(text)[:cap]
            if not tokens:
                raise DataError(f"{examples.source}: example {i + 1} has no tokens")
            ids, unknown = self.vocab.encode(tokens)
            inputs.append(ids)
            unknown_tokens += unknown
        return inputs, unknown_tokens

    def artefacts(self) -> dict[str, Any]:
        return {"tokens": self.vocab.tokens}

    def restore(self, artefacts: dict[str, Any]) -> TextInput:
        self.vocab = TokenVocab(list(artefacts["tokens"]))
        return self

    def summary(self) -> dict[str, Any]:
        """What labels.json says of the inputs."""
        return {"tokens": self.tokens, "vocab_size": len(self.vocab)}

    def write_files(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / "vocab.json", {"format": "rnnkit.tokens/1", "tokens": self.vocab.tokens})

    def build_model(self, config: ClassifyModelConfig, num_classes: int) -> SequenceClassifier:
        return SequenceClassifier(config, num_classes, vocab_size=len(self.vocab))

    def example(self, batch: int, time: int) -> Tensor:
        """A model input of this kind, (batch, time), for tracing an export."""
        return torch.ones(batch, time, dtype=torch.long)

    @staticmethod
    def convert(x: str) -> str:
        return x


class SeriesInput:
    """Float series (T_i, D), standardised per channel by the training set's mean and std (a constant channel is
    only centred); a missing value becomes the channel's mean."""

    kind: ClassVar[str] = "series"

    def __init__(self, data: ClassifyDataConfig) -> None:
        self.channels, self.mean, self.std = 0, None, None

    def fit(self, train: Examples) -> SeriesInput:
        channels = {x.shape[1] for x in train.inputs}
        if len(channels) != 1:
            raise DataError(f"{train.source}: examples have different numbers of channels: {sorted(channels)}")
        values = np.concatenate(train.inputs, axis=0).astype(np.float64)  # (sum T_i, D)
        self.channels = channels.pop()
        self.mean = torch.tensor(np.nan_to_num(np.nanmean(values, axis=0)), dtype=torch.float32)
        std = torch.tensor(np.nan_to_num(np.nanstd(values, axis=0)), dtype=torch.float32)
        self.std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant channel is only centred
        return self

    def encode(self, examples: Examples, cap: int | None) -> tuple[list[Tensor], int]:
        """(T_i, D) float32 tensors of the first ``cap`` steps of each example (and 0 unknown tokens)."""
        inputs = []
        for i, x in enumerate(examples.inputs):
            if x.shape[1] != self.channels:
                raise DataError(
                    f"{examples.source}: example {i + 1} has {x.shape[1]} channels, expected {self.channels}"
                )
            inputs.append(torch.from_numpy(np.ascontiguousarray(x[:cap], dtype=np.float32)))
        return inputs, 0

    def artefacts(self) -> dict[str, Any]:
        return {"channels": self.channels, "mean": self.mean, "std": self.std}

    def restore(self, artefacts: dict[str, Any]) -> SeriesInput:
        self.channels = int(artefacts.get("channels", 0))
        self.mean, self.std = artefacts.get("mean"), artefacts.get("std")
        return self

    def summary(self) -> dict[str, Any]:
        return {"channels": self.channels, "mean": self.mean.tolist(), "std": self.std.tolist()}

    def write_files(self, run_dir: Path) -> None:
        """Nothing beyond labels.json."""

    def build_model(self, config: ClassifyModelConfig, num_classes: int) -> SequenceClassifier:
        model = SequenceClassifier(config, num_classes, input_channels=self.channels)
        model.embedding.mean.copy_(self.mean)
        model.embedding.std.copy_(self.std)
        return model

    def example(self, batch: int, time: int) -> Tensor:
        return torch.zeros(batch, time, self.channels)

    @staticmethod
    def convert(x: Any) -> np.ndarray:
        return np.asarray(x, np.float32)


INPUTS: dict[str, type[TextInput | SeriesInput]] = {"text": TextInput, "series": SeriesInput}


def as_examples(inputs: list) -> Examples:
    """Unlabelled examples of raw inputs: texts if every input is a string, else (T, D) series."""
    cls = TextInput if all(isinstance(x, str) for x in inputs) else SeriesInput
    return Examples(cls.kind, [cls.convert(x) for x in inputs], None, "inputs")
