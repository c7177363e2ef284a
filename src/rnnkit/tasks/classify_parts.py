"""The classifier's parts: its inputs (text or series), its pooling over time, and the model they make.

    TextInput    tokens (B, T) --embedding--> (B, T, E)       vocabulary fitted on the training texts
    SeriesInput  series (B, T, D) --scaling--> (B, T, D)      ``SCALINGS``: per channel by the training set's mean
                                                               and std (``dataset``), or each series to mean 0, std 1
                                                               (``series``, the UCR convention)

    --rnnkit.RNN (lengths)--> (B, T, K*H) --pooling over the valid steps--> (B, K*H) --MLP--> logits (B, C)

beside the RNN, text's bag of hashed n-grams (``NgramBag``, (B, E)) or a series' convolutional branch
(``ConvBranch``, (B, F)), concatenated to the pooled features before the MLP.

An input is a strategy ``ClassifyTask`` asks instead of branching on the data's kind: it fits what it learns from
the training examples, encodes examples as model inputs, saves and restores its artefacts, and builds the model
with its input layer. A pooling is an ``nn.Module`` chosen by the config's ``pooling`` string (``POOLINGS``), and a
series' scaling one chosen by ``scaling`` (``SCALINGS``).

A series' first recurrent layer takes its input weights at fan-in scale (``init_input_weights_``): torch.nn's
uniform(+-1/sqrt(H)) init is for inputs as wide as the hidden state, and a series has D = 1 to a few channels, so
with H = 128 a standardised series reached the gates at a twentieth of unit scale. In that nearly linear regime the
mean over time of the RNN's output is close to a linear filter's mean, which is the same (zero) for every series of
mean zero: the pooled features did not differ between series and training sat at the class prior (UCR ArrowHead).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
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
    "SCALINGS",
    "AttentionPooling",
    "LastPooling",
    "MaxPooling",
    "MeanPooling",
    "NgramBag",
    "SequenceClassifier",
    "SeriesInput",
    "Standardise",
    "TextInput",
    "ZNormalise",
    "as_examples",
    "init_input_weights_",
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


class NgramBag(nn.Module):
    """A bag of hashed token n-grams beside the RNN (fastText's features, Joulin et al. 2017): every 1- to
    ``ngrams``-gram of each row's tokens, the row padded with a boundary mark at both ends as scikit-learn's
    ``char_wb`` pads a word, hashed into ``buckets`` rows of an embedding table and averaged.

    ``forward(x, lengths) -> (B, E)``. The hash is a function of the token ids alone, so the bag needs no
    vocabulary of its own: a saved model hashes new text as it hashed its training text.

    Why beside the RNN: a recurrent net reads a word's spelling letter by letter and has to learn for itself which
    letter groups mark a language; from 72,000 words it learned them less well than a linear model on n-gram counts
    (benchmarks/classify_words.py). The bag hands the head those counts directly, and the RNN adds what an n-gram
    cannot see (order across the whole word).
    """

    _PRIME = 2_147_483_629  # the largest prime below 2**31: products of a hash and a token id stay inside int64

    def __init__(self, ngrams: int, buckets: int, width: int, vocab_size: int) -> None:
        super().__init__()
        self.ngrams, self.buckets, self.boundary = ngrams, buckets, vocab_size  # no token id equals vocab_size
        self.embedding = nn.Embedding(buckets, width)
        nn.init.normal_(self.embedding.weight, std=width**-0.5)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        B, T = x.shape
        lengths = lengths.to(x.device).unsqueeze(1)  # (B, 1)
        # every gram length has the same T + 2 windows (no branch on T: an exported graph takes any length), over the
        # row with its marks and room for the longest gram to run past it; windows past a row's end are masked
        starts = torch.arange(T + 2, device=x.device)  # (T + 2,)
        padded = torch.cat([x.new_zeros(B, 1), x, x.new_zeros(B, self.ngrams)], dim=1)  # (B, T + 1 + N)
        columns = torch.arange(padded.size(1), device=x.device)
        marks = (columns == 0) | (columns == lengths + 1)  # (B, T + 1 + N): before and after the row's tokens
        padded = torch.where(marks, torch.full_like(padded, self.boundary), padded)
        ids, valid = [], []
        for n in range(1, self.ngrams + 1):
            h = torch.full_like(padded[:, : T + 2], n)  # (B, T + 2); n in the hash: 'ab' and 'b' differ
            for k in range(n):
                h = (h * (self.boundary + 1) + padded[:, k : k + T + 2]) % self._PRIME
            inside = starts + n <= lengths + 2  # (B, T + 2): ends at or before the closing mark
            if n == 1:  # a lone boundary mark is no feature
                inside = inside & (starts >= 1) & (starts <= lengths)
            ids.append(h % self.buckets)
            valid.append(inside)
        ids, valid = torch.cat(ids, dim=1), torch.cat(valid, dim=1).unsqueeze(-1)  # (B, N (T + 2)), (B, N (T + 2), 1)
        bag = (self.embedding(ids) * valid).sum(1)  # (B, E)
        return bag / valid.sum(1).clamp_min(1)


def ngram_buckets_for(distinct: int, width: int) -> int:
    """Hash buckets for a bag over ``distinct`` n-grams of the training set: the power of two at or above it (about one
    n-gram per bucket), kept to 4M weights (16 MB) in all. A larger table's gradient, allocated at every step, is
    past glibc's largest mmap threshold (32 MB), so each step would take it fresh from the kernel, page by page."""
    return min(1 << max(distinct - 1, 1).bit_length(), max(1024, (1 << 22) // width))


def distinct_ngrams(token_lists: list[list[str]], ngrams: int) -> int:
    """How many different 1- to ``ngrams``-grams the token lists hold, each list marked at both ends (NgramBag's)."""
    seen: set[tuple[str, ...]] = set()
    for tokens in token_lists:
        marked = [None, *tokens, None]
        for n in range(1, ngrams + 1):
            seen.update(tuple(marked[i : i + n]) for i in range(len(marked) - n + 1))
    return len(seen - {(None,)})


class ConvBranch(nn.Module):
    """A fully convolutional branch beside the RNN, for series: FCN (Wang et al. 2017), three blocks of

        conv (kernel 8, 5, 3; F, 2F, F filters; "same" padding) -> batch norm -> ReLU

    averaged over the valid steps, (B, F); LSTM-FCN (Karim et al. 2018) feeds the head these beside the RNN's
    features. Convolutions find a series' local shapes wherever they occur, which a recurrent net trained on a
    few dozen series finds slowly. Every block's output is zeroed past each row's length, so a padded series gives
    what it gives alone (in evaluation; batch norm's training statistics count the padded steps).
    ``forward(x, lengths) -> (B, F)`` from the scaled series x (B, T, D).
    """

    KERNELS: ClassVar[tuple[int, ...]] = (8, 5, 3)

    def __init__(self, channels: int, filters: int) -> None:
        super().__init__()
        widths = (channels, filters, 2 * filters, filters)
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, k) for a, b, k in zip(widths[:-1], widths[1:], self.KERNELS, strict=True)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(b) for b in widths[1:])

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        mask = lengths_to_mask(lengths.to(x.device), x.size(1)).unsqueeze(1).to(x.dtype)  # (B, 1, T)
        h = x.transpose(1, 2) * mask  # (B, D, T)
        for conv, norm, k in zip(self.convs, self.norms, self.KERNELS, strict=True):
            h = torch.relu(norm(conv(F.pad(h, ((k - 1) // 2, k // 2))))) * mask  # (B, F_i, T): "same", as Keras pads
        return h.sum(2) / mask.sum(2).clamp_min(1)  # (B, F)


class Standardise(nn.Module):
    """A series' input layer: (x - mean) / std per channel, set from the training set; a missing value (NaN) becomes
    the channel mean, 0 after standardising."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return torch.nan_to_num((x - self.mean) / self.std, nan=0.0)  # (B, T, D)


class ZNormalise(nn.Module):
    """A series' input layer: each series, each channel to mean 0 and standard deviation 1 over its valid steps (the
    UCR convention; the population std, ddof 0). A constant channel is only centred (all 0); a missing value (NaN)
    is left out of the statistics and becomes 0, the series' mean. Nothing is learned or fitted.

        m = sum_t x_t / n,   s = sqrt(sum_t (x_t - m)^2 / n),   z_t = (x_t - m) / s     over the n valid steps
    """

    eps: ClassVar[float] = 1e-8  # a channel whose std is below this is constant: only centred

    def __init__(self, channels: int) -> None:
        super().__init__()

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        valid = lengths_to_mask(lengths.to(x.device), x.size(1)).unsqueeze(-1) & ~torch.isnan(x)  # (B, T, D)
        x0 = torch.where(valid, x, torch.zeros_like(x))  # (B, T, D)
        n = valid.sum(1, keepdim=True).clamp(min=1).to(x.dtype)  # (B, 1, D)
        m = x0.sum(1, keepdim=True) / n  # (B, 1, D)
        var = (torch.where(valid, x0 - m, torch.zeros_like(x)) ** 2).sum(1, keepdim=True) / n  # (B, 1, D)
        # a constant channel is only centred; the clamp keeps sqrt's gradient at var 0 finite
        s = torch.where(var > self.eps**2, var.clamp(min=self.eps**2).sqrt(), torch.ones_like(var))  # (B, 1, D)
        return torch.where(valid, (x0 - m) / s, torch.zeros_like(x))  # (B, T, D), 0 where missing or padded


SCALINGS: dict[str, type[Standardise | ZNormalise]] = {"dataset": Standardise, "series": ZNormalise}


@torch.no_grad()
def init_input_weights_(rnn: nn.Module) -> nn.Module:
    """Redraw the first layer's input weights W_ih (G*H, D) (each direction) from U(-sqrt(3/D), sqrt(3/D)).

    Their variance is then 1/D (LeCun et al. 1998), so inputs of unit variance give gate pre-activations of unit
    variance whatever D is; torch.nn's U(-1/sqrt(H), 1/sqrt(H)) scales them by the hidden width instead, which for
    a series of D = 1 channel and H = 128 leaves the pre-activations at standard deviation 0.05. Returns ``rnn``.
    """
    found = False
    for name, w in rnn.named_parameters():
        if name in ("weight_ih_l0", "weight_ih_l0_reverse"):
            bound = math.sqrt(3.0 / w.shape[1])
            w.uniform_(-bound, bound)
            found = True
    if not found:
        raise ValueError(f"rnn must have a first-layer input weight named weight_ih_l0, got {type(rnn).__name__}")
    return rnn


class SequenceClassifier(nn.Module):
    """Embedding (``vocab_size``) or a series' scaling (``input_channels``, ``scaling`` one of ``SCALINGS``) -> RNN
    -> pooling -> MLP.

    ``forward(x, lengths) -> logits (B, C)``: x is (B, T) int64 token ids (padding 0) or (B, T, D) float series
    (NaN allowed: a missing value becomes 0 after scaling, the channel's or the series' mean); ``lengths`` (B,) the
    valid steps of each row.
    """

    # Checkpoints written before inputs and poolings were modules kept these at the top level; they load as before.
    _OLD_KEYS: ClassVar[dict[str, str]] = {
        "mean": "embedding.mean", "std": "embedding.std", "score.weight": "pool.score.weight",
        "score.bias": "pool.score.bias", "attend.weight": "pool.attend.weight", "attend.bias": "pool.attend.bias",
    }  # fmt: skip

    def __init__(self, config: ClassifyModelConfig, num_classes: int, *, vocab_size: int = 0,
                 input_channels: int = 0, scaling: str = "dataset", ngram_buckets: int = 0) -> None:  # fmt: skip
        super().__init__()
        if (vocab_size > 0) == (input_channels > 0):
            raise ValueError(
                f"give exactly one of vocab_size and input_channels, got {vocab_size} and {input_channels}"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {tuple(SCALINGS)}, got {scaling!r}")
        self.config, self.num_classes = config, num_classes
        if vocab_size:
            self.embedding = nn.Embedding(vocab_size, config.embedding_size, padding_idx=0)
            D = config.embedding_size
        else:
            self.embedding = SCALINGS[scaling](input_channels)  # Standardise's statistics: from the training set
            D = input_channels
        K, H = 2 if config.bidirectional else 1, config.hidden_size
        self.rnn = RNN(config.mode, D, H, config.num_layers, dropout=config.dropout,
                       bidirectional=config.bidirectional, backend=config.backend, **config.rnn_options())  # fmt: skip
        self.pool = POOLINGS[config.pooling](K * H, K)
        self.bag = None
        if vocab_size and config.ngrams:
            buckets = ngram_buckets or config.ngram_buckets or ngram_buckets_for(1 << 20, config.embedding_size)
            self.bag = NgramBag(config.ngrams, buckets, config.embedding_size, vocab_size)
        self.conv = ConvBranch(input_channels, config.conv_filters) if input_channels and config.conv_filters else None
        width = K * H + (config.embedding_size if self.bag is not None else 0)  # the head's input width
        width += config.conv_filters if self.conv is not None else 0
        self.drop = nn.Dropout(config.dropout)
        if config.head_size:
            self.head = nn.Sequential(nn.Linear(width, config.head_size), nn.ReLU(), nn.Dropout(config.dropout),
                                      nn.Linear(config.head_size, num_classes))  # fmt: skip
        else:
            self.head = nn.Linear(width, num_classes)
        initialise_(self.rnn, config.init)
        if input_channels:
            init_input_weights_(self.rnn)  # D is a few channels, not H wide: see the module docstring

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for old, new in self._OLD_KEYS.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        """The RNN's input: token embeddings (B, T) -> (B, T, E), or scaled series (B, T, D)."""
        return self.embedding(x) if isinstance(self.embedding, nn.Embedding) else self.embedding(x, lengths)

    def features(self, x: Tensor, lengths: Tensor) -> Tensor:
        """The pooled representation (B, K*H) of a padded batch, and after it the n-gram bag's (B, E) or the
        convolutional branch's (B, F) where on."""
        u = self.encode(x, lengths)  # (B, T, E or D)
        y, state = self.rnn(u, lengths=lengths)  # y (B, T, K*H), zero past each length
        mask = lengths_to_mask(lengths.to(y.device), y.size(1)).unsqueeze(-1)  # (B, T, 1)
        pooled = self.pool(y, lengths, mask, state)  # (B, K*H)
        if self.bag is not None:
            return torch.cat([pooled, self.bag(x, lengths)], dim=1)  # (B, K*H + E)
        if self.conv is not None:
            return torch.cat([pooled, self.conv(u, lengths)], dim=1)  # (B, K*H + F)
        return pooled

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x (B, T) or (B, T, D), lengths (B,) -> logits (B, C)."""
        return self.head(self.drop(self.features(x, lengths)))

    def attention(self, x: Tensor, lengths: Tensor) -> Tensor:
        """The attention weights (B, T) of ``pooling="attention"`` (zero past each length)."""
        if not isinstance(self.pool, AttentionPooling):
            raise ValueError(f"attention needs pooling='attention', got {self.config.pooling!r}")
        y, _ = self.rnn(self.encode(x, lengths), lengths=lengths)  # (B, T, K*H)
        mask = lengths_to_mask(lengths.to(y.device), y.size(1)).unsqueeze(-1)  # (B, T, 1)
        return self.pool.weights(y, mask).squeeze(-1)  # (B, T)


# --- inputs -------------------------------------------------------------------------------------------------------


class TextInput:
    """Text cut into characters or words (``tokens``), as ids of a vocabulary of the training set's ``max_vocab``
    most frequent tokens; any other token is <unk> (id 1) and counted."""

    kind: ClassVar[str] = "text"

    def __init__(self, data: ClassifyDataConfig, model: ClassifyModelConfig | None = None) -> None:
        self.tokens, self.max_vocab = data.tokens, data.max_vocab
        self.ngrams = getattr(model, "ngrams", 0)
        self.ngram_buckets = getattr(model, "ngram_buckets", 0)  # 0: fitted to the training set's n-grams
        self.width = getattr(model, "embedding_size", 0)
        self.vocab: TokenVocab | None = None

    def split(self, text: str) -> list[str]:
        return text.split() if self.tokens == "words" else list(text)

    def fit(self, train: Examples) -> TextInput:
        token_lists = [self.split(t) for t in train.inputs]
        self.vocab = TokenVocab.build(token_lists, self.max_vocab)
        if self.ngrams and not self.ngram_buckets:
            self.ngram_buckets = ngram_buckets_for(distinct_ngrams(token_lists, self.ngrams), self.width)
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
        return {"tokens": self.vocab.tokens, **({"ngram_buckets": self.ngram_buckets} if self.ngrams else {})}

    def restore(self, artefacts: dict[str, Any]) -> TextInput:
        self.vocab = TokenVocab(list(artefacts["tokens"]))
        self.ngram_buckets = int(artefacts.get("ngram_buckets", self.ngram_buckets))
        return self

    def summary(self) -> dict[str, Any]:
        """What labels.json says of the inputs."""
        bag = {"ngrams": self.ngrams, "ngram_buckets": self.ngram_buckets} if self.ngrams else {}
        return {"tokens": self.tokens, "vocab_size": len(self.vocab), **bag}

    def write_files(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / "vocab.json", {"format": "rnnkit.tokens/1", "tokens": self.vocab.tokens})

    def build_model(self, config: ClassifyModelConfig, num_classes: int) -> SequenceClassifier:
        return SequenceClassifier(config, num_classes, vocab_size=len(self.vocab), ngram_buckets=self.ngram_buckets)

    def example(self, batch: int, time: int) -> Tensor:
        """A model input of this kind, (batch, time), for tracing an export."""
        return torch.ones(batch, time, dtype=torch.long)

    @staticmethod
    def convert(x: str) -> str:
        return x


class SeriesInput:
    """Float series (T_i, D), scaled by the model's first layer as ``data.scaling`` says (``SCALINGS``): per channel
    by the training set's mean and std (``dataset``; a constant channel is only centred, a missing value becomes
    the channel's mean), or each series and channel to mean 0 and std 1 (``series``). The scaling is saved with the
    run's artefacts, so a reloaded run scales its inputs as it was trained to."""

    kind: ClassVar[str] = "series"

    def __init__(self, data: ClassifyDataConfig, model: ClassifyModelConfig | None = None) -> None:
        self.channels, self.mean, self.std = 0, None, None
        self.scaling = data.scaling

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
        return {"channels": self.channels, "mean": self.mean, "std": self.std, "scaling": self.scaling}

    def restore(self, artefacts: dict[str, Any]) -> SeriesInput:
        self.channels = int(artefacts.get("channels", 0))
        self.mean, self.std = artefacts.get("mean"), artefacts.get("std")
        self.scaling = artefacts.get("scaling", "dataset")  # runs from before the choice existed scaled by dataset
        return self

    def summary(self) -> dict[str, Any]:
        return {"channels": self.channels, "scaling": self.scaling, "mean": self.mean.tolist(),
                "std": self.std.tolist()}  # fmt: skip

    def write_files(self, run_dir: Path) -> None:
        """Nothing beyond labels.json."""

    def build_model(self, config: ClassifyModelConfig, num_classes: int) -> SequenceClassifier:
        model = SequenceClassifier(config, num_classes, input_channels=self.channels, scaling=self.scaling)
        if isinstance(model.embedding, Standardise):
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
