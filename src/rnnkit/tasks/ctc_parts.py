"""The CTC task's parts: its configuration, the acoustic model, encoded utterances, and the run folder's picture."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from rnnkit.config import (
    MODES,
    RecurrentConfig,
    RunConfig,
    TrainConfig,
    check_bool,
    check_choice,
    check_float,
    check_int,
    recurrent_field,
)
from rnnkit.errors import ConfigError
from rnnkit.init import initialise_
from rnnkit.precision import at_least_fp32
from rnnkit.recurrent import RNN

__all__ = ["CTCConfig", "CTCDataConfig", "CTCModel", "CTCModelConfig", "CTCTrainConfig", "plot_utterance"]

TOKENS = ("chars", "space")


@dataclass(frozen=True)
class CTCModelConfig(RecurrentConfig):
    """Log-mel features -> frame stacking (``subsample``) -> rnnkit.RNN -> linear to the symbols + blank."""

    mode: str = recurrent_field("mode", "gru", "recurrent cell: " + ", ".join(MODES))
    hidden_size: int = recurrent_field("hidden_size", 128)
    num_layers: int = recurrent_field("num_layers", 2)
    dropout: float = recurrent_field("dropout", 0.1, "dropout between layers and before the output layer, [0, 1)")
    bidirectional: bool = field(default=True, metadata={"help": "read each utterance both ways"})
    subsample: int = field(default=3, metadata={"help": "frames stacked into one RNN step: 2, 3 or 4 (10 ms each)"})
    n_mels: int = field(default=80, metadata={"help": "mel bands of the log-mel features (count)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("bidirectional", self.bidirectional)
        check_int("subsample", self.subsample, 1, 8)
        check_int("n_mels", self.n_mels, 8, 512)


@dataclass(frozen=True)
class CTCDataConfig:
    """The manifests, their tokens, what to do with utterances too short for their transcript, and SpecAugment."""

    data: str | None = field(default=None, metadata={"help": "training manifest: audio<TAB>transcript lines, or .npz"})
    val: str | None = field(default=None, metadata={"help": "validation manifest (unset: part of --data)"})
    val_fraction: float = field(default=0.05, metadata={"help": "without --val: share of utterances held out"})
    tokens: str = field(default="chars", metadata={"help": "transcript symbols: chars, or space (separated units)"})
    too_short: str = field(
        default="drop",
        metadata={"help": "an utterance with fewer frames (after subsampling) than its transcript needs: drop (with "
                  "a count) or error"},
    )  # fmt: skip
    specaugment: bool = field(default=False, metadata={"help": "SpecAugment time and frequency masks in training"})

    def __post_init__(self) -> None:
        for name in ("data", "val"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name} must be a non-empty file path or unset, got {value!r}")
        check_float("val_fraction", self.val_fraction, 0.0, 0.5)
        check_choice("tokens", self.tokens, TOKENS)
        check_choice("too_short", self.too_short, ("drop", "error"))
        check_bool("specaugment", self.specaugment)


@dataclass(frozen=True)
class CTCTrainConfig(TrainConfig):
    """The trainer's settings, with the CTC task's batch size."""

    batch_size: int = field(default=16, metadata={"help": "utterances per batch (count)"})


@dataclass(frozen=True)
class CTCConfig(RunConfig):
    """The whole CTC run: ``model``, ``data`` and ``train`` sections."""

    model: CTCModelConfig = field(default_factory=CTCModelConfig)
    data: CTCDataConfig = field(default_factory=CTCDataConfig)
    train: CTCTrainConfig = field(default_factory=CTCTrainConfig)


class CTCModel(nn.Module):
    """The acoustic model: features (B, T, D) and lengths (B,) -> log-probabilities (B, T // k, V + 1) over the
    blank (id 0) and ``num_symbols`` symbols, and the output lengths (B,) = max(lengths // k, 1) (T >= k).

        s_t = [x_{kt}; x_{kt+1}; ...; x_{kt+k-1}]       frame stacking: k frames of 10 ms -> one step   (B, T', kD)
        h_t = RNN(s)_t                                  bidirectional: [forward h; backward h]          (B, T', 2H)
        y_t = log_softmax(W h_t + b)                                                                    (B, T', V+1)
    """

    def __init__(self, num_features: int, num_symbols: int, config: CTCModelConfig) -> None:
        super().__init__()
        self.k = config.subsample
        self.rnn = RNN(config.mode, num_features * self.k, config.hidden_size, config.num_layers,
                       dropout=config.dropout, bidirectional=config.bidirectional, backend=config.backend,
                       **config.rnn_options())  # fmt: skip
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size * (2 if config.bidirectional else 1), num_symbols + 1)
        initialise_(self.rnn, config.init)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        B, T, D = x.shape
        n = T // self.k  # a partial last step is dropped
        s = x[:, : n * self.k].reshape(B, n, self.k * D)  # (B, T', k * D): k consecutive frames side by side
        out_lengths = torch.div(lengths, self.k, rounding_mode="floor").clamp(min=1)  # (B,) the RNN needs >= 1 step
        h, _ = self.rnn(s, lengths=out_lengths)  # (B, T', K * H)
        logits = self.head(self.drop(h))  # (B, T', V + 1)
        return torch.log_softmax(at_least_fp32(logits), -1), out_lengths


class AcousticGraph(nn.Module):
    """Export graph (``rnnkit export``): features (B, T, D), lengths (B,) -> log_probs (B, T', V+1), out_lengths."""

    def __init__(self, model: CTCModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(features, lengths)


def plot_utterance(path: Path, features: Tensor, log_probs: Tensor, symbols: list[str], decoded: str,
                   reference: str) -> bool:  # fmt: skip
    """ctc.png: one utterance's log-mel features, its CTC posteriors over time (blank dashed) and the decoded text."""
    from rnnkit.metrics import _pyplot, _save

    plt = _pyplot("CTC plot")
    if plt is None:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=False)
    top.imshow(features.T.float().cpu().numpy(), origin="lower", aspect="auto", cmap="magma")
    top.set_ylabel("input feature (mel band)")
    top.set_title(f"reference: {reference}\ndecoded:   {decoded}", fontsize=9, loc="left", family="monospace")
    p = log_probs.exp().float().cpu()  # (T', V+1)
    k = features.size(0) / max(p.size(0), 1)
    t = (torch.arange(p.size(0)) + 0.5) * k  # step centres in feature frames
    bottom.plot(t, p[:, 0], "--", color="0.6", lw=1, label="blank")
    for i in range(1, p.size(1)):
        if float(p[:, i].max()) > 0.3:
            bottom.plot(t, p[:, i], lw=1.2)
            j = int(p[:, i].argmax())
            bottom.annotate(symbols[i - 1] if symbols[i - 1] != " " else "␣", (float(t[j]), float(p[j, i])),
                            fontsize=8, ha="center", va="bottom")  # fmt: skip
    bottom.set_xlim(0, features.size(0))
    bottom.set_ylim(0, 1.1)
    bottom.set_xlabel("frame (10 ms)")
    bottom.set_ylabel("posterior")
    bottom.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    _save(plt, fig, path)
    return True
