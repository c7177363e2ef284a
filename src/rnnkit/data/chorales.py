"""``bach-chorales``: music21's bundled Bach chorales as MIDI files, split by piece (needs music21).

``music21.corpus.chorales.Iterator`` names 371 chorales by Riemenschneider number, 350 of them distinct files. Each
is parsed once (a few minutes for all) and kept when it has four parts (soprano, alto, tenor, bass) and notes no
earlier chorale has; its notes are written as a MIDI file, one channel per part, at the score's own timing (ties
joined, no repeats expanded), so any ``--resolution`` can read it. The distinct chorales are shuffled by a seeded
Fisher-Yates on ``random()`` and dealt out: test first (15%), then val (15%), then train.
"""

from __future__ import annotations

import logging
import random

import numpy as np

from rnnkit.data.music import notes_to_midi, score_notes
from rnnkit.errors import DataError

__all__ = ["SHARES", "cache_key", "chorale_files", "chorale_names"]

log = logging.getLogger(__name__)

SHARES = {"test": 0.15, "val": 0.15}  # train: the rest
SEED = 1723  # the year Bach came to Leipzig


def _music21():
    try:
        import music21
    except ImportError:
        raise DataError("bach-chorales is read from music21's corpus: pip install music21") from None
    return music21


def cache_key() -> str:
    """The cache folder's name: the corpus is music21's, so one folder per music21 version."""
    from importlib.metadata import version

    _music21()
    return f"bach-chorales-v1-music21-{version('music21')}"


def chorale_names() -> list[str]:
    """The distinct chorale files of music21's corpus ("bach/bwv269", ...), sorted."""
    music21 = _music21()
    return sorted(set(music21.corpus.chorales.Iterator(returnType="filename")))


def chorale_files() -> dict[str, dict[str, bytes]]:
    """{split: {file name: MIDI bytes}} for test, val and train."""
    music21 = _music21()
    names, rows, seen = chorale_names(), {}, set()
    for k, name in enumerate(names):
        if k % 50 == 0:
            log.info("bach-chorales: parsing chorale %d of %d with music21", k + 1, len(names))
        score = music21.corpus.parse(name)
        if len(score.parts) != 4:
            continue
        notes, channels = [], []
        for ch, part in enumerate(score.parts):
            part_notes = score_notes(part, name)
            notes.append(part_notes)
            channels += [ch] * len(part_notes)
        notes = np.concatenate(notes)
        fingerprint = notes[np.lexsort(notes.T[::-1])].tobytes()
        if fingerprint in seen:
            continue
        seen.add(fingerprint)
        rows[name] = (notes, channels)
    kept = sorted(rows)
    rng = random.Random(SEED)
    for i in range(len(kept) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        kept[i], kept[j] = kept[j], kept[i]
    sizes = {split: round(share * len(kept)) for split, share in SHARES.items()}
    splits, start = {}, 0
    for split in ("test", "val", "train"):
        end = start + sizes[split] if split in sizes else len(kept)
        splits[split] = {
            name.replace("/", "-") + ".mid": notes_to_midi(rows[name][0], rows[name][1], tempo=80)
            for name in kept[start:end]
        }
        start = end
    log.info("bach-chorales: %s", ", ".join(f"{s} {len(f)}" for s, f in splits.items()))
    return splits
