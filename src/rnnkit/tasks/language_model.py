"""Character-level language model: Embedding -> rnnkit.RNN -> dropout -> Linear head, trained by truncated BPTT.

    tokens (B, T) --embedding--> (B, T, E) --RNN--> (B, T, H) --dropout--> --head--> logits (B, T, V)

The recurrent state is passed in and returned (``None`` means zeros), so the trainer carries it across
truncated-BPTT chunks and a sampler primes it on a prompt and then ``step``s one character at a time.
``LMTask`` is the task the trainer runs (``rnnkit train lm``): the text is one contiguous stream, cut into
``batch_size`` rows read left to right in chunks of ``bptt`` characters (``rnnkit.data.TextStream``); the
primary metric is the validation bits per character (lower is better).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.config import (
    RecurrentConfig,
    RunConfig,
    TrainConfig,
    check_bool,
    check_float,
    check_int,
    recurrent_field,
)
from rnnkit.data import TextStream, Vocab, default_corpus, read_text, split_text
from rnnkit.errors import ConfigError, DataError
from rnnkit.flags import float_flag, int_flag
from rnnkit.init import initialise_
from rnnkit.metrics import evaluate_dynamic, evaluate_ids, evaluate_text
from rnnkit.precision import at_least_fp32
from rnnkit.recurrent import RNN
from rnnkit.sampling import generate
from rnnkit.tasks.base import Command, Flag, Param, Task

__all__ = ["CharLM", "LMConfig", "LMDataConfig", "LMModelConfig", "LMTask", "LMTrainConfig", "lm_loss", "load_text"]


@dataclass(frozen=True)
class LMModelConfig(RecurrentConfig):
    """Embedding -> rnnkit.RNN -> dropout -> linear head (``CharLM``)."""

    hidden_size: int = recurrent_field("hidden_size", 384)
    dropout: float = recurrent_field(
        "dropout", 0.0, "dropout probability between layers and before the head, in [0, 1)"
    )
    embedding_size: int = field(default=64, metadata={"help": "character embedding width (units)"})
    tie_weights: bool = field(
        default=False,
        metadata={
            "help": "share the embedding and head weights (Press & Wolf 2016); needs embedding_size == hidden_size"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("tie_weights", self.tie_weights)
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise ConfigError(
                "tie_weights needs embedding_size == hidden_size, "
                f"got embedding_size={self.embedding_size}, hidden_size={self.hidden_size}"
            )


@dataclass(frozen=True)
class LMDataConfig:
    """Where the text comes from and how it is split."""

    data: str | None = field(
        default=None,
        metadata={"help": "UTF-8 text file to train on (path); default: the Python standard library source"},
    )
    val_fraction: float = field(
        default=0.05, metadata={"help": "fraction of the text held out, from its end, for validation, in (0, 0.5]"}
    )
    max_chars: int = field(
        default=10_000_000, metadata={"help": "use at most this many characters of the text (chars, 0 = all)"}
    )

    def __post_init__(self) -> None:
        if self.data is not None and (not isinstance(self.data, str) or not self.data):
            raise ConfigError(f"data must be a non-empty file path or unset, got {self.data!r}")
        check_float("val_fraction", self.val_fraction, 0.0, 0.5, low_open=True)
        check_int("max_chars", self.max_chars, 0)


@dataclass(frozen=True)
class LMTrainConfig(TrainConfig):
    """The trainer's settings plus the text stream's: chunk length and how much held-out text to score."""

    bptt: int = field(default=128, metadata={"help": "truncated-BPTT chunk length (time steps = chars)"})
    # The LM trains on a time budget, so its results already depend on the machine; bf16 learned as well per step
    # and, with 2.5x the steps in 10 minutes, reached a lower held-out bpc (docs/results.md, "In bf16")
    precision: str = field(
        default="auto",
        metadata={"help": "arithmetic of each forward and loss: fp32, bf16 (autocast; the weights, optimiser and "
                  "checkpoints stay fp32) or auto (the default: bf16 on a CPU with avx512_bf16 or AMX, or a bf16 "
                  "GPU, else fp32)"},
    )  # fmt: skip
    eval_chars: int = field(
        default=100_000, metadata={"help": "validate on at most this many held-out characters (chars, 0 = all)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("bptt", self.bptt, 1, 2**24)
        check_int("eval_chars", self.eval_chars, 0)


@dataclass(frozen=True)
class LMConfig(RunConfig):
    """The whole language-model run: ``model``, ``data`` and ``train`` sections."""

    model: LMModelConfig = field(default_factory=LMModelConfig)
    data: LMDataConfig = field(default_factory=LMDataConfig)
    train: LMTrainConfig = field(default_factory=LMTrainConfig)


class CharLM(nn.Module):
    """A next-character model over a vocabulary of ``vocab_size`` symbols, configured by ``LMModelConfig``."""

    def __init__(self, vocab_size: int, config: LMModelConfig) -> None:
        super().__init__()
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
        if not isinstance(config, LMModelConfig):
            raise TypeError(f"config must be an LMModelConfig, got {type(config).__name__}")
        self.vocab_size = vocab_size
        self.config = config
        E, H, V = config.embedding_size, config.hidden_size, vocab_size
        self.embedding = nn.Embedding(V, E)
        self.rnn = RNN(config.mode, E, H, config.num_layers, dropout=config.dropout, backend=config.backend,
                       **config.rnn_options())  # fmt: skip
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(H, V)
        if config.tie_weights:
            # Weight tying (Press & Wolf 2016, "Using the Output Embedding to Improve Language Models"):
            # the head's (V, H) weight is the embedding's (V, E) table, E == H.
            self.head.weight = self.embedding.weight
        initialise_(self.rnn, config.init)

    def forward(self, tokens: Tensor, state=None) -> tuple[Tensor, object]:
        """tokens (B, T) long -> logits (B, T, V), new state."""
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
            got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be a (B, T) int64 Tensor, got {got}")
        x = self.embedding(tokens)  # (B, T, E)
        y, state = self.rnn(x, state)  # (B, T, H)
        logits = self.head(self.drop(y))  # (B, T, V)
        return logits, state

    def step(self, token: Tensor, state=None) -> tuple[Tensor, object]:
        """One character for generation: token (B,) long -> logits (B, V), new state (via ``RNN.step``)."""
        if not isinstance(token, Tensor) or token.dim() != 1 or token.dtype != torch.long:
            got = f"{tuple(token.shape)} {token.dtype}" if isinstance(token, Tensor) else type(token).__name__
            raise ValueError(f"token must be a (B,) int64 Tensor, got {got}")
        x_t = self.embedding(token)  # (B, E)
        y_t, state = self.rnn.step(x_t, state)  # (B, H)
        logits = self.head(self.drop(y_t))  # (B, V)
        return logits, state

    def initial_state(self, batch_size: int, device=None):
        """The zero state for ``batch_size`` rows (what ``state=None`` means)."""
        return self.rnn.initial_state(batch_size, device=device)


class _LMGraph(nn.Module):
    """Export graph (``rnnkit export``): tokens (B, T) int64, h0 [c0] (L, B, H) -> logits (B, T, V), hn [cn]."""

    def __init__(self, model: CharLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        from rnnkit.export import flat_state, nested_state

        logits, new_state = self.model(tokens, nested_state(state))  # (B, T, V)
        return (logits, *flat_state(new_state))


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-character cross-entropy in nats: logits (B, T, V), targets (B, T) -> scalar.

    Computed in fp32 at least, whatever the logits' dtype (bf16 under ``--precision bf16``): a log-softmax over V
    in bf16 would round each term to 3 significant digits.
    """
    V = logits.size(-1)
    return F.cross_entropy(at_least_fp32(logits.reshape(-1, V)), targets.reshape(-1))  # (B*T, V) vs (B*T,)


