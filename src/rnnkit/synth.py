"""A small additive synthesiser: a piano roll rendered to sound, so a sampled piece can be heard without a MIDI player.

Each note (a run of frames where a key is down) is a sum of harmonics with a piano-like envelope:

    f = 440 * 2 ** ((pitch - 69) / 12)                          Hz, equal temperament, A4 = MIDI 69 = 440 Hz
    x(t) = env(t) * sum_n a_n sin(2 pi n f t),  a_n = 1 / n**2,  harmonics n = 1 .. 6 below the Nyquist frequency
    env(t) = min(t / attack, 1) * exp(-t / decay)               while the key is down (decay longer for low notes)
             then a linear release to 0 over ``release`` seconds

The mix is scaled so its loudest sample is at 0.8 of full scale, and written as 16-bit mono PCM with the standard
library's ``wave`` module.
"""

from __future__ import annotations

import os
import wave

import numpy as np

from rnnkit.data.music import roll_to_notes
from rnnkit.io import atomic_open

__all__ = ["SAMPLE_RATE", "render", "write_wav"]

SAMPLE_RATE = 22_050  # Hz
HARMONICS = 6
ATTACK, RELEASE = 0.01, 0.08  # seconds


def render(frames: np.ndarray, resolution: int, low: int = 0, *, tempo: float = 100.0,
           sample_rate: int = SAMPLE_RATE) -> np.ndarray:  # fmt: skip
    """Samples (S,) float32 in [-0.8, 0.8] of a roll: frames (T, K) bool, key k is MIDI pitch ``low + k``,
    ``resolution`` frames per quarter note at ``tempo`` quarter notes per minute."""
    frames = np.asarray(frames, dtype=bool)
    step = 60.0 / (tempo * resolution)  # seconds per frame
    out = np.zeros(int(np.ceil((frames.shape[0] * step + RELEASE) * sample_rate)) + 1, dtype=np.float64)
    for pitch, start, end in roll_to_notes(frames, low):
        f = 440.0 * 2.0 ** ((pitch - 69) / 12)
        held = (end - start) * step
        t = np.arange(int((held + RELEASE) * sample_rate)) / sample_rate  # (n,) seconds since the onset
        decay = 0.4 + 1.6 * 2.0 ** (-(pitch - 48) / 24)  # seconds: low strings ring longer
        env = np.minimum(t / ATTACK, 1.0) * np.exp(-t / decay)
        env = env * np.clip(1.0 - (t - held) / RELEASE, 0.0, 1.0)  # released at the note's end
        tone = sum(np.sin(2 * np.pi * n * f * t) / n**2 for n in range(1, HARMONICS + 1) if n * f < sample_rate / 2)
        first = round(start * step * sample_rate)
        out[first : first + len(t)] += env * tone
    peak = np.abs(out).max()
    return (out * (0.8 / peak if peak > 0 else 1.0)).astype(np.float32)


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Mono 16-bit PCM WAV of ``samples`` (S,) in [-1, 1], written atomically."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with atomic_open(path, suffix=".wav") as (_, tmp), wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
