"""Speech features: log-mel filterbanks from ``torch.stft``, per-utterance normalisation, SpecAugment masking.

For a waveform x sampled at ``sample_rate`` (16 kHz in rnnkit's speech task)::

    X[t, k]  = sum_n x[t * hop + n - n_fft / 2] w[n] exp(-2 pi i k n / n_fft)     (zero padding at both ends)
    P[t, k]  = |X[t, k]|^2                                                      power spectrum   (T, n_fft/2 + 1)
    M[t, m]  = sum_k P[t, k] F[m, k]                                            mel energies     (T, n_mels)
    L[t, m]  = log(M[t, m] + eps)
    Z[t, m]  = (L[t, m] - mean_t L[., m]) / (std_t L[., m] + eps)               per utterance, per band

``w`` is a Hann window of ``win_length`` samples (25 ms) centred in ``n_fft`` (the next power of two), the hop is
10 ms, and ``F`` holds triangular filters evenly spaced on the HTK mel scale ``mel(f) = 2595 log10(1 + f / 700)``
between 0 Hz and the Nyquist frequency, each peaking at 1 (torchaudio's ``melscale_fbanks`` with ``norm=None``).

SpecAugment (Park et al. 2019) masks, in training only, a few bands and a few stretches of time with the mean (0
after normalisation), so the model cannot lean on any one band or moment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FeatureConfig", "log_mel", "mel_filterbank", "normalise", "spec_augment"]

EPS = 1e-6


def hz_to_mel(f: Tensor | float) -> Tensor | float:
    """HTK mel scale."""
    if isinstance(f, Tensor):
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@dataclass(frozen=True)
class FeatureConfig:
    """The front end's sizes: sample rate (Hz), window and hop (ms), mel bands."""

    sample_rate: int = 16_000
    window_ms: float = 25.0
    hop_ms: float = 10.0
    n_mels: int = 80

    def __post_init__(self) -> None:
        if self.sample_rate < 1000 or self.n_mels < 1 or not 0 < self.hop_ms <= self.window_ms:
            raise ValueError(f"need sample_rate >= 1000, n_mels >= 1 and 0 < hop_ms <= window_ms, got {self}")

    @property
    def win_length(self) -> int:
        return round(self.sample_rate * self.window_ms / 1000)  # 400 samples at 16 kHz

    @property
    def hop_length(self) -> int:
        return round(self.sample_rate * self.hop_ms / 1000)  # 160 samples at 16 kHz

    @property
    def n_fft(self) -> int:
        return 1 << (self.win_length - 1).bit_length()  # 512 at 16 kHz

    def frames(self, samples: int) -> int:
        """Feature frames of a waveform of ``samples`` samples (``torch.stft`` with ``center=True``)."""
        return 1 + samples // self.hop_length


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int) -> Tensor:
    """Triangular filters F (n_mels, n_freqs) over the ``n_freqs`` bins of a one-sided spectrum, 0 Hz .. Nyquist."""
    freqs = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)  # (K,) bin centres in Hz
    edges = mel_to_hz(torch.linspace(0.0, hz_to_mel(sample_rate / 2), n_mels + 2, dtype=torch.float64))  # (M+2,)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1) each
    rising = (freqs - lower) / (centre - lower)  # (M, K)
    falling = (upper - freqs) / (upper - centre)  # (M, K)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()  # (M, K)


def log_mel(waveform: Tensor, config: FeatureConfig = FeatureConfig()) -> Tensor:
    """Log-mel energies L (T, n_mels) of a mono waveform (N,) float at ``config.sample_rate``."""
    if not isinstance(waveform, Tensor) or waveform.dim() != 1 or not waveform.is_floating_point():
        got = f"{tuple(waveform.shape)} {waveform.dtype}" if isinstance(waveform, Tensor) else type(waveform).__name__
        raise ValueError(f"waveform must be a (N,) float Tensor, got {got}")
    window = torch.hann_window(config.win_length, periodic=True, dtype=waveform.dtype, device=waveform.device)
    X = torch.stft(waveform, config.n_fft, config.hop_length, config.win_length, window, center=True,
                   pad_mode="constant", return_complex=True)  # (K, T), K = n_fft/2 + 1  # fmt: skip
    P = X.abs().pow(2).T  # (T, K)
    F = mel_filterbank(P.size(1), config.n_mels, config.sample_rate).to(P)  # (M, K)
    M = P @ F.T  # (T, M)
    return torch.log(M + EPS)  # (T, M)


def normalise(L: Tensor) -> Tensor:
    """Each band to mean 0 and standard deviation 1 over the utterance's frames: (T, M) -> (T, M)."""
    mean = L.mean(0, keepdim=True)  # (1, M)
    std = L.std(0, unbiased=False, keepdim=True)  # (1, M)
    return (L - mean) / (std + EPS)


def spec_augment(Z: Tensor, generator: torch.Generator, *, freq_masks: int = 2, freq_width: float = 0.15,
                 time_masks: int = 2, time_width: float = 0.05) -> Tensor:  # fmt: skip
    """A copy of normalised features Z (T, M) with ``freq_masks`` bands of up to ``freq_width`` x M bands and
    ``time_masks`` stretches of up to ``time_width`` x T frames set to 0 (the mean), drawn from ``generator``."""
    T, M = Z.shape
    out = Z.clone()
    for size, n, share, axis in ((M, freq_masks, freq_width, 1), (T, time_masks, time_width, 0)):
        widest = int(share * size)
        for _ in range(n):
            if widest < 1:
                break
            width = int(torch.randint(0, widest + 1, (), generator=generator))
            start = int(torch.randint(0, size - width + 1, (), generator=generator))
            if axis == 1:
                out[:, start : start + width] = 0.0
            else:
                out[start : start + width] = 0.0
    return out