def load_text(config: LMConfig) -> str:
    """The run's text: ``config.data.data`` (a UTF-8 file) or the built-in corpus, capped at ``max_chars``."""
    d = config.data
    text = read_text(d.data) if d.data is not None else default_corpus(d.max_chars)
    return text[: d.max_chars] if d.max_chars else text


class _Chunks:
    """The trainer's view of a ``TextStream``: chunk k of every epoch (the stream is read in a fixed order)."""

    def __init__(self, stream: TextStream) -> None:
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def get(self, epoch: int, k: int) -> tuple[Tensor, Tensor]:
        return self.stream.chunk(k)  # (B, T) inputs and targets

    def items(self, batch: tuple[Tensor, Tensor]) -> int:
        return batch[1].numel()


SAMPLE_CHARS = 300  # what ``rnnkit train lm`` shows of the trained model

SEED = Flag("--seed", "sampling seed", 0, int_flag(0))


class LMTask(Task):
    """``rnnkit train lm``: next-character prediction on one text, truncated BPTT with carried state."""

    name = "lm"
    title = "char LM"
    help = "character language model"
    commands = (
        Command("eval", "score", "scores", "bits per character of a text", (
            Flag("--data", "UTF-8 text to score", required=True, metavar="FILE"),
            Flag("--batch-size", "rows scored at once (default: 16; 2 with --dynamic-lr, where few rows adapt best)",
                 None, int_flag(1), "N"),
            Flag("--dynamic-lr", "dynamic evaluation: RMS-normalised step size on each chunk after it is scored, "
                 "e.g. 0.001 (0 = static)", 0.0, float_flag(0, 1e3)),
            Flag("--dynamic-decay", "dynamic evaluation: pull back toward the trained weights per step", 0.0,
                 float_flag(0, 1)),
        )),
        Command("sample", "sample", "text", "generate text (streamed)", (
            Flag("--prompt", "text to continue (default: empty, starts after a newline)", ""),
            Flag("--echo-prompt", "print the prompt before the continuation", False, action="store_true"),
            Flag("--length", "characters to generate", 500, int_flag(0)),
            Flag("--temperature", "softmax temperature, 0 = greedy", 0.8, float_flag(0, float("inf"))),
            Flag("--top-k", "keep the k likeliest characters (0 = off)", 0, int_flag(0)),
            Flag("--top-p", "nucleus mass in (0, 1] (1 = off)", 1.0, float_flag(0, 1, low_open=True)),
            SEED,
        )),
    )  # fmt: skip
    Config = LMConfig
    primary = "bpc"
    higher_is_better = False
    unit = "chars"
    tuned = (
        Param("model", "hidden_size", choices=(128, 256, 384, 512)),
        Param("model", "dropout", low=0.0, high=0.3),
        Param("model", "embedding_size", choices=(32, 64, 128)),
        Param("train", "batch_size", choices=(16, 32, 64)),
        Param("train", "bptt", choices=(64, 128, 256)),
    )

    @classmethod
    def search_space(cls, config: RunConfig) -> tuple[Param, ...]:
        """The shared settings and the LM's; with tied weights the two widths must stay equal, so neither is drawn."""
        space = super().search_space(config)
        if config.model.tie_weights:
            space = tuple(p for p in space if p.name not in ("hidden_size", "embedding_size"))
        return space

    def prepare(self, artefacts: dict[str, Any] | None) -> None:
        text = load_text(self.config)
        self.train_text, val_text = split_text(text, self.config.data.val_fraction)
        if artefacts is not None:
            self.restore(artefacts)
        else:
            self.vocab = Vocab.from_text(text, unknown=True)  # U+FFFD stands for characters the text lacks
        self.train_ids = self.vocab.encode(self.train_text, tensor=True)  # (N_train,)
        self.val_ids = self.vocab.encode(val_text, tensor=True)  # (N_val,)
        if self.config.train.eval_chars:
            self.val_ids = self.val_ids[: self.config.train.eval_chars + 1]

    def restore(self, artefacts: dict[str, Any]) -> None:
        self.vocab = Vocab(artefacts["vocab"])

    def artefacts(self) -> dict[str, Any]:
        return {"vocab": self.vocab.chars}

    def write_files(self, run_dir: Path) -> None:
        self.vocab.save(run_dir / "vocab.json")

    def build_model(self) -> CharLM:
        return CharLM(len(self.vocab), self.config.model)

    def export_graphs(self, model: CharLM) -> list:
        """One graph: tokens and state in, logits and state out, so a caller primes on a prompt, then steps."""
        from rnnkit.export import Graph, batch_axes, flat_state, state_names, to_torch_modules

        state = flat_state(model.initial_state(2))  # (L, 2, H) each
        ins, outs = state_names(len(state) == 2)
        axes = {"tokens": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}} | batch_axes(ins + outs)
        graph = _LMGraph(to_torch_modules(model).eval())
        return [Graph(graph, (torch.zeros(2, 3, dtype=torch.long), *state), ["tokens", *ins], ["logits", *outs], axes)]

    def describe(self) -> dict[str, Any]:
        return {"train_chars": len(self.train_text), "val_chars": int(self.val_ids.numel()) - 1,
                "vocab_size": len(self.vocab)}  # fmt: skip

    def batches(self, rank: int, world_size: int) -> _Chunks:
        cfg = self.config.train
        rows = cfg.batch_size * world_size
        if (self.train_ids.numel() - 1) // rows < cfg.bptt:
            raise DataError(
                f"training text of {len(self.train_text)} characters is shorter than one batch: "
                f"batch_size={cfg.batch_size} x bptt={cfg.bptt} x {world_size} process(es) needs "
                f"{rows * cfg.bptt + 1}"
            )
        return _Chunks(TextStream(self.train_ids, cfg.batch_size, cfg.bptt, rank=rank, world_size=world_size))

    def loss(self, model: nn.Module, batch, state, device: torch.device) -> tuple[Tensor, Any]:
        x, y = (t.to(device) for t in batch)  # (B, T) each
        logits, state = model(x, state)  # (B, T, V)
        return lm_loss(logits, y), state  # nats per character

    def train_metrics(self, loss: float) -> dict[str, float]:
        return {"bpc": loss / math.log(2.0)}

    def evaluate(self, model: nn.Module, device: torch.device, dist_info) -> dict[str, float]:
        cfg = self.config.train
        return evaluate_ids(model, self.val_ids, batch_size=cfg.batch_size, bptt=cfg.bptt, device=device,
                            dist_info=dist_info)  # fmt: skip

    # --- inference commands -----------------------------------------------------------------------------------

    def score(self, model: CharLM, *, data: str, batch_size: int | None = None, dynamic_lr: float = 0.0,
              dynamic_decay: float = 0.0) -> dict[str, Any]:  # fmt: skip
        """``rnnkit eval``: loss (nats) and bits per character of the text in ``data``, statically or dynamically
        (the model adapting to each chunk after scoring it, Krause et al. 2018); characters the vocabulary lacks
        are scored as U+FFFD and counted."""
        text = read_text(data)
        if dynamic_lr > 0:
            ids = self.vocab.encode(text, tensor=True, strict=False)  # (N,)
            m = evaluate_dynamic(model, ids, lr=dynamic_lr, decay=dynamic_decay, batch_size=batch_size or 2, bptt=32)
            m["unknown"] = self.vocab.count_unknown(text)
        else:
            m = evaluate_text(model, self.vocab, text, batch_size=batch_size or 16, bptt=self.config.train.bptt)
        return {"bpc": m["bpc"], "loss": m["loss"], "chars": m["chars"], "unknown_chars": m["unknown"],
                "dynamic_lr": dynamic_lr}  # fmt: skip

    def sample(self, model: CharLM, *, prompt: str = "", echo_prompt: bool = False, length: int = 500,
               temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
               seed: int = 0) -> Iterator[str]:  # fmt: skip
        """``rnnkit sample``: ``length`` characters continuing ``prompt``, one at a time (the model runs as the
        iterator is read). A prompt the vocabulary cannot encode fails here, before anything is generated."""
        self.vocab.encode(prompt)
        chars = generate(model, self.vocab, prompt, length, temperature=temperature, top_k=top_k, top_p=top_p,
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip
        return itertools.chain([prompt] if echo_prompt else [], chars, ["\n"])

    def after_training(self, run_dir: Path) -> list[str]:
        """A sample of the best checkpoint (temperature 0.8, seed 0), so a run shows what it learned."""
        from rnnkit.checkpoint import load_run

        run = load_run(run_dir, "best")
        with run.autocast():
            text = "".join(self.sample(run.model, length=SAMPLE_CHARS, temperature=0.8, seed=0))
        return [f"sample (best checkpoint, temperature 0.8, seed 0):\n{text.rstrip(chr(10))}"]
