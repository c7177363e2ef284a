"""Music as piano rolls: MIDI files (mido) and scores (music21) in, a (T, 128) roll per piece, MIDI out.

A ``Piece`` is a list of notes ``(pitch, start, end)`` in quarter notes; ``Piece.roll(R)`` samples it at R steps per
quarter note into a boolean (T, 128) array, frame t holding the notes that sound at time t / R. That is how the JSB
Chorales rolls were made (sampled at each quarter note, Boulanger-Lewandowski et al. 2012), with one allowance for
played (unquantised) MIDI: each onset and offset is taken a quarter step early, so a note played a little late
still starts on its step and a sixteenth at ``R = 4`` keeps its step. A note that sounds at no sampled instant (an
eighth between two quarter-note samples) is left out of the roll and counted (``Roll.dropped``).

    MIDI (.mid, .midi)             mido: every note-on/off of every track but channel 10's (drums), in ticks / tpb
    MusicXML, ABC, kern, ...       music21 when installed: the flattened score's notes and chords, ties joined

``write_midi`` is the inverse of a roll: each run of consecutive frames where a key is down becomes one note, so
roll -> MIDI -> roll gives the same roll (a note repeated without a gap merges into one long note, as in any roll).
``read_pieces`` reads files, folders and built-in datasets for ``rnnkit train music --data``.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnkit.errors import DataError
from rnnkit.io import read_input

__all__ = [
    "MIDI_SUFFIXES",
    "PITCHES",
    "SCORE_SUFFIXES",
    "Piece",
    "Roll",
    "notes_to_midi",
    "pitch_range",
    "read_piece",
    "read_pieces",
    "require_mido",
    "roll_to_notes",
    "write_midi",
]

log = logging.getLogger(__name__)

PITCHES = 128  # MIDI note numbers 0..127
DRUM_CHANNEL = 9  # General MIDI's channel 10, counted from 0
MIDI_SUFFIXES = (".mid", ".midi")
SCORE_SUFFIXES = (".xml", ".mxl", ".musicxml", ".abc", ".krn")  # read through music21
EARLY = 0.25  # onsets and offsets are taken this many steps early before sampling (see the module docstring)
TICKS_PER_QUARTER = 480  # what write_midi uses: a multiple of 2, 3, 4, 5, 6, 8, 10, 12, 16


def require_mido():
    """The mido module, or a DataError naming the extra that installs it."""
    try:
        import mido
    except ImportError:
        raise DataError("reading and writing MIDI needs mido: pip install 'rnnkit[music]'") from None
    return mido


@dataclass(frozen=True)
class Roll:
    """A piece sampled at ``resolution`` steps per quarter note: ``frames`` (T, 128) bool, and the notes that
    sounded at no sampled instant (``dropped``)."""

    frames: np.ndarray
    resolution: int
    dropped: int


@dataclass(frozen=True)
class Piece:
    """One piece of music: ``notes`` (N, 3) float64 rows of (pitch, start, end), times in quarter notes."""

    name: str
    notes: np.ndarray

    def roll(self, resolution: int) -> Roll:
        """The piece sampled at ``resolution`` steps per quarter note (see the module docstring)."""
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        pitch = self.notes[:, 0].astype(np.int64)  # (N,)
        start = np.ceil(self.notes[:, 1] * resolution - EARLY - 1e-9).astype(np.int64).clip(min=0)  # (N,)
        end = np.ceil(self.notes[:, 2] * resolution - EARLY - 1e-9).astype(np.int64)  # (N,)
        kept = end > start
        T = int(end[kept].max()) if kept.any() else 0
        frames = np.zeros((T, PITCHES), dtype=bool)  # (T, 128)
        for p, s, e in zip(pitch[kept], start[kept], end[kept], strict=True):
            frames[s:e, p] = True
        return Roll(frames, resolution, int((~kept).sum()))


def roll_to_notes(frames: np.ndarray, low: int = 0) -> list[tuple[int, int, int]]:
    """Each run of consecutive frames where key k is down -> one note ``(low + k, start step, end step)``, in
    order of start, then pitch: frames (T, K) bool."""
    frames = np.asarray(frames, dtype=bool)
    if frames.ndim != 2:
        raise ValueError(f"frames must be a (T, K) array, got shape {frames.shape}")
    padded = np.pad(frames, ((1, 1), (0, 0))).astype(np.int8)  # (T+2, K)
    edges = np.diff(padded, axis=0)  # (T+1, K): +1 where a run starts, -1 where it ends
    notes = []
    for k in range(frames.shape[1]):
        starts, ends = np.flatnonzero(edges[:, k] == 1), np.flatnonzero(edges[:, k] == -1)
        notes += [(low + k, int(s), int(e)) for s, e in zip(starts, ends, strict=True)]
    return sorted(notes, key=lambda n: (n[1], n[0]))


def write_midi(frames: np.ndarray, resolution: int, low: int = 0, *, tempo: float = 100.0, program: int = 0,
               velocity: int = 80) -> bytes:  # fmt: skip
    """A standard MIDI file (type 0, one track) of a roll: frames (T, K) bool, key k is MIDI pitch ``low + k``,
    ``resolution`` frames per quarter note, ``tempo`` quarter notes per minute, General MIDI ``program`` (0 piano)."""
    T, K = np.shape(frames)
    if not (low >= 0 and low + K <= PITCHES):
        raise ValueError(f"keys low={low} .. low+K-1={low + K - 1} must lie in 0..127")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    notes = np.array(roll_to_notes(frames, low), dtype=np.float64).reshape(-1, 3)  # (N, 3) in steps
    notes[:, 1:] /= resolution
    return notes_to_midi(notes, length=T / resolution, tempo=tempo, program=program, velocity=velocity)


def notes_to_midi(notes: np.ndarray, channels: Sequence[int] | None = None, *, length: float = 0.0,
                  tempo: float = 100.0, program: int = 0, velocity: int = 80) -> bytes:  # fmt: skip
    """A standard MIDI file (type 0) of (pitch, start, end) rows in quarter notes, each on its channel (default 0),
    times rounded to 1/480 of a quarter note; ``length`` (quarter notes) extends the file past its last note."""
    mido = require_mido()
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 3)
    channels = [0] * len(notes) if channels is None else list(channels)
    events = []  # (tick, 0 for off / 1 for on, pitch, channel): offs before ons at the same tick
    for (pitch, start, end), ch in zip(notes, channels, strict=True):
        t0, t1 = round(start * TICKS_PER_QUARTER), round(end * TICKS_PER_QUARTER)
        events += [(t0, 1, int(pitch), ch), (t1, 0, int(pitch), ch)]
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo), time=0))
    for ch in sorted(set(channels)) or [0]:
        track.append(mido.Message("program_change", channel=ch, program=program, time=0))
    now = 0
    for tick, on, pitch, ch in sorted(events):
        kind = "note_on" if on else "note_off"
        track.append(mido.Message(kind, channel=ch, note=pitch, velocity=velocity if on else 0, time=tick - now))
        now = tick
    end = max(now, round(length * TICKS_PER_QUARTER))
    track.append(mido.MetaMessage("end_of_track", time=end - now))
    midi = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_QUARTER)
    midi.tracks.append(track)
    buf = io.BytesIO()
    midi.save(file=buf)
    return buf.getvalue()


# --- reading --------------------------------------------------------------------------------------------------


def _midi_notes(data: bytes, source: str) -> np.ndarray:
    """The (pitch, start, end) quarter-note rows of a MIDI file's bytes, drums left out."""
    mido = require_mido()
    try:
        midi = mido.MidiFile(file=io.BytesIO(data), clip=True)
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as e:
        why = str(e) or type(e).__name__
        raise DataError(f"{source}: not a standard MIDI file ({why})") from None
    tpb = midi.ticks_per_beat
    if not isinstance(tpb, int) or tpb <= 0:
        raise DataError(f"{source}: MIDI time in SMPTE frames is not supported (ticks per quarter note needed)")
    notes, drums = [], 0
    for track in midi.tracks:  # each track's delta times start at tick 0 (types 0 and 1)
        tick, sounding = 0, {}  # (channel, pitch) -> onset ticks still sounding, in order
        for msg in track:
            tick += msg.time
            if msg.type not in ("note_on", "note_off"):
                continue
            if msg.channel == DRUM_CHANNEL:
                drums += msg.type == "note_on" and msg.velocity > 0
                continue
            key = (msg.channel, msg.note)
            if msg.type == "note_on" and msg.velocity > 0:
                sounding.setdefault(key, []).append(tick)
            elif sounding.get(key):
                notes.append((msg.note, sounding[key].pop(0), tick))
        notes += [(p, t0, tick) for (_, p), onsets in sounding.items() for t0 in onsets]  # never released
    if not notes:
        why = f"only drums ({drums} drum notes on channel 10, which are left out)" if drums else "no notes"
        raise DataError(f"{source}: {why}")
    rows = np.array(notes, dtype=np.float64)  # (N, 3) in ticks
    rows[:, 1:] /= tpb
    return rows


