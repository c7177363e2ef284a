"""Speech recognition with CTC (``rnnkit train ctc``): audio<TAB>transcript manifests in, a model that transcribes.

    audio --16 kHz--> log-mel (T, 80), normalised per utterance [--specaugment in training]
          --frame stacking (k)--> rnnkit.RNN (bidirectional) --linear--> log p(symbol | frame) (T/k, V + 1)
          --greedy or prefix beam search [+ a character LM run, shallow fusion]--> text

The loss is ``torch.nn.functional.ctc_loss`` (Graves et al. 2006), blank id 0; the primary metric is the greedy
character error rate of the validation utterances (lower is better), with the word error rate beside it. Features
are computed once, when the data is read, in Python (``rnnkit.features``): an exported model (``rnnkit export``)
takes log-mel features, not audio. Decoding is ``rnnkit.ctc``.

An utterance whose subsampled frames are fewer than its transcript needs (its symbols plus one blank between each
repeated pair) cannot be aligned: it is dropped from training and validation with a count (``--too-short drop``)
or is an error (``--too-short error``).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.ctc import CharLMScorer, error_rates, greedy_decode, prefix_beam_search
from rnnkit.data.labelled import LengthBuckets
from rnnkit.data.speech import Utterances, read_utterances
from rnnkit.errors import ConfigError, DataError
from rnnkit.features import FeatureConfig, log_mel, normalise, spec_augment
from rnnkit.flags import float_flag, int_flag
from rnnkit.io import atomic_write_json
from rnnkit.sequence import pad_sequences
from rnnkit.tasks.base import Command, Flag, Table, Task
from rnnkit.tasks.ctc_parts import AcousticGraph, CTCConfig, CTCModel, plot_utterance

__all__ = ["CTCTask", "Encoded"]

log = logging.getLogger(__name__)


class Encoded:
    """Utterances as the model takes them: features (T_i, D) and target ids (U_i,) (ids 1..V; 0 is the blank)."""

    def __init__(self, task: CTCTask, utterances: Utterances, *, drop_short: bool) -> None:
        self.features = [task.featurise(x) for x in utterances.inputs]
        self.texts, self.names, self.rows = utterances.transcripts, utterances.names, utterances.rows
        self.targets: list[Tensor] = []
        self.unknown = self.dropped = 0
        if self.texts is None:
            return
        keep = []
        for i, text in enumerate(self.texts):
            units = task.units(text)
            ids = [task.index[u] for u in units if u in task.index]
            self.unknown += len(units) - len(ids)
            needed = len(ids) + sum(a == b for a, b in itertools.pairwise(ids))
            frames = self.features[i].size(0) // task.config.model.subsample
            if drop_short and (frames < needed or frames < 1):
                if task.config.data.too_short == "error":
                    raise DataError(f"{utterances.source}: line {self.rows[i]}: {frames} frames after subsampling "
                                    f"cannot align a transcript that needs {needed} ({text!r}); --too-short drop "
                                    "skips such utterances")  # fmt: skip
                continue
            keep.append(i)
            self.targets.append(torch.tensor(ids, dtype=torch.long))
        self.dropped = len(self.texts) - len(keep)
        if drop_short:
            self.features = [self.features[i] for i in keep]
            self.texts = [self.texts[i] for i in keep]
            self.names = [self.names[i] for i in keep]
            self.rows = [self.rows[i] for i in keep]

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, idx: list[int], generator: torch.Generator | None = None):
        """(features (B, T, D), lengths (B,), targets (sum U_i,), target lengths (B,)); SpecAugment with a
        ``generator``."""
        feats = [self.features[i] for i in idx]
        if generator is not None:
            feats = [spec_augment(f, generator) for f in feats]
        x, lengths = pad_sequences(feats)
        if not self.targets:
            return x, lengths, None, None
        ys = [self.targets[i] for i in idx]
        return x, lengths, torch.cat(ys), torch.tensor([len(y) for y in ys])


class _Batches:
    """Length-bucketed batches (``LengthBuckets``); batch (epoch, k) draws its SpecAugment masks from a generator
    seeded by (seed, epoch, k), so a resumed run sees the same masks."""

    def __init__(self, data: Encoded, buckets: LengthBuckets, specaugment: bool, seed: int) -> None:
        self.data, self.buckets, self.specaugment, self.seed = data, buckets, specaugment, seed

    def __len__(self) -> int:
        return len(self.buckets)

    def get(self, epoch: int, k: int):
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + k) if self.specaugment else None
        return self.data.batch(self.buckets.get(epoch, k).tolist(), g)

    def items(self, batch) -> int:
        return int(batch[1].numel())  # utterances


_DATA = Flag("--data", "manifest: audio<TAB>transcript lines (paths relative to it), or .npz; or a built-in dataset",
             required=True, metavar="FILE")  # fmt: skip
_DECODING = (
    Flag("--beam", "beam width of CTC prefix beam search (1 = greedy)", 1, int_flag(1, 64)),
    Flag("--lm", "a character LM run (rnnkit train lm) fused into beam search", None, metavar="RUN"),
    Flag("--lm-weight", "alpha: weight of the LM's log-probability", 0.5, float_flag(0, 10)),
    Flag("--insertion-bonus", "beta: bonus per output symbol with --lm", 1.0, float_flag(-100, 100)),
)


class CTCTask(Task):
    """``rnnkit train ctc``: utterances and their transcripts; the model writes the transcript."""

    name = "ctc"
    title = "CTC speech"
    help = "speech recognition with CTC on audio<TAB>transcript manifests"
    commands = (
        Command("eval", "score", "scores", "CER and WER of the transcripts", (_DATA, *_DECODING)),
        Command("predict", "predict_rows", "table", "audio<TAB>prediction for each utterance, in input order", (
            Flag("--data", "manifest: audio paths, one a line (a transcript after a tab is ignored)", required=True,
                 metavar="FILE"),
            *_DECODING,
        )),
    )  # fmt: skip
    Config = CTCConfig
    primary = "cer"
    higher_is_better = False
    unit = "utterances"

    # --- data -------------------------------------------------------------------------------------------------

    def units(self, text: str) -> list[str]:
        return list(text) if self.config.data.tokens == "chars" else text.split()

    def join(self, units: list[str]) -> str:
        return ("" if self.config.data.tokens == "chars" else " ").join(units)

    def featurise(self, x) -> Tensor:
        """Normalised log-mel features (T, n_mels) of a 16 kHz waveform, or an .npz example's features as they are."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if self.input == "audio":
            if x.dim() != 1:
                raise DataError(f"this run takes audio; got features of shape {tuple(x.shape)}")
            f = normalise(log_mel(x, FeatureConfig(n_mels=self.config.model.n_mels)))  # (T, M)
        else:
            if x.dim() != 2 or x.size(1) != self.num_features:
                raise DataError(f"this run takes features (T, {self.num_features}); got shape {tuple(x.shape)}")
            f = x
        k = self.config.model.subsample
        return F.pad(f, (0, 0, 0, k - f.size(0))) if f.size(0) < k else f  # at least one step after stacking

    def read(self, path: str, transcripts: str, drop_short: bool) -> Encoded:
        utterances = read_utterances(path, transcripts=transcripts)
        if utterances.kind != self.input:
            raise DataError(f"{path}: holds {utterances.kind}, and this run takes {self.input}")
        return Encoded(self, utterances, drop_short=drop_short)

    def prepare(self, artefacts: dict[str, Any] | None) -> None:
        d = self.config.data
        if d.data is None:
            raise ConfigError("ctc needs --data FILE (audio<TAB>transcript lines, or a built-in dataset such as "
                              "dtmf-digits)")  # fmt: skip
        train = read_utterances(d.data)
        if artefacts is not None:
            self.restore(artefacts)
        else:
            self.input = train.kind
            self.num_features = self.config.model.n_mels if train.kind == "audio" else int(train.inputs[0].shape[1])
            units = {u for text in train.transcripts for u in self.units(text)}
            self.restore({"symbols": sorted(units), "input": self.input, "num_features": self.num_features})
        encoded = Encoded(self, train, drop_short=True)
        if d.val is not None:
            self.train_set, self.val_set = encoded, self.read(d.val, "required", True)
        elif d.val_fraction > 0 and len(encoded) > 1:
            self.train_set, self.val_set = _split(encoded, d.val_fraction, self.config.train.seed)
        else:
            self.train_set = self.val_set = encoded
        self.val_is_train = self.val_set is self.train_set
        if not len(self.train_set):
            raise DataError(f"{d.data}: no utterance is long enough for its transcript ({encoded.dropped} dropped)")
        if encoded.dropped:
            log.warning("%s: dropped %d utterance(s) too short for their transcript", d.data, encoded.dropped)

    def restore(self, artefacts: dict[str, Any]) -> None:
        self.symbols = list(artefacts["symbols"])
        self.index = {s: i for i, s in enumerate(self.symbols, 1)}  # 0 is the blank
        self.input = artefacts["input"]
        self.num_features = int(artefacts["num_features"])

    def artefacts(self) -> dict[str, Any]:
        return {"symbols": self.symbols, "input": self.input, "num_features": self.num_features}

    def write_files(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / "symbols.json", {"format": "rnnkit.ctc/1", "blank": 0, **self.artefacts()})

    def build_model(self) -> CTCModel:
        return CTCModel(self.num_features, len(self.symbols), self.config.model)

    def export_graphs(self, model: CTCModel) -> list:
        """One graph, the acoustic model: features and lengths in, CTC log-probabilities out (decoding and the
        features stay in Python)."""
        from rnnkit.export import Graph, to_torch_modules

        features, lengths = torch.randn(2, 12, self.num_features), torch.tensor([12, 9])
        axes = {"features": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "log_probs": {0: "batch", 1: "steps"},
                "out_lengths": {0: "batch"}}  # fmt: skip
        graph = AcousticGraph(to_torch_modules(model).eval())
        return [Graph(graph, (features, lengths), ["features", "lengths"], ["log_probs", "out_lengths"], axes)]

    def describe(self) -> dict[str, Any]:
        return {"train_utterances": len(self.train_set), "val_utterances": len(self.val_set),
                "validates_on_training_set": self.val_is_train, "symbols": len(self.symbols),
                "dropped_too_short": self.train_set.dropped + (0 if self.val_is_train else self.val_set.dropped),
                "input": self.input}  # fmt: skip

    # --- training ---------------------------------------------------------------------------------------------

    def batches(self, rank: int, world_size: int) -> _Batches:
        cfg = self.config.train
        lengths = [f.size(0) for f in self.train_set.features]
        buckets = LengthBuckets(lengths, cfg.batch_size, cfg.seed, rank=rank, world_size=world_size)
        return _Batches(self.train_set, buckets, self.config.data.specaugment, cfg.seed)

    def loss(self, model: nn.Module, batch, state, device: torch.device):
        x, lengths, y, y_lengths = batch
        log_probs, out_lengths = model(x.to(device), lengths.to(device))  # (B, T', V+1) fp32
        loss = F.ctc_loss(log_probs.transpose(0, 1), y.to(device), out_lengths, y_lengths.to(device),
                          blank=0, reduction="mean", zero_infinity=True)  # fmt: skip
        return loss, None

    # --- decoding and scoring -----------------------------------------------------------------------------------

    @torch.no_grad()
    def posteriors(self, model: CTCModel, data: Encoded, device="cpu", batch_size: int = 64):
        """Each utterance's log-probabilities (T'_i, V+1), in input order, with the summed CTC loss (None without
        transcripts) and the number of target symbols it covers."""
        was_training = model.training
        model.eval()
        order = sorted(range(len(data)), key=lambda i: data.features[i].size(0))
        out: list[Tensor] = [torch.empty(0)] * len(data)
        total, symbols = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x, lengths, y, y_lengths = data.batch(idx)
            log_probs, out_lengths = model(x.to(device), lengths.to(device))  # (b, T', V+1)
            if y is not None:
                total += float(F.ctc_loss(log_probs.transpose(0, 1), y.to(device), out_lengths, y_lengths.to(device),
                                          reduction="sum", zero_infinity=True))  # fmt: skip
                symbols += int(y_lengths.sum())
            for j, i in enumerate(idx):
                out[i] = log_probs[j, : int(out_lengths[j])].float().cpu()
        model.train(was_training)
        return out, (total if data.targets else None), symbols

    def decode(self, log_probs: list[Tensor], *, beam: int = 1, lm: str | None = None, lm_weight: float = 0.5,
               insertion_bonus: float = 1.0) -> list[str]:  # fmt: skip
        """Transcripts of each utterance's log-probabilities: greedy (beam 1, no LM) or prefix beam search (the LM's
        weight and the insertion bonus apply with an LM only)."""
        if lm is None and beam == 1:
            return [self.join([self.symbols[i - 1] for i in greedy_decode(lp[None], torch.tensor([lp.size(0)]))[0]])
                    for lp in log_probs]  # fmt: skip
        scorer = None
        if lm is not None:
            from rnnkit.checkpoint import load_run

            if self.config.data.tokens != "chars":
                raise ConfigError("--lm fuses a character LM, and this run's symbols are space-separated units")
            run = load_run(lm, task="lm", purpose="--lm")
            scorer = CharLMScorer(run.model, run.task.vocab, self.symbols)
        texts = []
        for lp in log_probs:
            if scorer is not None:
                scorer.cache.clear()
            best = prefix_beam_search(lp, beam, lm=scorer, lm_weight=lm_weight,
                                      insertion_bonus=insertion_bonus if scorer is not None else 0.0)[0]  # fmt: skip
            texts.append(self.join([self.symbols[i - 1] for i in best.ids]))
        return texts

    def evaluate(self, model: nn.Module, device: torch.device, dist_info) -> dict[str, float]:
        log_probs, total, symbols = self.posteriors(model, self.val_set, device)
        m = error_rates(self.decode(log_probs), self.val_set.texts)
        return {"loss": total / max(symbols, 1), "cer": m["cer"], "wer": m["wer"]}

    def plots(self, model: nn.Module, run_dir: Path, device: torch.device) -> None:
        """ctc.png: the first validation utterance's features, CTC posteriors and greedy transcript."""
        one = _subset(self.val_set, [0])
        log_probs = self.posteriors(model, one, device)[0]
        plot_utterance(run_dir / "ctc.png", one.features[0], log_probs[0], self.symbols, self.decode(log_probs)[0],
                       one.texts[0])  # fmt: skip

    # --- inference commands -----------------------------------------------------------------------------------

    def _decoding(self, beam: int, lm: str | None, lm_weight: float, insertion_bonus: float) -> str:
        if lm is None:
            return "greedy" if beam == 1 else f"beam {beam}"
        return f"beam {beam} + LM {lm} (weight {lm_weight:g}, insertion bonus {insertion_bonus:g})"

    def score(self, model: CTCModel, *, data: str, beam: int = 1, lm: str | None = None, lm_weight: float = 0.5,
              insertion_bonus: float = 1.0) -> dict[str, Any]:  # fmt: skip
        """``rnnkit eval``: corpus CER and WER of every utterance (none dropped: an utterance too short for its
        transcript scores its errors), the decoding used, and how many transcript symbols the model never saw."""
        encoded = self.read(data, "required", drop_short=False)
        decoded = self.decode(self.posteriors(model, encoded)[0], beam=beam, lm=lm, lm_weight=lm_weight,
                              insertion_bonus=insertion_bonus)  # fmt: skip
        m = error_rates(decoded, encoded.texts)
        return {"cer": m["cer"], "wer": m["wer"], "n": m["n"], "unknown_symbols": encoded.unknown,
                "decoding": self._decoding(beam, lm, lm_weight, insertion_bonus)}  # fmt: skip

    def predict_rows(self, model: CTCModel, *, data: str, beam: int = 1, lm: str | None = None,
                     lm_weight: float = 0.5, insertion_bonus: float = 1.0) -> Table:  # fmt: skip
        """``rnnkit predict``: ``audio<TAB>prediction`` rows, in input order."""
        encoded = self.read(data, "optional", drop_short=False)
        decoded = self.decode(self.posteriors(model, encoded)[0], beam=beam, lm=lm, lm_weight=lm_weight,
                              insertion_bonus=insertion_bonus)  # fmt: skip
        notes = [f"decoding: {self._decoding(beam, lm, lm_weight, insertion_bonus)}"]
        return Table(None, [[n, t] for n, t in zip(encoded.names, decoded, strict=True)], format="tsv", notes=notes)


def _subset(data: Encoded, idx: list[int]) -> Encoded:
    out = Encoded.__new__(Encoded)
    out.features = [data.features[i] for i in idx]
    out.texts = None if data.texts is None else [data.texts[i] for i in idx]
    out.names, out.rows = [data.names[i] for i in idx], [data.rows[i] for i in idx]
    out.targets = [data.targets[i] for i in idx] if data.targets else []
    out.unknown = out.dropped = 0
    return out


def _split(data: Encoded, fraction: float, seed: int) -> tuple[Encoded, Encoded]:
    """A seeded ``fraction`` of the utterances (at least one) held out for validation."""
    n_val = max(1, min(len(data) - 1, round(fraction * len(data))))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    train, val = _subset(data, sorted(order[n_val:])), _subset(data, sorted(order[:n_val]))
    train.dropped = data.dropped
    return train, val
