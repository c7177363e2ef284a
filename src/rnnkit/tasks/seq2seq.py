"""Sequence to sequence (``rnnkit train seq2seq``): pairs of token sequences in, a model that writes the target.

The model is ``rnnkit.seq2seq.Seq2Seq`` (an RNN encoder, an attention decoder); training is teacher forcing with
label smoothing over batches grouped by source length; validation computes the teacher-forced loss on every pair
and decodes (greedy, or ``--beam K``) a fixed, seeded sample of ``--val-decode`` sources, whose outputs score

    wer   share of sources whose output is none of their references (a source's references: all its targets)
    ter   token edit distance to the nearest reference, summed, over the summed length of those references
    exact 1 - wer

Without ``--val``, a seeded ``val_fraction`` of the distinct sources is held out, every pair of a source on the
same side (all pronunciations of a word), and each held-out source is scored against all its targets.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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
from rnnkit.ctc import edit_distance  # token lists here, characters and words there
from rnnkit.data.labelled import BucketBatches, LengthBuckets, TokenVocab
from rnnkit.data.pairs import TOKENS, Pairs, read_pairs
from rnnkit.errors import ConfigError
from rnnkit.flags import int_flag
from rnnkit.init import initialise_
from rnnkit.io import atomic_write_json
from rnnkit.metrics import plot_alignments
from rnnkit.precision import at_least_fp32
from rnnkit.seq2seq import ATTENTIONS, BOS, EOS, PAD, Seq2Seq, alignment, beam_search, greedy
from rnnkit.sequence import pad_sequences
from rnnkit.tasks.base import Command, Flag, Param, Table, Task

__all__ = [
    "EncodedPairs",
    "Seq2SeqConfig",
    "Seq2SeqTask",
    "edit_distance",
    "merge_references",
    "sequence_scores",
    "text_scores",
]

SPECIALS = ("<s>", "</s>")


@dataclass(frozen=True)
class Seq2SeqModelConfig(RecurrentConfig):
    """Embedding -> rnnkit.RNN encoder -> attention decoder (``rnnkit.seq2seq.Seq2Seq``)."""

    mode: str = recurrent_field("mode", "lstm", "recurrent cell of encoder and decoder: " + ", ".join(MODES))
    hidden_size: int = recurrent_field("hidden_size", 128, "encoder width per direction (units; decoder: x2 if bi)")
    num_layers: int = recurrent_field("num_layers", 1, "encoder layers (count)")
    dropout: float = recurrent_field("dropout", 0.2, "dropout on embeddings, between layers and before output")
    backend: str = recurrent_field("backend", "auto", "encoder RNN implementation: auto, loop, native or fused")
    embedding_size: int = field(default=64, metadata={"help": "token embedding width, both sides (units)"})
    bidirectional: bool = field(default=True, metadata={"help": "read the source both ways"})
    decoder_layers: int = field(default=1, metadata={"help": "decoder cells stacked (count)"})
    attention: str = field(default="general", metadata={"help": "score: dot, general (Luong) or bahdanau"})
    input_feeding: bool = field(default=False, metadata={"help": "feed h~ to the next step (trains token by token)"})
    tie_embeddings: bool = field(default=False, metadata={"help": "output layer shares the target embedding"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("bidirectional", self.bidirectional)
        check_int("decoder_layers", self.decoder_layers, 1, 64)
        check_choice("attention", self.attention, ATTENTIONS)
        check_bool("input_feeding", self.input_feeding)
        check_bool("tie_embeddings", self.tie_embeddings)


@dataclass(frozen=True)
class Seq2SeqDataConfig:
    """The pair files, their tokens, and how validation decodes."""

    data: str | None = field(default=None, metadata={"help": "training pairs: source<TAB>target lines (path)"})
    val: str | None = field(default=None, metadata={"help": "validation pairs (unset: held-out sources of --data)"})
    val_fraction: float = field(default=0.05, metadata={"help": "without --val: share of distinct sources held out"})
    source_tokens: str = field(default="chars", metadata={"help": "source tokens: chars or space (separated)"})
    target_tokens: str = field(default="chars", metadata={"help": "target tokens: chars or space (separated)"})
    max_target_length: int = field(default=1000, metadata={"help": "longest target kept (tokens, 0 = no limit)"})
    too_long: str = field(default="drop", metadata={"help": "a longer target: drop (with a count) or error"})
    max_vocab: int = field(default=50_000, metadata={"help": "most frequent tokens kept per side (count)"})
    beam: int = field(default=1, metadata={"help": "beam width when validating (1 = greedy)"})
    val_decode: int = field(default=1000, metadata={
        "help": "validation sources decoded at each evaluation: a fixed seeded sample (count, 0 = all)"})  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("data", "val"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name} must be a non-empty file path or unset, got {value!r}")
        check_float("val_fraction", self.val_fraction, 0.0, 0.5)
        check_choice("source_tokens", self.source_tokens, TOKENS)
        check_choice("target_tokens", self.target_tokens, TOKENS)
        check_int("max_target_length", self.max_target_length, 0, 100_000)
        check_choice("too_long", self.too_long, ("drop", "error"))
        check_int("max_vocab", self.max_vocab, 8, 2**24)
        check_int("beam", self.beam, 1, 64)
        check_int("val_decode", self.val_decode, 0, 2**31)


@dataclass(frozen=True)
class Seq2SeqTrainConfig(TrainConfig):
    """The trainer's settings plus label smoothing."""

    batch_size: int = field(default=64, metadata={"help": "pairs per batch (count)"})
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the cross-entropy, in [0, 1)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class Seq2SeqConfig(RunConfig):
    """The whole sequence-to-sequence run: ``model``, ``data`` and ``train`` sections."""

    model: Seq2SeqModelConfig = field(default_factory=Seq2SeqModelConfig)
    data: Seq2SeqDataConfig = field(default_factory=Seq2SeqDataConfig)
    train: Seq2SeqTrainConfig = field(default_factory=Seq2SeqTrainConfig)


