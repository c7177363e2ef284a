"""``dtmf-digits``: digit strings as DTMF tone pairs in noise, a speech-like CTC task that learns in a minute.

Each utterance says 3 to 6 digits. A digit is the sum of two sines, one of four row frequencies and one of three
column frequencies (the telephone keypad, ITU-T Q.23), lasting 70 to 150 ms with random amplitudes and phases;
digits are 50 to 150 ms apart, with 50 to 250 ms of silence before and after, and white noise at 10 to 30 dB SNR
over the whole utterance. Audio is 16-bit WAV at 8 kHz (the telephone rate), so reading it exercises the
resampler. Transcripts are the digits (``"5031"``): CER is the digit error rate, and WER (one word an utterance) the
share of utterances with any error.
"""

from __future__ import annotations

import io
import wave

import numpy as np

__all__ = ["DTMF_RATE", "DTMF_SIZES", "KEYPAD", "dtmf_files", "dtmf_utterance", "wav_bytes"]

DTMF_RATE = 8_000
DTMF_SIZES = {"train": 1_000, "val": 200, "test": 200}
DTMF_SEED = 1963  # the year touch-tone dialling reached the public
KEYPAD = {  # digit: (row Hz, column Hz)
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477),
    "0": (941, 1336),
}  # fmt: skip


def dtmf_utterance(digits: str, rng: np.random.Generator, rate: int = DTMF_RATE) -> np.ndarray:
    """The waveform (N,) float32 in [-1, 1] of ``digits`` dialled with random timing, levels and noise."""
    parts = [np.zeros(int(rng.uniform(0.05, 0.25) * rate))]
    for k, d in enumerate(digits):
        if k:
            parts.append(np.zeros(int(rng.uniform(0.05, 0.15) * rate)))
        t = np.arange(int(rng.uniform(0.07, 0.15) * rate)) / rate  # (n,) seconds
        tone = sum(rng.uniform(0.15, 0.3) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in KEYPAD[d])
        parts.append(tone)
    parts.append(np.zeros(int(rng.uniform(0.05, 0.25) * rate)))
    x = np.concatenate(parts)  # (N,)
    snr_db = rng.uniform(10, 30)
    signal_power = np.mean(x**2)
    noise = rng.normal(0.0, np.sqrt(signal_power / 10 ** (snr_db / 10)), x.shape)
    return np.clip(x + noise, -1.0, 1.0).astype(np.float32)


def wav_bytes(x: np.ndarray, rate: int) -> bytes:
    """A mono 16-bit PCM WAV file of ``x`` (N,) in [-1, 1], as bytes (the standard library's ``wave``)."""
    pcm = np.round(np.clip(x, -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def dtmf_files(sizes: dict[str, int] | None = None, seed: int = DTMF_SEED) -> dict[str, str | bytes]:
    """Every file of the dataset: ``{split: manifest text}`` and ``{"wav/SPLIT-00001.wav": bytes}``."""
    rng = np.random.default_rng(seed)
    files: dict[str, str | bytes] = {}
    for split, n in (sizes or DTMF_SIZES).items():
        lines = ["audio\ttranscript"]
        for i in range(n):
            digits = "".join(rng.choice(list(KEYPAD), size=int(rng.integers(3, 7))))
            name = f"wav/{split}-{i:05d}.wav"
            files[name] = wav_bytes(dtmf_utterance(digits, rng), DTMF_RATE)
            lines.append(f"{name}\t{digits}")
        files[split] = "\n".join(lines) + "\n"
    return files
