"""The language model: Embedding -> rnnkit.RNN -> dropout -> Linear head, trained by truncated BPTT.

    tokens (B, T) --embedding--> (B, T, E) --RNN--> (B, T, H) --dropout--> --head--> logits (B, T, V)

The recurrent state is passed in and returned (``None`` means zeros), so the trainer carries it across
truncated-BPTT chunks and a sampler primes it on a prompt and then ``step``s one token at a time.
``LMTask`` is the task the trainer runs (``rnnkit train lm``): the text is one contiguous stream of tokens
(characters by default; words or byte-level BPE pieces with ``--tokens``, ``rnnkit.data.tokens``), cut into
``batch_size`` rows read left to right in chunks of ``bptt`` tokens (``rnnkit.data.TextStream``); the
primary metric is the validation bits per character (lower is better), which compares across tokenisations:

    bpc = (sum over scored tokens of -ln p(token | past)) / (characters of those tokens) / ln 2

with the per-token loss (nats) and perplexity exp(loss) beside it.
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
    check_choice,
    check_float,
    check_int,
    recurrent_field,
)
from rnnkit.data import TextStream, Vocab, default_corpus, read_text, split_text
from rnnkit.data.tokens import INSTALL, TOKENIZERS, CharTokenizer, Tokenizer
from rnnkit.errors import ConfigError, DataError
from rnnkit.flags import float_flag, int_flag
from rnnkit.init import initialise_
from rnnkit.metrics import evaluate_dynamic, evaluate_ids, evaluate_text
from rnnkit.precision import at_least_fp32
from rnnkit.recurrent import RNN
from rnnkit.sampling import beam_search, check_prompt, generate
from rnnkit.tasks.base import Command, Flag, Param, Task

__all__ = ["CharLM", "LMConfig", "LMDataConfig", "LMModelConfig", "LMTask", "LMTrainConfig", "lm_loss", "load_text"]


@dataclass(frozen=True)
class LMModelConfig(RecurrentConfig):
    """Embedding -> rnnkit.RNN -> dropout -> linear head (``CharLM``)."""

    hidden_size: int = recurrent_field("hidden_size", 384)
    dropout: float = recurrent_field(
        "dropout", 0.0, "dropout probability between layers and before the head, in [0, 1)"
    )
    embedding_size: int = field(default=64, metadata={"help": "token embedding width (units)"})
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
    tokens: str = field(
        default="chars",
        metadata={"help": "what the model predicts: chars (one character a step), words (frequent words, whitespace "
                  "runs and punctuation; rare words spelled in characters) or bpe (byte-level BPE pieces; needs "
                  f"{INSTALL})"},
    )  # fmt: skip
    vocab_size: int = field(
        default=0,
        metadata={"help": "tokens in the vocabulary for words and bpe, learned from the training text (count, 0 = "
                  f"words {TOKENIZERS['words'].default_vocab_size}, bpe {TOKENIZERS['bpe'].default_vocab_size}; "
                  "chars: every character of the text)"},
    )  # fmt: skip
    min_count: int = field(
        default=2, metadata={"help": "words and bpe: a word or merge seen fewer times is left out (count)"}
    )

    def __post_init__(self) -> None:
        if self.data is not None and (not isinstance(self.data, str) or not self.data):
            raise ConfigError(f"data must be a non-empty file path or unset, got {self.data!r}")
        check_float("val_fraction", self.val_fraction, 0.0, 0.5, low_open=True)
        check_int("max_chars", self.max_chars, 0)
        check_choice("tokens", self.tokens, tuple(TOKENIZERS))
        check_int("vocab_size", self.vocab_size, 0, 2**24)
        check_int("min_count", self.min_count, 1)
        if self.tokens == "chars" and self.vocab_size:
            raise ConfigError(f"vocab_size applies to --tokens words or bpe, got {self.vocab_size} with chars")


@dataclass(frozen=True)
class LMTrainConfig(TrainConfig):
    """The trainer's settings plus the text stream's: chunk length and how much held-out text to score."""

    bptt: int = field(
        default=128, metadata={"help": "truncated-BPTT chunk length (time steps = tokens: characters with chars)"}
    )
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
    # by steps only: held-out bpc falls smoothly and nothing stops a run on it, while each evaluation costs seconds
    eval_time_share: float = field(default=0.0, metadata=TrainConfig.__dataclass_fields__["eval_time_share"].metadata)

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
    """A next-token model over a vocabulary of ``vocab_size`` tokens (characters, words or BPE pieces), configured by
    ``LMModelConfig``; the name is from when the tokens were characters only."""

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
        """One token for generation: token (B,) long -> logits (B, V), new state (via ``RNN.step``)."""
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
    """Mean next-token cross-entropy in nats: logits (B, T, V), targets (B, T) -> scalar.

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

    def __init__(self, stream: TextStream, char_lengths: Tensor | None = None) -> None:
        self.stream = stream
        self.char_lengths = char_lengths  # (V,) characters per token; None: one per token

    def __len__(self) -> int:
        return len(self.stream)

    def get(self, epoch: int, k: int) -> tuple[Tensor, Tensor]:
        return self.stream.chunk(k)  # (B, T) inputs and targets

    def items(self, batch: tuple[Tensor, Tensor]) -> int:
        """The characters of the batch's targets, so throughput reads in chars/s whatever the tokens."""
        targets = batch[1]  # (B, T)
        return targets.numel() if self.char_lengths is None else int(self.char_lengths[targets].sum())