def sequence_scores(outputs: list[list[str]], references: list[list[list[str]]]) -> dict[str, float]:
    """wer, ter, exact and n of outputs against their references (see the module docstring)."""
    if len(outputs) != len(references) or not outputs:
        raise ValueError(f"need one or more outputs, one per reference list, got {len(outputs)} and {len(references)}")
    wrong, distance, length = 0, 0, 0
    for out, refs in zip(outputs, references, strict=True):
        wrong += out not in refs
        d, ref = min((edit_distance(out, r), r) for r in refs)
        distance, length = distance + d, length + len(ref)
    wer = wrong / len(outputs)
    return {"wer": wer, "ter": distance / max(length, 1), "exact": 1.0 - wer, "n": len(outputs)}


def text_scores(outputs: list[list[str]], references: list[list[list[str]]], joiner: str) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, against each source's first reference, tokens joined by ``joiner``), or {}
    when sacrebleu is not installed (it is optional: ``pip install sacrebleu``)."""
    try:
        import sacrebleu
    except ImportError:
        return {}
    hyps = [joiner.join(o) for o in outputs]
    refs = [[joiner.join(r[0]) for r in references]]
    return {"bleu": sacrebleu.corpus_bleu(hyps, refs).score, "chrf": sacrebleu.corpus_chrf(hyps, refs).score}


class EncodedPairs:
    """Encoded pairs: source ids (S_i,), target ids <s> ... </s> (T_i + 2,), and every source's references."""

    def __init__(self, task: Seq2SeqTask, pairs: Pairs) -> None:
        self.sources, self.unknown = [], 0
        for tokens in pairs.sources:
            ids, unknown = task.source_vocab.encode(tokens)
            self.sources.append(ids)
            self.unknown += unknown
        self.targets = [torch.cat([torch.tensor([BOS]), task.target_vocab.encode(refs[0])[0], torch.tensor([EOS])])
                        for refs in pairs.references] if pairs.references and pairs.references[0] else []  # fmt: skip
        self.references = pairs.references
        self.lengths = [len(s) for s in self.sources]

    def sample(self, n: int, seed: int) -> EncodedPairs:
        """At most ``n`` of these pairs (all when ``n`` is 0 or covers them), drawn with ``seed``, in input order."""
        if n == 0 or n >= len(self.sources):
            return self
        keep = sorted(torch.randperm(len(self.sources), generator=torch.Generator().manual_seed(seed))[:n].tolist())
        out = copy.copy(self)
        out.sources = [self.sources[i] for i in keep]
        out.references = [self.references[i] for i in keep]
        out.lengths = [self.lengths[i] for i in keep]
        out.targets = [self.targets[i] for i in keep] if self.targets else []
        return out

    def batch(self, idx: list[int]):
        x, lengths = pad_sequences([self.sources[i] for i in idx])
        y = pad_sequences([self.targets[i] for i in idx])[0] if self.targets else None
        return x, lengths, y


_BEAM = Flag("--beam", "beam width (1 = greedy)", 1, int_flag(1, 64))


