"""Speech data for CTC: manifests of audio files and transcripts, audio reading and resampling, ``.npz`` features.

A manifest (``.tsv``, or any name but ``.npz``) holds one utterance a line, ``audio<TAB>transcript``; an optional
first line ``audio<TAB>transcript`` (or path/file, text/sentence) is a header; blank lines are skipped; audio paths
are relative to the manifest's folder. For prediction the transcript column is optional. Audio is read with
soundfile (libsndfile: WAV, FLAC, OGG, ...; the ``speech`` extra), mixed down to mono and resampled to 16 kHz.

Resampling is band-limited windowed-sinc interpolation in polyphase form (``resample``), in torch: the low-pass sits
just under the lower of the two Nyquist frequencies, so 8 kHz -> 16 kHz or 44.1 kHz -> 16 kHz alias nothing a model
could learn from. It is checked against ``scipy.signal.resample_poly`` in the tests; scipy itself is not used, as
importing ``scipy.signal`` cost seconds on the machine where this was written, more than resampling a corpus.

A ``.npz`` holds ready features instead: ``X`` (N, T, D) float, ``lengths`` (N,) (default all T) and ``targets``
(N,) strings; it is for sequence labelling that is not audio (features are used as they are).

Bad input is one ``DataError`` line naming the file and row: a line without a tab (where transcripts are
required), an empty transcript, a missing or unreadable audio file, an empty or silent one, a header-only manifest.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rnnkit.data.text import read_text
from rnnkit.datasets import resolve
from rnnkit.errors import ConfigError, DataError
from rnnkit.io import check_input

__all__ = ["SAMPLE_RATE", "Utterances", "read_audio", "read_utterances", "resample", "soundfile_module"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
HEADER_AUDIO = {"audio", "path", "file", "filename", "wav"}
HEADER_TEXT = {"transcript", "text", "sentence", "label", "transcription"}


@dataclass
class Utterances:
    """What a manifest or ``.npz`` holds: waveforms (N_i,) at 16 kHz (``kind == "audio"``) or features (T_i, D)
    (``kind == "features"``), the transcripts (None without them), and each utterance's name for output rows."""

    kind: str  # "audio" or "features"
    inputs: list[np.ndarray]
    transcripts: list[str] | None
    names: list[str]
    source: str
    rows: list[int] = field(default_factory=list)  # the manifest line of each utterance (1-based)

    def __len__(self) -> int:
        return len(self.inputs)


def soundfile_module():
    """The soundfile module, or a ConfigError naming the extra that installs it."""
    try:
        import soundfile
    except (ImportError, OSError) as e:  # OSError: the module is there but libsndfile is not
        raise ConfigError(
            f"reading audio needs soundfile (pip install 'rnnkit[speech]'), which failed to import: {e}"
        ) from e
    return soundfile


def resample(x: np.ndarray, rate: int, target: int = SAMPLE_RATE, *, zeros: int = 6,
             rolloff: float = 0.99) -> np.ndarray:  # fmt: skip
    """Waveform ``x`` (N,) at ``rate`` Hz -> (ceil(N target / rate),) at ``target`` Hz, band-limited.

    Windowed-sinc interpolation in polyphase form (Smith's bandlimited interpolation; torchaudio's ``resample``):
    with p/q = target/rate in lowest terms, output sample n sits at input time n q / p, and each of the p phases
    is one FIR filter, so one strided ``conv1d`` computes them all::

        y[n] = sum_m x[m] h(n q / p - m),   h(t) = c sinc(c t) w(t),   c = rolloff * min(1, p / q)

    ``c`` is the low-pass cutoff in cycles per input sample (just under the lower of the two Nyquist frequencies,
    so nothing above the new Nyquist folds back) and ``w`` a Hann window spanning ``zeros`` zero crossings of the
    sinc either side.
    """
    if rate == target:
        return x
    g = math.gcd(rate, target)
    q, p = rate // g, target // g  # input step, output phases
    c = min(q, p) * rolloff  # cutoff, in units of 1 / (q input samples)
    width = math.ceil(zeros * q / c)  # input samples either side of the output time
    m = torch.arange(-width, width + q, dtype=torch.float64)[None, :] / q  # (1, L) input offsets, in q-steps
    t = (torch.arange(0, -p, -1, dtype=torch.float64)[:, None] / p + m) * c  # (p, L) phase k's tap times
    t = t.clamp(-zeros, zeros)
    w = torch.cos(t * math.pi / zeros / 2) ** 2  # (p, L) Hann window over [-zeros, zeros]
    h = torch.where(t == 0, 1.0, torch.sin(math.pi * t) / (math.pi * t)) * w * (c / q)  # (p, L)
    padded = torch.nn.functional.pad(torch.as_tensor(x, dtype=torch.float64)[None, None], (width, width + q))
    y = torch.nn.functional.conv1d(padded, h[:, None], stride=q)  # (1, p, n) phase k of output block j
    y = y[0].T.reshape(-1)  # (p * n,) interleaved: output j p + k
    return y[: math.ceil(len(x) * p / q)].float().numpy()