SAMPLE_TOKENS = 300  # what ``rnnkit train lm`` shows of the trained model
SAMPLE_CHARS = SAMPLE_TOKENS  # the name from before the tokenizers

SEED = Flag("--seed", "sampling seed", 0, int_flag(0))


class LMTask(Task):
    """``rnnkit train lm``: next-token prediction on one text, truncated BPTT with carried state.

    ``tokenizer`` (a ``rnnkit.data.tokens.Tokenizer`` of the config's ``tokens`` kind) is fitted on the training
    text by ``prepare`` (chars: the whole text, as before) or rebuilt from the run's artefacts by ``restore``.
    """

    name = "lm"
    title = "char LM"
    help = "language model (characters, words or BPE tokens)"
    commands = (
        Command("eval", "score", "scores", "bits per character and per-token loss and perplexity of a text", (
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
            Flag("--length", "tokens to generate (characters for a chars run)", 500, int_flag(0)),
            Flag("--temperature", "softmax temperature, 0 = greedy", 0.8, float_flag(0, float("inf"))),
            Flag("--top-k", "keep the k likeliest tokens (0 = off)", 0, int_flag(0)),
            Flag("--top-p", "nucleus mass in (0, 1] (1 = off)", 1.0, float_flag(0, 1, low_open=True)),
            Flag("--beam", "beam search with K beams for the likeliest continuation of --length tokens, instead of "
                 "sampling (0 = off; --temperature, --top-k, --top-p and --seed are then unused)", 0, int_flag(0),
                 "K"),
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

    tokenizer: Tokenizer

    def prepare(self, artefacts: dict[str, Any] | None) -> None:
        d = self.config.data
        text = load_text(self.config)
        self.train_text, val_text = split_text(text, d.val_fraction)
        if artefacts is not None:
            self.restore(artefacts)
        elif d.tokens == "chars":
            self.tokenizer = CharTokenizer.fit(text)  # the whole text's characters, as chars runs always had
        else:
            self.tokenizer = TOKENIZERS[d.tokens].fit(self.train_text, vocab_size=d.vocab_size, min_count=d.min_count)
        if self.config.train.eval_chars:
            val_text = val_text[: self.config.train.eval_chars + 1]  # the same characters for every tokenisation
        self.train_ids = self.tokenizer.ids(self.train_text)  # (N_train,)
        self.val_ids = self.tokenizer.ids(val_text)  # (N_val,)
        self.char_lengths = self.tokenizer.char_lengths()  # (V,)

    def restore(self, artefacts: dict[str, Any]) -> None:
        kind = self.config.data.tokens
        saved = artefacts.get("tokens", "chars")  # chars runs keep {"vocab": [...]} alone, as before tokenizers
        if saved != kind:
            raise DataError(f"the run's artefacts hold {saved} tokens, but its config says tokens = {kind}")
        self.tokenizer = TOKENIZERS[kind].from_artefacts(artefacts)
        self.char_lengths = self.tokenizer.char_lengths()  # (V,)

    @property
    def vocab(self) -> Vocab | Tokenizer:
        """The character ``Vocab`` of a chars run (as before tokenizers), else the tokenizer; both encode, decode
        and count unknown characters, and ``rnnkit.metrics.evaluate_text`` takes either."""
        return self.tokenizer.vocab if isinstance(self.tokenizer, CharTokenizer) else self.tokenizer

    def artefacts(self) -> dict[str, Any]:
        return self.tokenizer.artefacts()

    def write_files(self, run_dir: Path) -> None:
        self.tokenizer.write_files(run_dir)

    def build_model(self) -> CharLM:
        return CharLM(len(self.tokenizer), self.config.model)

    def export_graphs(self, model: CharLM) -> list:
        """One graph: tokens and state in, logits and state out, so a caller primes on a prompt, then steps."""
        from rnnkit.export import Graph, batch_axes, flat_state, state_names, to_torch_modules

        state = flat_state(model.initial_state(2))  # (L, 2, H) each
        ins, outs = state_names(len(state) == 2)
        axes = {"tokens": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}} | batch_axes(ins + outs)
        graph = _LMGraph(to_torch_modules(model).eval())
        return [Graph(graph, (torch.zeros(2, 3, dtype=torch.long), *state), ["tokens", *ins], ["logits", *outs], axes)]

    def _chars(self, ids: Tensor) -> int:
        """Characters the ids (N,) hold."""
        return int(self.char_lengths[ids].sum())

    def describe(self) -> dict[str, Any]:
        return {"tokens": self.config.data.tokens, "train_chars": len(self.train_text),
                "val_chars": self._chars(self.val_ids[1:]), "vocab_size": len(self.tokenizer),
                "train_tokens": int(self.train_ids.numel())}  # fmt: skip

    def validation_batch(self) -> tuple[Tensor, Tensor]:
        """The first (B, T) chunk of the validation text, inputs and targets (fewer rows where it is short)."""
        cfg = self.config.train
        rows = max(1, min(cfg.batch_size, (self.val_ids.numel() - 1) // cfg.bptt))
        return TextStream(self.val_ids, batch_size=rows, bptt=cfg.bptt).chunk(0)

    def batches(self, rank: int, world_size: int) -> _Chunks:
        cfg = self.config.train
        rows = cfg.batch_size * world_size
        if (self.train_ids.numel() - 1) // rows < cfg.bptt:
            what = "characters" if self.config.data.tokens == "chars" else f"{self.config.data.tokens} tokens"
            raise DataError(
                f"training text of {self.train_ids.numel()} {what} is shorter than one batch: "
                f"batch_size={cfg.batch_size} x bptt={cfg.bptt} x {world_size} process(es) needs "
                f"{rows * cfg.bptt + 1}"
            )
        stream = TextStream(self.train_ids, cfg.batch_size, cfg.bptt, rank=rank, world_size=world_size)
        return _Chunks(stream, None if self.config.data.tokens == "chars" else self.char_lengths)

    def loss(self, model: nn.Module, batch, state, device: torch.device) -> tuple[Tensor, Any]:
        x, y = (t.to(device) for t in batch)  # (B, T) each
        logits, state = model(x, state)  # (B, T, V)
        return lm_loss(logits, y), state  # nats per token

    def train_metrics(self, loss: float) -> dict[str, float]:
        """bpc of a training loss (nats per token): for words and bpe through the training text's mean characters
        per token, an estimate of the batches' own (validation and ``rnnkit eval`` count each token's)."""
        if self.config.data.tokens == "chars":
            return {"bpc": loss / math.log(2.0)}
        chars_per_token = len(self.train_text) / self.train_ids.numel()
        return {"bpc": loss / math.log(2.0) / chars_per_token}

    def evaluate(self, model: nn.Module, device: torch.device, dist_info) -> dict[str, float]:
        cfg = self.config.train
        return evaluate_ids(model, self.val_ids, batch_size=cfg.batch_size, bptt=cfg.bptt, device=device,
                            dist_info=dist_info, char_lengths=self.char_lengths)  # fmt: skip

    # --- inference commands -----------------------------------------------------------------------------------

    def score(self, model: CharLM, *, data: str, batch_size: int | None = None, dynamic_lr: float = 0.0,
              dynamic_decay: float = 0.0) -> dict[str, Any]:  # fmt: skip
        """``rnnkit eval``: bits per character, loss (nats per token) and perplexity per token of the text in
        ``data``, statically or dynamically (the model adapting to each chunk after scoring it, Krause et al. 2018);
        characters the vocabulary lacks are scored as U+FFFD and counted."""
        text = read_text(data)
        if dynamic_lr > 0:
            ids = self.tokenizer.ids(text)  # (N,)
            m = evaluate_dynamic(model, ids, lr=dynamic_lr, decay=dynamic_decay, batch_size=batch_size or 2, bptt=32,
                                 char_lengths=self.char_lengths)  # fmt: skip
            m["unknown"] = self.tokenizer.count_unknown(text)
        else:
            m = evaluate_text(model, self.tokenizer, text, batch_size=batch_size or 16, bptt=self.config.train.bptt)
        return {"bpc": m["bpc"], "loss": m["loss"], "ppl": m["ppl"], "chars": m["chars"], "tokens": m["tokens"],
                "unknown_chars": m["unknown"], "dynamic_lr": dynamic_lr}  # fmt: skip

    def sample(self, model: CharLM, *, prompt: str = "", echo_prompt: bool = False, length: int = 500,
               temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, beam: int = 0,
               seed: int = 0) -> Iterator[str]:  # fmt: skip
        """``rnnkit sample``: ``length`` tokens continuing ``prompt``, decoded as they come (the model runs as the
        iterator is read), sampled, or with ``beam`` > 0 the likeliest continuation by beam search. A prompt the
        vocabulary cannot encode fails here, before anything is generated."""
        check_prompt(self.tokenizer, prompt)
        if beam:
            text = beam_search(model, self.tokenizer, prompt, length, beam=beam)
        else:
            text = generate(model, self.tokenizer, prompt, length, temperature=temperature, top_k=top_k, top_p=top_p,
                            generator=torch.Generator().manual_seed(seed))  # fmt: skip
        return itertools.chain([prompt] if echo_prompt else [], text, ["\n"])

    def after_training(self, run_dir: Path) -> list[str]:
        """A sample of the best checkpoint (temperature 0.8, seed 0), so a run shows what it learned."""
        from rnnkit.checkpoint import load_run

        run = load_run(run_dir, "best")
        with run.autocast():
            text = "".join(self.sample(run.model, length=SAMPLE_TOKENS, temperature=0.8, seed=0))
        return [f"sample (best checkpoint, temperature 0.8, seed 0):\n{text.rstrip(chr(10))}"]