class Seq2SeqTask(Task):
    """``rnnkit train seq2seq``: source<TAB>target pairs; the model writes the target."""

    name = "seq2seq"
    title = "seq2seq"
    help = "encoder-decoder with attention on source<TAB>target pairs"
    commands = (
        Command("eval", "score", "scores", "WER, TER and exact match against the references", (
            Flag("--data", "source<TAB>target lines; |-separated alternatives count as one reference each",
                 required=True, metavar="FILE"),
            _BEAM,
        )),
        Command("predict", "predict_rows", "table", "source<TAB>prediction for each source, in input order", (
            Flag("--data", "sources, one a line (a target after a tab is ignored)", required=True, metavar="FILE"),
            _BEAM,
            Flag("--n-best", "the N best outputs a source, best first (at most --beam)", 1, int_flag(1, 64)),
        )),
    )  # fmt: skip
    Config = Seq2SeqConfig
    primary = "wer"
    higher_is_better = False
    unit = "tokens"
    tuned = (
        Param("model", "hidden_size", choices=(64, 128, 256)),
        Param("model", "embedding_size", choices=(32, 64, 128)),
        Param("model", "attention", choices=ATTENTIONS),
        Param("model", "decoder_layers", low=1, high=2),
        Param("train", "label_smoothing", low=0.0, high=0.2),
    )

    def read(self, path: str, targets: str) -> Pairs:
        """Pairs from ``path`` as this run tokenises them (``targets``: required, alternatives or none)."""
        d = self.config.data
        return read_pairs(path, source_tokens=d.source_tokens, target_tokens=d.target_tokens, targets=targets,
                          max_target_length=d.max_target_length if targets == "required" else 0,
                          too_long=d.too_long)  # fmt: skip

    def prepare(self, artefacts: dict[str, Any] | None) -> None:
        d = self.config.data
        if d.data is None:
            raise ConfigError("seq2seq needs --data FILE (source<TAB>target lines)")
        train = self.read(d.data, "required")
        self.dropped = train.dropped
        val = self.read(d.val, "alternatives") if d.val is not None else None
        if val is None and d.val_fraction > 0:
            train, val = _split_by_source(train, d.val_fraction, self.config.train.seed)
        if artefacts is not None:
            self.restore(artefacts)
        else:
            self.source_vocab = TokenVocab.build(train.sources, d.max_vocab)
            self.target_vocab = TokenVocab.build([r[0] for r in train.references], d.max_vocab, SPECIALS)
        self.train_set = EncodedPairs(self, train)
        self.val_pairs = val if val is not None and len(val) else merge_references(train)
        self.val_set = EncodedPairs(self, self.val_pairs)
        self.val_is_train = val is None or not len(val)

    def restore(self, artefacts: dict[str, Any]) -> None:
        self.source_vocab = TokenVocab(list(artefacts["source_tokens"]))
        self.target_vocab = TokenVocab(list(artefacts["target_tokens"]))

    def artefacts(self) -> dict[str, Any]:
        return {"source_tokens": self.source_vocab.tokens, "target_tokens": self.target_vocab.tokens}

    def write_files(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / "vocab.json", {"format": "rnnkit.seq2seq/1", **self.artefacts()})

    def build_model(self) -> Seq2Seq:
        m = self.config.model
        model = Seq2Seq(len(self.source_vocab), len(self.target_vocab), mode=m.mode, embedding_size=m.embedding_size,
                        hidden_size=m.hidden_size, num_layers=m.num_layers, bidirectional=m.bidirectional,
                        decoder_layers=m.decoder_layers, attention=m.attention, input_feeding=m.input_feeding,
                        tie_embeddings=m.tie_embeddings, dropout=m.dropout, backend=m.backend,
                        encoder_options=m.rnn_options())  # fmt: skip
        initialise_(model.encoder, m.init)
        return model

    def export_graphs(self, model: Seq2Seq) -> list:
        """Two graphs: the encoder, and one decoder step that greedy or beam search calls in a loop."""
        from rnnkit.export import Graph, state_names, to_torch_modules
        from rnnkit.seq2seq import DecoderGraph, EncoderGraph

        model = to_torch_modules(model).eval()
        source, lengths = torch.full((3, 4), 4, dtype=torch.long), torch.tensor([4, 2, 3])
        encoder = EncoderGraph(model)
        with torch.no_grad():
            encoded = encoder(source, lengths)  # memory, keys, mask, h0 [c0], feed0
        ins, outs = state_names(model.spec.has_cell)
        memory = ["memory", "keys", "mask"]
        axes = {name: {0: "batch", 1: "source_time"} for name in memory} | {"source": {0: "batch", 1: "source_time"}}
        axes |= (
            {name: {1: "batch"} for name in ins + outs}
            | {name: {0: "batch"} for name in ("lengths", "feed0", "previous", "logits", "feed")}
            | {"attention": {0: "batch", 1: "source_time"}}
        )
        n = len(ins)
        step_inputs = (torch.full((3,), 2, dtype=torch.long), *encoded[3 : 3 + n], encoded[-1], *encoded[:3])
        return [
            Graph(encoder, (source, lengths), ["source", "lengths"], [*memory, *ins, "feed0"],
                  {k: v for k, v in axes.items() if k in ("source", "lengths", *memory, *ins, "feed0")}, "encoder"),
            Graph(DecoderGraph(model), step_inputs, ["previous", *ins, "feed0", *memory],
                  ["logits", *outs, "feed", "attention"],
                  {k: v for k, v in axes.items() if k not in ("source", "lengths")}, "decoder"),
        ]  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {"train_pairs": len(self.train_set.sources), "val_sources": len(self.val_set.sources),
                "validates_on_training_set": self.val_is_train, "source_vocab": len(self.source_vocab),
                "target_vocab": len(self.target_vocab), "dropped_long_targets": self.dropped}  # fmt: skip

    def batches(self, rank: int, world_size: int) -> BucketBatches:
        cfg = self.config.train
        buckets = LengthBuckets(self.train_set.lengths, cfg.batch_size, cfg.seed, rank=rank, world_size=world_size)
        return BucketBatches(self.train_set, buckets, lambda batch: int((batch[2][:, 1:] != PAD).sum()))  # tokens

    def validation_batch(self):
        """The first batch of the validation pairs (in the training batches' form)."""
        cfg = self.config.train
        buckets = LengthBuckets(self.val_set.lengths, cfg.batch_size, cfg.seed)
        return BucketBatches(self.val_set, buckets, lambda batch: batch[0].size(0)).get(0, 0)

    def loss(self, model: nn.Module, batch, state, device: torch.device):
        x, lengths, y = batch
        y = y.to(device)
        logits = at_least_fp32(model(x.to(device), lengths, y[:, :-1]))  # (B, T, V); fp32 under bf16 autocast
        return F.cross_entropy(logits.transpose(1, 2), y[:, 1:], ignore_index=PAD,
                               label_smoothing=self.config.train.label_smoothing), None  # fmt: skip

    # --- decoding and scoring -------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, model: Seq2Seq, data: EncodedPairs, *, beam: int = 1, device="cpu", batch_size: int = 256,
               n_best: int = 1) -> list[list[list[str]]]:  # fmt: skip
        """The ``n_best`` outputs (token lists) of every source of ``data``, in input order."""
        was_training = model.training
        model.eval()
        order = sorted(range(len(data.sources)), key=lambda i: data.lengths[i])
        out: list[list[list[str]]] = [[] for _ in order]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x, lengths, _ = data.batch(idx)
            limit = 2 * int(lengths.max()) + 10
            if beam == 1 and n_best == 1:
                hyps = [[h] for h in greedy(model, x.to(device), lengths, limit)]
            else:
                hyps = beam_search(model, x.to(device), lengths, beam, limit, n_best=n_best)
            for i, hs in zip(idx, hyps, strict=True):
                out[i] = [self.target_vocab.decode(h.tokens, stop="</s>") for h in hs]
        model.train(was_training)
        return out

    def scores(self, model: Seq2Seq, data: EncodedPairs, *, beam: int = 1, device="cpu",
               text: bool = False) -> dict[str, float]:  # fmt: skip
        """wer, ter, exact, n of ``data``'s outputs; with ``text``, also bleu and chrf (when sacrebleu is there)."""
        outputs = [o[0] for o in self.decode(model, data, beam=beam, device=device)]
        m = sequence_scores(outputs, data.references)
        if text:
            m |= text_scores(outputs, data.references, "" if self.config.data.target_tokens == "chars" else " ")
        return m

    def evaluate(self, model: nn.Module, device: torch.device, dist_info) -> dict[str, float]:
        """The teacher-forced loss on every validation pair, and wer/ter/exact from decoding a fixed, seeded sample
        of ``--val-decode`` sources (decoding steps token by token: on all of a large set it cost more than the
        training between two evaluations; ``rnnkit eval`` decodes them all)."""
        m = self.scores(model, self.val_set.sample(self.config.data.val_decode, self.config.train.seed),
                        beam=self.config.data.beam, device=device)  # fmt: skip
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        order = sorted(range(len(self.val_set.sources)), key=lambda i: self.val_set.lengths[i])  # less padding
        with torch.no_grad():
            for start in range(0, len(order), 256):
                x, lengths, y = self.val_set.batch(order[start : start + 256])
                logits = at_least_fp32(model(x.to(device), lengths, y[:, :-1].to(device)))  # (b, T, V)
                total += float(F.cross_entropy(logits.transpose(1, 2), y[:, 1:].to(device), ignore_index=PAD,
                                               reduction="sum"))  # fmt: skip
                count += int((y[:, 1:] != PAD).sum())
        model.train(was_training)
        return {"loss": total / max(count, 1), "wer": m["wer"], "ter": m["ter"], "exact": m["exact"]}

    def plots(self, model: nn.Module, run_dir: Path, device: torch.device) -> None:
        """attention.png: where the decoder looked, for the first four validation sources (greedy decoding)."""
        was_training = model.training
        model.eval()
        examples = []
        for source in self.val_set.sources[:4]:
            tokens, weights = alignment(model, source.to(device), 2 * source.numel() + 10)
            examples.append((_tokens_of(self.source_vocab, source.tolist()), _tokens_of(self.target_vocab, tokens),
                             weights))  # fmt: skip
        model.train(was_training)
        plot_alignments(examples, run_dir / "attention.png", "attention (validation, greedy)")

    # --- inference commands -----------------------------------------------------------------------------------

    def score(self, model: Seq2Seq, *, data: str, beam: int = 1) -> dict[str, Any]:
        """``rnnkit eval``: wer (share of sources whose output is none of their references), ter, exact, and BLEU
        and chrF when sacrebleu is installed; a source's lines (and |-separated alternatives) are its references."""
        encoded = EncodedPairs(self, merge_references(self.read(data, "alternatives")))
        m = self.scores(model, encoded, beam=beam, text=True)
        return {**m, "beam": beam, "unknown_tokens": encoded.unknown}

    def predict_rows(self, model: Seq2Seq, *, data: str, beam: int = 1, n_best: int = 1) -> Table:
        """``rnnkit predict``: ``source<TAB>prediction`` rows in input order, ``n_best`` per source, best first."""
        if n_best > beam:
            raise ConfigError(f"--n-best must be <= --beam, got {n_best} and {beam}")
        pairs = self.read(data, "none")
        encoded = EncodedPairs(self, pairs)
        outputs = self.decode(model, encoded, beam=beam, n_best=n_best)
        join = "" if self.config.data.target_tokens == "chars" else " "
        rows = [[source, join.join(o)] for source, out in zip(pairs.texts, outputs, strict=True) for o in out]
        notes = [f"{encoded.unknown} source token(s) not in the run's vocabulary (read as the unknown symbol)"]
        return Table(None, rows, format="tsv", notes=notes if encoded.unknown else [])