def read_audio(path: str | os.PathLike, where: str = "") -> np.ndarray:
    """The mono waveform (N,) float32 at 16 kHz of an audio file; DataError naming ``where`` (the manifest row)."""
    sf = soundfile_module()
    prefix = f"{where}: " if where else ""
    try:
        check_input(path, expected="an audio file")
    except DataError as e:
        raise DataError(f"{prefix}{e}") from None
    try:
        x, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)  # (N, C)
    except (RuntimeError, TypeError, ValueError, sf.LibsndfileError) as e:  # LibsndfileError is a RuntimeError
        raise DataError(f"{prefix}{path}: not a readable audio file ({str(e).strip()[:200]})") from e
    if x.shape[0] == 0:
        raise DataError(f"{prefix}{path}: holds no samples")
    x = x.mean(axis=1)  # (N,) stereo and more mixed down
    if not np.isfinite(x).all():
        raise DataError(f"{prefix}{path}: holds non-finite samples")
    if float(np.abs(x).max()) == 0.0:
        raise DataError(f"{prefix}{path}: is silent (every sample is 0)")
    return resample(x, int(rate))


def _is_header(fields: list[str]) -> bool:
    return (len(fields) == 2 and fields[0].strip().lower() in HEADER_AUDIO
            and fields[1].strip().lower() in HEADER_TEXT)  # fmt: skip


def read_utterances(path: str | os.PathLike, *, transcripts: str = "required") -> Utterances:
    """Read a manifest or a ``.npz`` (see the module docstring), or a built-in dataset (``rnnkit datasets``).

    ``transcripts``: "required" (training, eval) or "optional" (predict: a line may hold only the audio path).
    """
    if transcripts not in ("required", "optional"):
        raise ValueError(f"transcripts must be 'required' or 'optional', got {transcripts!r}")
    p = resolve(path)
    check_input(p, expected="a manifest (audio<TAB>transcript lines) or an .npz file")
    if p.suffix.lower() == ".npz":
        return _read_npz(p, transcripts)
    soundfile_module()  # before reading any line: a missing extra is the first thing to say
    lines = read_text(p).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    rows = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    if rows and _is_header(rows[0][1].split("\t")):
        rows = rows[1:]
    if not rows:
        raise DataError(f"{p}: holds no utterances")
    waves, texts, names, numbers = [], [], [], []
    for i, line in rows:
        fields = line.split("\t")
        if len(fields) > 2:
            raise DataError(f"{p}: line {i}: expected 2 columns (audio, transcript), found {len(fields)}")
        if len(fields) == 1 and transcripts == "required":
            raise DataError(f"{p}: line {i}: expected audio<TAB>transcript, found no tab")
        name = fields[0].strip()
        if not name:
            raise DataError(f"{p}: line {i}: empty audio path")
        if len(fields) == 2:
            text = " ".join(fields[1].split())
            if not text and transcripts == "required":
                raise DataError(f"{p}: line {i}: empty transcript")
            texts.append(text)
        audio = Path(name) if Path(name).is_absolute() else p.parent / name
        waves.append(read_audio(audio, where=f"{p}: line {i}"))
        names.append(name)
        numbers.append(i)
    has_text = len(texts) == len(waves) and all(texts)
    return Utterances("audio", waves, texts if has_text else None, names, str(p), numbers)


def _read_npz(p: Path, transcripts: str) -> Utterances:
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{p}: not a readable .npz file ({type(e).__name__}: {e})") from e
    X = arrays.get("X")
    if X is None or X.ndim != 3 or not np.issubdtype(X.dtype, np.number) or 0 in X.shape:
        got = "none" if X is None else f"shape {X.shape} {X.dtype}"
        raise DataError(f"{p}: expected a non-empty numeric array X (N, T, D), got {got}")
    N, T, _ = X.shape
    lengths = arrays.get("lengths", np.full(N, T))
    if lengths.shape != (N,) or not np.issubdtype(lengths.dtype, np.integer) or lengths.min() < 1 or lengths.max() > T:
        raise DataError(f"{p}: lengths must be (N,)=({N},) integers in [1, T={T}], got {lengths.shape} {lengths.dtype}")
    inputs = [np.asarray(X[i, : lengths[i]], dtype=np.float32) for i in range(N)]
    if not all(np.isfinite(x).all() for x in inputs):
        raise DataError(f"{p}: X holds a non-finite value")
    targets = arrays.get("targets")
    if targets is None and transcripts == "required":
        raise DataError(f"{p}: expected an array targets (N,) of strings, found {sorted(arrays)}")
    texts = None
    if targets is not None:
        if targets.shape != (N,) or targets.dtype.kind not in "US":
            raise DataError(f"{p}: targets must be (N,)=({N},) strings, got {targets.shape} {targets.dtype}")
        texts = [" ".join(str(t).split()) for t in targets.tolist()]
        empty = [i for i, t in enumerate(texts) if not t]
        if empty:
            raise DataError(f"{p}: targets[{empty[0]}] is empty")
    return Utterances("features", inputs, texts, [str(i) for i in range(N)], str(p), list(range(1, N + 1)))
