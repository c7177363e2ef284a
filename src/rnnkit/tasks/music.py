"""Music generation: piano rolls -> rnnkit.RNN over frames -> a Bernoulli or NADE head over the keys of each frame.

    frames v_0 .. v_{T-1} (T, K) --shift right, 0 first--> inputs (T, K) --rnnkit.RNN--> h (T, H)
        --head--> log p(v_t | v_<t) = log p(v_t | h_t), exact for both heads (``rnnkit.tasks.music_heads``)

A frame is the set of keys down at one step of ``resolution`` steps per quarter note (``rnnkit.data.music``); the
K keys are the pitch range of the training pieces, widened by ``transpose`` semitones each way when training
pieces are transposed at random (augmentation). ``MusicTask`` is ``rnnkit train music``: training windows of
``seq_len`` frames (each window's first input is the frame before it), validation on whole pieces from a zero
state, reported as the literature reports JSB Chorales (Boulanger-Lewandowski et al. 2012; Chung et al. 2014):
``nll_per_frame``, nats per step summed over the keys and averaged over frames, and ``frame_accuracy`` (Bay et al.
2009), sum TP / sum (TP + FP + FN) over all frames of the predicted frame against the true one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.config import RecurrentConfig, RunConfig, TrainConfig, check_float, check_int, recurrent_field
from rnnkit.data.music import Piece, pitch_range, read_piece, read_pieces, roll_to_notes, write_midi
from rnnkit.distributed import all_reduce
from rnnkit.errors import ConfigError, DataError
from rnnkit.flags import float_flag, int_flag
from rnnkit.init import initialise_
from rnnkit.io import atomic_write, atomic_write_json
from rnnkit.recurrent import RNN
from rnnkit.tasks.base import Command, Files, Flag, Task
from rnnkit.tasks.music_heads import HEADS, FrameHead

__all__ = ["MusicConfig", "MusicDataConfig", "MusicModelConfig", "MusicRNN", "MusicTask", "MusicTrainConfig"]

MAX_RESOLUTION = 96  # steps per quarter note: a 128th-note triplet grid; finer is a typo


def _paths(name: str, value: object) -> tuple[str, ...] | None:
    """A config's file list: None, or a non-empty list of non-empty strings (a TOML array, JSON list, or one string)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name} must be one or more files or folders (non-empty paths), got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class MusicModelConfig(RecurrentConfig):
    """Frames -> rnnkit.RNN -> dropout -> a head over the keys of the next frame (``MusicRNN``)."""

    mode: str = recurrent_field("mode", "gru")
    hidden_size: int = recurrent_field("hidden_size", 128)
    head: str = field(
        default="nade",
        metadata={"help": "output: nade (keys in order, each given the lower keys of its frame; models chords) or "
                  "bernoulli (keys independent given the history)"},
    )  # fmt: skip
    nade_size: int = field(default=64, metadata={"help": "hidden units of the NADE head (units)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        check_int("nade_size", self.nade_size, 1, 2**16)


@dataclass(frozen=True)
class MusicDataConfig:
    """The pieces to learn from, how they are sampled into frames, and the validation pieces."""

    data: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "MIDI files or folders of them (MusicXML, ABC, kern with music21), or a built-in dataset "
                  "(rnnkit datasets); required"},
    )  # fmt: skip
    val: tuple[str, ...] | None = field(
        default=None, metadata={"help": "validation pieces, as --data (unset: a share of --data's pieces)"}
    )
    val_fraction: float = field(
        default=0.1,
        metadata={"help": "without --val: share of the pieces held out whole, in [0, 0.5] (0 = validate on the "
                  "training pieces)"},
    )  # fmt: skip
    resolution: int = field(default=4, metadata={"help": f"frames per quarter note, 1..{MAX_RESOLUTION} (4: 16ths)"})
    transpose: int = field(
        default=0, metadata={"help": "augment: shift each training window by up to this many semitones up or down"}
    )
    seq_len: int = field(default=128, metadata={"help": "frames per training window (steps)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _paths("data", self.data))
        object.__setattr__(self, "val", _paths("val", self.val))
        check_float("val_fraction", self.val_fraction, 0.0, 0.5)
        check_int("resolution", self.resolution, 1, MAX_RESOLUTION)
        check_int("transpose", self.transpose, 0, 24)
        check_int("seq_len", self.seq_len, 1, 2**20)


@dataclass(frozen=True)
class MusicTrainConfig(TrainConfig):
    """The trainer's settings, with defaults for windows of a hundred-odd frames."""

    batch_size: int = field(default=16, metadata={"help": "windows per batch (count)"})
    max_minutes: float = field(default=3.0, metadata={"help": "stop after this much training time (minutes)"})
    eval_every: int = field(default=100, metadata={"help": "validate every this many steps (steps)"})


@dataclass(frozen=True)
class MusicConfig(RunConfig):
    """The whole music run: ``model``, ``data`` and ``train`` sections."""

    model: MusicModelConfig = field(default_factory=MusicModelConfig)
    data: MusicDataConfig = field(default_factory=MusicDataConfig)
    train: MusicTrainConfig = field(default_factory=MusicTrainConfig)


class MusicRNN(nn.Module):
    """p(v_t | v_<t) over frames of ``keys`` keys: the previous frame in, ``rnnkit.RNN``, then a ``FrameHead``."""

    def __init__(self, keys: int, config: MusicModelConfig) -> None:
        super().__init__()
        if isinstance(keys, bool) or not isinstance(keys, int) or keys < 1:
            raise ValueError(f"keys must be a positive int, got {keys!r}")
        self.keys, self.config = keys, config
        H = config.hidden_size
        self.rnn = RNN(config.mode, keys, H, config.num_layers, dropout=config.dropout, backend=config.backend,
                       **config.rnn_options())  # fmt: skip
        self.drop = nn.Dropout(config.dropout)
        self.head: FrameHead = HEADS[config.head](H, keys, config.nade_size)
        initialise_(self.rnn, config.init)

    def forward(self, inputs: Tensor, state=None, lengths: Tensor | None = None) -> tuple[Tensor, Any]:
        """inputs (B, T, K): the frame before each step -> h (B, T, H), the state after the last step."""
        if inputs.dim() != 3 or inputs.size(-1) != self.keys:
            raise ValueError(f"inputs must be (B, T, {self.keys}) frames, got {tuple(inputs.shape)}")
        h, state = self.rnn(inputs, state, lengths)  # (B, T, H)
        return self.drop(h), state

    def log_prob(self, frames: Tensor, lengths: Tensor | None = None, first: Tensor | None = None) -> Tensor:
        """log p(v_t | v_<t) (B, T) of frames (B, T, K) from a zero state; ``first`` (B, K): the frame before v_0
        (zeros when None: the start of a piece)."""
        before = torch.zeros_like(frames[:, :1]) if first is None else first[:, None].to(frames)  # (B, 1, K)
        inputs = torch.cat([before, frames[:, :-1]], 1)  # (B, T, K): v_{t-1}
        h, _ = self(inputs, None, lengths)
        return self.head.log_prob(h, frames)  # (B, T)

    @torch.no_grad()
    def generate(self, length: int, prompt: Tensor | None = None, *, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
        """``length`` frames (length, K) continuing ``prompt`` (P, K) (None: from the start of a piece)."""
        state, frame = None, torch.zeros(1, self.keys)
        if prompt is not None and len(prompt):
            inputs = torch.cat([frame, prompt[:-1].float()])[None]  # (1, P, K)
            _, state = self(inputs)
            frame = prompt[-1:].float()  # (1, K)
        out = []
        for _ in range(length):
            h, state = self.rnn.step(frame, state)  # (1, H)
            frame = self.head.sample(h, temperature, generator)  # (1, K)
            out.append(frame)
        return torch.cat(out) if out else torch.zeros(0, self.keys)


class _Windows:
    """Training batches: windows of ``seq_len`` frames of each piece, shuffled each epoch, each transposed by a
    shift drawn per window; batch (epoch, k) is the same whatever ran before (an exact resume)."""

    def __init__(self, rolls: list[np.ndarray], keys: int, shift: int, batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:  # fmt: skip
        self.rolls, self.keys, self.shift = rolls, keys, shift  # rolls (T_i, K + 2 shift): room to transpose
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.windows = [(i, s) for i, r in enumerate(rolls) for s in range(0, len(r), seq_len)]
        self.per_rank = len(self.windows[rank::world_size])

    def __len__(self) -> int:
        return max(1, math.ceil(self.per_rank / self.batch_size))

    def get(self, epoch: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.windows), generator=g)[self.rank :: self.world_size]
        chosen = order[k * self.batch_size : (k + 1) * self.batch_size].tolist()
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + k)
        shifts = torch.randint(-self.shift, self.shift + 1, (len(chosen),), generator=g).tolist()
        K, N = self.keys, self.shift
        L = max(min(self.seq_len, len(self.rolls[self.windows[w][0]]) - self.windows[w][1]) for w in chosen)
        frames = torch.zeros(len(chosen), L, K)  # (B, L, K): L the longest window of the batch
        first = torch.zeros(len(chosen), K)  # (B, K): the frame before each window
        lengths = torch.zeros(len(chosen), dtype=torch.long)
        for b, (w, d) in enumerate(zip(chosen, shifts, strict=True)):
            i, s = self.windows[w]
            roll = self.rolls[i][:, N - d : N - d + K]  # (T_i, K): key k of the shifted piece
            window = roll[s : s + L]
            frames[b, : len(window)] = torch.from_numpy(window.astype(np.float32))
            if s > 0:
                first[b] = torch.from_numpy(roll[s - 1].astype(np.float32))
            lengths[b] = len(window)
        return frames, first, lengths

    def items(self, batch) -> int:
        return int(batch[2].sum())  # frames


class MusicTask(Task):
    """``rnnkit train music``: the next frame of a piano roll given the frames before it."""

    name = "music"
    title = "music"
    help = "music model over piano rolls (MIDI), with a Bernoulli or RNN-NADE output"
    commands = (
        Command("eval", "score", "scores", "NLL per frame, frame accuracy and out-of-range notes of pieces", (
            Flag("--data", "MIDI file, folder or built-in dataset to score", required=True, metavar="FILE"),
        )),
        Command("sample", "sample", "files", "generate a piece: a MIDI file, and a piano-roll PNG and a WAV", (
            Flag("--out", "the MIDI file to write (.mid)", required=True, metavar="FILE.mid", output=".mid"),
            Flag("--length", "frames to generate", 128, int_flag(0)),
            Flag("--prompt", "MIDI file to continue (default: none, from the start of a piece)", None,
                 metavar="FILE.mid"),
            Flag("--temperature", "each key's logit is divided by it; 0 = the likelier value", 1.0,
                 float_flag(0, float("inf"))),
            Flag("--seed", "sampling seed", 0, int_flag(0)),
            Flag("--tempo", "quarter notes per minute of the MIDI file and the audio", 100.0,
                 float_flag(1, 1000)),
            Flag("--plot", "also draw the piano roll here (.png)", None, metavar="FILE.png", output=".png"),
            Flag("--audio", "also render it with the built-in synthesiser here (.wav)", None, metavar="FILE.wav",
                 output=".wav"),
        )),
    )  # fmt: skip
    Config = MusicConfig
    primary = "nll_per_frame"
    higher_is_better = False
    unit = "frames"

    # --- data ---------------------------------------------------------------------------------------------------

    def prepare(self, artefacts: dict[str, Any] | None) -> None:
        d = self.config.data
        if d.data is None:
            raise ConfigError("music needs --data (MIDI files, folders of them, or a built-in dataset: arpeggios)")
        pieces, self.skipped = read_pieces(d.data)
        val_pieces = read_pieces(d.val)[0] if d.val is not None else None
        if val_pieces is None and d.val_fraction > 0 and len(pieces) >= 2:
            g = torch.Generator().manual_seed(self.config.train.seed)
            order = torch.randperm(len(pieces), generator=g).tolist()
            n_val = min(len(pieces) - 1, max(1, round(d.val_fraction * len(pieces))))
            val_pieces = [pieces[i] for i in order[:n_val]]
            pieces = [pieces[i] for i in sorted(order[n_val:])]
        rolls = [p.roll(d.resolution) for p in pieces]
        if artefacts is not None:
            self.restore(artefacts)
        else:
            low, high = pitch_range(r.frames for r in rolls)
            self.low, self.high = max(0, low - d.transpose), min(127, high + d.transpose)
        self.train_pieces = [r.frames for r in rolls if len(r.frames)]
        self.val_is_train = val_pieces is None
        self.val_set = self.encode(val_pieces if val_pieces is not None else pieces)
        self.dropped = sum(r.dropped for r in rolls)

    @property
    def keys(self) -> int:
        return self.high - self.low + 1

    def encode(self, pieces: list[Piece]) -> dict[str, Any]:
        """Pieces as (T_i, K) float tensors of the run's keys, and the notes outside them (left out, counted)."""
        frames, outside = [], 0
        for p in pieces:
            roll = p.roll(self.config.data.resolution).frames  # (T, 128)
            outside += len(roll_to_notes(np.delete(roll, np.s_[self.low : self.high + 1], axis=1)))
            if len(roll):
                frames.append(torch.from_numpy(roll[:, self.low : self.high + 1].astype(np.float32)))
        return {"frames": frames, "out_of_range_notes": outside, "pieces": len(pieces)}

    def restore(self, artefacts: dict[str, Any]) -> None:
        self.low, self.high = int(artefacts["low"]), int(artefacts["high"])

    def artefacts(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}

    def write_files(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / "keys.json", {
            "low": self.low, "high": self.high, "keys": self.keys, "resolution": self.config.data.resolution,
            "train_pieces": len(self.train_pieces), "skipped_files": self.skipped,
            "notes_between_steps": self.dropped})  # fmt: skip

    def build_model(self) -> MusicRNN:
        return MusicRNN(self.keys, self.config.model)

    def describe(self) -> dict[str, Any]:
        return {"train_pieces": len(self.train_pieces), "train_frames": sum(len(r) for r in self.train_pieces),
                "val_pieces": len(self.val_set["frames"]), "validates_on_training_set": self.val_is_train,
                "keys": self.keys, "lowest_key": self.low, "skipped_files": self.skipped,
                "notes_between_steps": self.dropped}  # fmt: skip

    # --- training and evaluation ----------------------------------------------------------------------------------

    def batches(self, rank: int, world_size: int) -> _Windows:
        N, lo = self.config.data.transpose, self.low - self.config.data.transpose
        padded = []  # each roll's keys lo .. high + N: room for every shift in [-N, N]
        for roll in self.train_pieces:
            wide = np.zeros((len(roll), self.keys + 2 * N), dtype=bool)
            src_lo, src_hi = max(lo, 0), min(self.high + N, 127)
            wide[:, src_lo - lo : src_hi - lo + 1] = roll[:, src_lo : src_hi + 1]
            padded.append(wide)
        cfg = self.config
        return _Windows(padded, self.keys, N, cfg.train.batch_size, cfg.data.seq_len, cfg.train.seed, rank,
                        world_size)  # fmt: skip

    def loss(self, model: MusicRNN, batch, state, device: torch.device) -> tuple[Tensor, None]:
        frames, first, lengths = batch
        logp = model.log_prob(frames.to(device), lengths, first.to(device))  # (B, L)
        mask = torch.arange(frames.size(1), device=device)[None] < lengths.to(device)[:, None]  # (B, L)
        return -(logp * mask).sum() / mask.sum(), None  # nats per frame

    @torch.no_grad()
    def totals(self, model: MusicRNN, frames: list[Tensor], device="cpu", rank: int = 0, world_size: int = 1,
               batch_size: int = 16) -> dict[str, float]:  # fmt: skip
        """Summed -log p, frames, and TP, FP, FN of the predicted frames of this rank's share of whole pieces."""
        was_training = model.training
        model.eval()
        order = sorted(range(len(frames)), key=lambda i: len(frames[i]))[rank::world_size]
        nll = n = tp = fp = fn = 0.0
        for start in range(0, len(order), batch_size):
            chunk = [frames[i] for i in order[start : start + batch_size]]
            lengths = torch.tensor([len(f) for f in chunk])
            v = nn.utils.rnn.pad_sequence(chunk, batch_first=True).to(device)  # (B, T, K)
            mask = (torch.arange(v.size(1), device=device)[None] < lengths.to(device)[:, None]).float()  # (B, T)
            inputs = torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], 1)  # (B, T, K)
            h, _ = model(inputs, None, lengths)  # (B, T, H)
            nll -= float((model.head.log_prob(h, v) * mask).sum())
            guess = model.head.predict(h) * mask[..., None]  # (B, T, K)
            tp += float((guess * v).sum())
            fp += float((guess * (1 - v)).sum())
            fn += float(((1 - guess) * v).sum())
            n += float(mask.sum())
        model.train(was_training)
        return {"nll": nll, "frames": n, "tp": tp, "fp": fp, "fn": fn}

    def metrics(self, model: MusicRNN, frames: list[Tensor], device="cpu", dist_info=None) -> dict[str, float]:
        """nll_per_frame (nats) and frame_accuracy over all frames of ``frames`` (pieces (T_i, K))."""
        rank, world = (dist_info.rank, dist_info.world_size) if dist_info is not None else (0, 1)
        t = self.totals(model, frames, device, rank, world)
        if dist_info is not None and dist_info.enabled:
            t = dict(zip(t, all_reduce(list(t.values()), "sum", dist_info, torch.device(device)), strict=True))
        nll = t["nll"] / max(t["frames"], 1)
        accuracy = t["tp"] / max(t["tp"] + t["fp"] + t["fn"], 1)  # Bay et al. (2009)
        return {"loss": nll, "nll_per_frame": nll, "frame_accuracy": accuracy, "frames": int(t["frames"])}

    def evaluate(self, model: nn.Module, device: torch.device, dist_info) -> dict[str, float]:
        m = self.metrics(model, self.val_set["frames"], device, dist_info)
        return {"loss": m["loss"], "nll_per_frame": m["nll_per_frame"], "frame_accuracy": m["frame_accuracy"]}

    # --- inference commands -----------------------------------------------------------------------------------

    def score(self, model: MusicRNN, *, data: str) -> dict[str, Any]:
        """``rnnkit eval``: NLL per frame (nats), frame accuracy, frames and pieces of ``data``, and its notes
        outside the run's keys (left out of the score, counted)."""
        encoded = self.encode(read_pieces(data)[0])
        if not encoded["frames"]:
            raise DataError(f"{data}: no note sounds at any step at resolution {self.config.data.resolution}")
        m = self.metrics(model, encoded["frames"])
        return {"nll_per_frame": m["nll_per_frame"], "frame_accuracy": m["frame_accuracy"], "frames": m["frames"],
                "pieces": encoded["pieces"], "out_of_range_notes": encoded["out_of_range_notes"]}  # fmt: skip

    def sample(self, model: MusicRNN, *, out: str, length: int = 128, prompt: str | None = None,
               temperature: float = 1.0, seed: int = 0, tempo: float = 100.0, plot: str | None = None,
               audio: str | None = None) -> Files:  # fmt: skip
        """``rnnkit sample``: ``length`` frames continuing ``prompt`` (a MIDI file), written as a MIDI file to
        ``out`` (prompt included), and on request as a piano roll PNG (``plot``) and a WAV (``audio``)."""
        R, notes = self.config.data.resolution, []
        primer = None
        if prompt is not None:
            encoded = self.encode([read_piece(prompt)])
            primer = encoded["frames"][0] if encoded["frames"] else None
            if primer is None:
                raise DataError(f"{prompt}: no note sounds at any step at resolution {R}")
            if encoded["out_of_range_notes"]:
                notes.append(f"{prompt}: {encoded['out_of_range_notes']} notes outside the run's keys "
                             f"{self.low}..{self.high} left out of the prompt")  # fmt: skip
        model.eval()
        new = model.generate(
            length, primer, temperature=temperature, generator=torch.Generator().manual_seed(seed)
        )  # (length, K)
        frames = (new if primer is None else torch.cat([primer, new])).numpy() > 0.5  # (P + length, K)
        atomic_write(out, write_midi(frames, R, self.low, tempo=tempo))
        written = [Path(out)]
        if plot is not None:
            plot_piano_roll(frames, self.low, R, plot, prompt=0 if primer is None else len(primer))
            written.append(Path(plot))
        if audio is not None:
            from rnnkit.synth import render, write_wav

            write_wav(audio, render(frames, R, self.low, tempo=tempo))
            written.append(Path(audio))
        count = len(roll_to_notes(frames[-length:] if length else frames[:0]))
        notes.append(f"sampled {length} frames ({length / R:g} quarter notes, {count} notes) at temperature "
                     f"{temperature:g}, seed {seed}")  # fmt: skip
        return Files(written, notes)

    def after_training(self, run_dir: Path) -> list[str]:
        """A sample of the best checkpoint (temperature 1, seed 0) as sample.mid and sample.png in the run."""
        from rnnkit.checkpoint import load_run

        run = load_run(run_dir, "best")
        with run.autocast():
            files = self.sample(run.model, out=str(run_dir / "sample.mid"), length=32 * self.config.data.resolution,
                                plot=str(run_dir / "sample.png"))  # fmt: skip
        return [f"sample (best checkpoint, temperature 1, seed 0): {', '.join(str(p) for p in files.paths)}",
                f"  listen: rnnkit sample --run {run_dir} --out song.mid --audio song.wav"]  # fmt: skip