def _tokens_of(vocab: TokenVocab, ids: list[int]) -> list[str]:
    return [vocab.tokens[i] for i in ids]


def _split_by_source(pairs: Pairs, fraction: float, seed: int) -> tuple[Pairs, Pairs]:
    """A seeded share of the distinct source texts held out (all lines of a source on one side); the held-out
    side has one entry per source, scored against all its targets."""
    texts = sorted(set(pairs.texts))
    n_val = min(len(texts) - 1, round(fraction * len(texts)))
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:n_val].tolist()
    held = {texts[i] for i in order}

    def subset(in_val: bool) -> Pairs:
        idx = [i for i, t in enumerate(pairs.texts) if (t in held) == in_val]
        return Pairs([pairs.sources[i] for i in idx], [pairs.references[i] for i in idx], [pairs.lines[i] for i in idx],
                     pairs.source, 0, [pairs.texts[i] for i in idx])  # fmt: skip

    train = subset(False)
    train.dropped = pairs.dropped
    return train, merge_references(subset(True))


def merge_references(pairs: Pairs) -> Pairs:
    """One entry per distinct source text, its references the targets of all its lines (in file order)."""
    merged: dict[str, int] = {}
    out = Pairs([], [], [], pairs.source, pairs.dropped, [])
    for source, refs, line, text in zip(pairs.sources, pairs.references, pairs.lines, pairs.texts, strict=True):
        if text in merged:
            out.references[merged[text]] += [r for r in refs if r not in out.references[merged[text]]]
            continue
        merged[text] = len(out.sources)
        out.sources.append(source)
        out.references.append(list(refs))
        out.lines.append(line)
        out.texts.append(text)
    return out