def _score_notes(path: Path) -> np.ndarray:
    """The (pitch, start, end) rows of a score music21 can parse (MusicXML, ABC, kern, ...)."""
    try:
        import music21
    except ImportError:
        raise DataError(f"{path}: reading {path.suffix} scores needs music21: pip install music21") from None
    try:
        score = music21.converter.parse(str(path))
    except Exception as e:  # music21 raises many types for malformed files
        raise DataError(f"{path}: music21 cannot read it ({type(e).__name__}: {e})") from None
    return score_notes(score, str(path))


def score_notes(score, source: str) -> np.ndarray:
    """The (pitch, start, end) rows of a music21 stream: its notes and chords, ties joined, unpitched left out."""
    rows = []
    for element in score.stripTies().flatten().notes:
        start = float(element.offset)
        end = start + float(element.quarterLength)
        for pitch in getattr(element, "pitches", ()):
            rows.append((pitch.midi, start, end))
    if not rows:
        raise DataError(f"{source}: no pitched notes")
    return np.array(rows, dtype=np.float64)


def read_piece(path: str | os.PathLike) -> Piece:
    """One file as a ``Piece``: MIDI by its bytes, anything else through music21; DataError naming the file."""
    path = Path(path)
    if path.suffix.lower() in SCORE_SUFFIXES:
        notes = _score_notes(path)
    else:
        notes = _midi_notes(read_input(path, expected="a MIDI file"), str(path))
    bad = (notes[:, 0] < 0) | (notes[:, 0] >= PITCHES)
    if bad.any():
        raise DataError(f"{path}: pitch {int(notes[bad][0, 0])} outside MIDI's 0..127")
    return Piece(path.stem, notes)