def plot_piano_roll(frames: np.ndarray, low: int, resolution: int, path: str | Path, *, prompt: int = 0,
                    title: str | None = None) -> None:  # fmt: skip
    """A piano roll PNG: time (quarter notes) across, MIDI pitch up, the prompt's frames shaded; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rnnkit.io import atomic_open

    T, K = frames.shape
    used = np.flatnonzero(frames.any(0))
    lo, hi = (int(used[0]), int(used[-1])) if len(used) else (0, K - 1)
    lo, hi = max(0, lo - 2), min(K - 1, hi + 2)
    fig, ax = plt.subplots(figsize=(min(12, 3 + T / (8 * resolution)), 3.2), dpi=100)
    extent = (0, T / resolution, low + lo - 0.5, low + hi + 0.5)
    ax.imshow(frames[:, lo : hi + 1].T, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest",
              extent=extent, vmin=0, vmax=1)  # fmt: skip
    if prompt:
        ax.axvspan(0, prompt / resolution, color="tab:blue", alpha=0.12, label="prompt")
        ax.legend(loc="upper right", fontsize=8)
    for c in range(0, 128, 12):  # the Cs
        if low + lo <= c <= low + hi:
            ax.axhline(c - 0.5, color="tab:red", lw=0.4, alpha=0.4)
    ax.set_xlabel("quarter notes")
    ax.set_ylabel("MIDI pitch (red: C)")
    ax.set_title(title or f"sampled piano roll: {T} frames at {resolution} per quarter note", fontsize=10)
    fig.tight_layout()
    with atomic_open(path, suffix=".png") as (_, tmp):
        fig.savefig(tmp, format="png")
    plt.close(fig)
