"""``arpeggios``: a built-in corpus of short generated pieces, so a first ``rnnkit train music`` needs no files.

Each piece is four bars of 4/4 in one key (12 tonics, major or minor) at sixteenth-note steps, then a bar on
the tonic chord: a chord progression (I-IV-V-I, I-vi-IV-V, ... in major; i-iv-V-i, ... in minor) with its root held
in the bass, and above it one right-hand figure per piece: an arpeggio of each chord in eighths, the scale run up
from the chord's root in sixteenths, or the chord struck on each beat. A model that has learned the key and the
progression predicts most of each frame; per-key frequencies cannot, which is what the tests and the README show.

The corpus is every combination of scale, tonic, progression and figure (324 pieces), dealt out in an order
shuffled by a seeded ``random.Random`` using ``random()`` only (whose sequence Python keeps across versions): the
same pieces on every machine, none in two splits.
"""

from __future__ import annotations

import random

import numpy as np

from rnnkit.data.music import PITCHES, write_midi

__all__ = ["RESOLUTION", "arpeggio_files", "arpeggio_roll"]

RESOLUTION = 4  # steps per quarter note: sixteenths
BAR = 4 * RESOLUTION
VAL_PIECES = 40  # of the 324 (scale, tonic, progression, figure) pieces; train has the other 284
FIGURES = ("arpeggio", "scale", "chords")
SEED = 1685  # J. S. Bach's birth year
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 11)  # harmonic minor: a major V
PROGRESSIONS = {  # scale degrees (0 = I) of the four bars
    MAJOR: ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (1, 4, 0, 0), (0, 3, 1, 4)),
    MINOR: ((0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 6, 4), (0, 1, 4, 0)),
}


def _degree(scale: tuple[int, ...], tonic: int, d: int) -> int:
    """The pitch of scale degree ``d`` (0-based, may pass the octave) above ``tonic``."""
    return tonic + 12 * (d // 7) + scale[d % 7]


def arpeggio_roll(scale: tuple[int, ...], tonic: int, progression: tuple[int, ...], figure: str) -> np.ndarray:
    """One piece: a (5 * 16, 128) bool roll at sixteenth-note steps, its four bars on ``progression`` (degrees) and
    a last bar on the tonic chord."""
    progression = (*progression, 0)
    frames = np.zeros((len(progression) * BAR, PITCHES), dtype=bool)
    for bar, root in enumerate(progression):
        t0 = bar * BAR
        chord = [_degree(scale, tonic, root + k) for k in (0, 2, 4)]  # the triad on this degree
        frames[t0 : t0 + BAR, chord[0] % 12 + 36] = True  # its root in the bass, C2..B2, held all bar
        if figure == "chords" or bar == len(progression) - 1:
            frames[t0 : t0 + BAR, chord] = True
        elif figure == "arpeggio":  # root, third, fifth, octave, fifth, third, root, third: eighths
            line = [*chord, chord[0] + 12, chord[2], chord[1], chord[0], chord[1]]
            for i, pitch in enumerate(line):
                frames[t0 + 2 * i : t0 + 2 * i + 2, pitch] = True
        else:  # sixteenths up the scale from the chord's root
            for i in range(BAR):
                frames[t0 + i, _degree(scale, tonic, root + i)] = True
    return frames


def _pieces() -> list[tuple]:
    """Every (scale, tonic, progression, figure), in an order shuffled by a seeded Fisher-Yates on ``random()``."""
    pieces = [(scale, 60 + t, prog, fig) for scale in (MAJOR, MINOR) for t in range(12) for prog in PROGRESSIONS[scale]
              for fig in FIGURES]  # fmt: skip
    rng = random.Random(SEED)
    for i in range(len(pieces) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        pieces[i], pieces[j] = pieces[j], pieces[i]
    return pieces


def arpeggio_files(split: str) -> dict[str, bytes]:
    """{file name: MIDI bytes} of one split of ``arpeggios``: val the first 40 of the shuffled pieces, train the
    rest, so no piece is in two splits."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be train or val, got {split!r}")
    pieces = _pieces()
    chosen = pieces[:VAL_PIECES] if split == "val" else pieces[VAL_PIECES:]
    return {f"{split}-{k:03d}.mid": write_midi(arpeggio_roll(*p), RESOLUTION, tempo=120) for k, p in enumerate(chosen)}