def _music_files(folder: Path) -> list[Path]:
    suffixes = MIDI_SUFFIXES + SCORE_SUFFIXES
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def read_pieces(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[Piece], int]:
    """The pieces of ``paths`` (files, folders searched recursively, or built-in datasets) and how many files in
    folders were skipped.

    A file named directly must be music (else DataError). In a folder, a file that cannot be read, or holds no
    pitched notes, is skipped with a warning naming the first such file, and counted: a large collection of MIDI
    files found on the web always has a few broken ones. A folder with no readable music is a DataError.
    """
    from rnnkit.datasets import resolve

    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    pieces, skipped = [], 0
    for given in paths:
        path = resolve(given)
        if not path.is_dir():
            pieces.append(read_piece(path))
            continue
        files = _music_files(path)
        found, first = [], None
        for f in files:
            try:
                found.append(read_piece(f))
            except DataError as e:
                first = first or str(e)
        if not found:
            what = f"none of its {len(files)} music files could be read (first: {first})" if files else (
                f"no music files in it ({', '.join(MIDI_SUFFIXES + SCORE_SUFFIXES)})")  # fmt: skip
            raise DataError(f"{given}: {what}")
        if len(found) < len(files):
            log.warning("%s: skipped %d of %d files that are not readable music (first: %s)", given,
                        len(files) - len(found), len(files), first)  # fmt: skip
        skipped += len(files) - len(found)
        pieces += found
    if not pieces:
        raise DataError("no music given")
    return pieces, skipped


def pitch_range(rolls: Iterable[np.ndarray]) -> tuple[int, int]:
    """The lowest and highest key down in any frame of ``rolls`` ((T, 128) bool each)."""
    used = np.zeros(PITCHES, dtype=bool)
    for frames in rolls:
        used |= frames.any(0)
    if not used.any():
        raise DataError("the training pieces hold no notes at this resolution")
    keys = np.flatnonzero(used)
    return int(keys[0]), int(keys[-1])


def frames_of(piece: Piece, resolution: int) -> Roll:
    """``piece.roll(resolution)``, a DataError when nothing of it is left at that resolution."""
    roll = piece.roll(resolution)
    if not roll.frames.any():
        raise DataError(f"{piece.name}: no note sounds at any step at resolution {resolution}")
    return roll
