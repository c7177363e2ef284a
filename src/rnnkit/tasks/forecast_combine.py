"""Forecast combination: the network's forecast averaged with the Theta method's, one strategy class per choice.

Averaging a learned global model with a classical per-series method is how the strongest entries of the M4
competition forecast (Smyl's hybrid ES-RNN won it; Makridakis et al. 2020): the two err in different ways, so
their mean is better than either more often than not. ``Combination.combine`` moves every quantile of the
network's forecast by the same amount, so that the median becomes

    median = (network's median + Theta's forecast) / 2

and the interval keeps the network's width (calibrated afterwards, on the held-out horizon, like any forecast).

Theta (Assimakopoulos & Nikolopoulos 2000) is computed here in Hyndman & Billah's (2003) form, as statsmodels'
``ThetaModel(y, period=m).fit().forecast(h)`` computes it (theta = 2, the two-step fit), on every series at once:

1. seasonality: with m > 1 and two full seasons of history, the series is seasonal when
   n r_m^2 / sum_{k<m} r_k^2 > 2.7055 (r_k its autocorrelations; chi2(1) at 90 %), the M3 Theta method's test;
2. a seasonal series is divided by the indices of a classical decomposition (centred moving average of width m,
   the mean ratio to it at each phase, normalised to mean 1), or has them subtracted when the series touches 0
   or below (or an index would not be positive);
3. b0: the slope of a least-squares line through the deseasonalised x_0..x_{n-1};
4. simple exponential smoothing l_t = alpha x_t + (1 - alpha) l_{t-1} from l_{-1} = x_0, alpha in [0, 1]
   minimising the one-step squared errors;
5. x_{n+j} = l_{n-1} + b0 / 2 (j + (1 - (1 - alpha)^n) / alpha), j = 0..h-1 (n where alpha = 0, the limit),
   times (plus) the indices.

``COMBINATIONS`` maps the config's ``combine`` string to its class; ``auto`` resolves to one in the task.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

__all__ = ["COMBINATIONS", "Combination", "NoCombination", "ThetaCombination", "theta_forecasts"]

SEASONAL_CRITICAL = 2.705543454095404  # chi2(1) at 90 %, 1.645^2


def is_seasonal(y: np.ndarray, m: int) -> bool:
    """The Theta method's test: lag m's autocorrelation significant at 90 % (needs m > 1 and n >= 2m)."""
    n = len(y)
    if m < 2 or n < 2 * m:
        return False
    d = y - y.mean()
    c0 = d @ d
    if c0 <= 0:
        return False
    r = np.array([d[: n - k] @ d[k:] for k in range(m + 1)]) / c0
    return bool(n * r[m] ** 2 / np.sum(r[:m] ** 2) > SEASONAL_CRITICAL)


def seasonal_indices(y: np.ndarray, m: int, multiplicative: bool) -> np.ndarray:
    """(m,) indices of a classical decomposition, index k for the points t with t % m == k."""
    w = np.r_[0.5, np.ones(m - 1), 0.5] / m if m % 2 == 0 else np.ones(m) / m
    trend = np.convolve(y, w, mode="valid")  # centred: trend[i] belongs to point i + len(w) // 2
    at = np.arange(len(trend)) + len(w) // 2
    ratio = y[at] / trend if multiplicative else y[at] - trend
    means = np.array([ratio[at % m == k].mean() for k in range(m)])
    return means / means.mean() if multiplicative else means - means.mean()


def _ses(x: np.ndarray, lengths: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Simple exponential smoothing of every row of x (N, T) (row i's first lengths[i] points) at every alpha,
    alphas (A,) for all rows or (N, A) for each: the sums of squared one-step errors and the last levels, (N, A)."""
    level = np.repeat(x[:, :1], alphas.shape[-1], axis=1)  # l_{-1} = x_0
    sse = np.zeros_like(level)
    for t in range(1, x.shape[1]):
        live = (t < lengths)[:, None]
        error = x[:, t : t + 1] - level
        sse += np.where(live, error**2, 0.0)
        level = np.where(live, level + alphas * error, level)
    return sse, level


def theta_forecasts(histories: list[np.ndarray], h: int, m: int) -> np.ndarray:
    """(N, h) Theta-method forecasts of each history (see the module docstring), m its season length."""
    N = len(histories)
    out = np.zeros((N, h))
    if N == 0:
        return out
    lengths = np.array([len(y) for y in histories])
    x = np.zeros((N, max(lengths.max(), 1)))
    season = np.ones((N, h))
    multiplicative = np.zeros(N, bool)
    for i, y in enumerate(histories):
        y = np.asarray(y, np.float64)
        n = len(y)
        if n == 0:
            continue
        if is_seasonal(y, m):
            mul = bool(y.min() > 0)
            s = seasonal_indices(y, m, mul)
            if mul and s.min() <= 0:
                mul, s = False, seasonal_indices(y, m, False)
            multiplicative[i] = mul
            y = y / s[np.arange(n) % m] if mul else y - s[np.arange(n) % m]
            season[i] = s[(n + np.arange(h)) % m]
        else:
            season[i] = 1.0
            multiplicative[i] = True
        x[i, :n] = y
    # alpha: a grid over [0, 1], then a finer one around each series' best point
    coarse = np.linspace(0.0, 1.0, 201)
    sse, _ = _ses(x, lengths, coarse)
    best = coarse[np.argmin(sse, axis=1)]
    offsets = np.linspace(-0.005, 0.005, 41)
    fine = np.clip(best[:, None] + offsets, 0.0, 1.0)  # (N, 41)
    sse, level = _ses(x, lengths, fine)
    k = np.argmin(sse, axis=1)
    alpha, last = fine[np.arange(N), k], level[np.arange(N), k]
    t = np.arange(x.shape[1], dtype=np.float64)
    for i, n in enumerate(lengths):
        b0 = 0.0
        if n > 1:
            ti, xi = t[:n], x[i, :n]
            b0 = float(np.sum((ti - ti.mean()) * (xi - xi.mean())) / np.sum((ti - ti.mean()) ** 2))
        a = alpha[i]
        drift = (1 - (1 - a) ** n) / a if a > 0 else float(n)  # its limit as alpha -> 0: n
        f = last[i] + b0 / 2 * (np.arange(h) + drift)
        out[i] = f * season[i] if multiplicative[i] else f + season[i]
    return out


class Combination:
    """What the task asks of a combination: the forecast's quantiles {level: (N, h)} with another method's
    point forecast mixed in, given the histories they continue and the season length."""

    name: ClassVar[str]

    def combine(self, histories: list[np.ndarray], quantiles: dict[float, np.ndarray], season: int, *,
                point: np.ndarray | None = None) -> dict[float, np.ndarray]:  # fmt: skip
        """``point``: the other method's forecasts (N, h) when they are at hand already."""
        raise NotImplementedError


class NoCombination(Combination):
    """The network's forecast as it is."""

    name = "none"

    def combine(self, histories, quantiles, season, *, point=None):
        return quantiles


class ThetaCombination(Combination):
    """Every quantile moved by (Theta - median) / 2: the median becomes the mean of the two point forecasts."""

    name = "theta"

    def combine(self, histories, quantiles, season, *, point=None):
        h = quantiles[0.5].shape[1]
        theta = theta_forecasts(histories, h, season) if point is None else point
        shift = (theta - quantiles[0.5]) / 2
        return {q: v + shift for q, v in quantiles.items()}


COMBINATIONS: dict[str, type[Combination]] = {c.name: c for c in (NoCombination, ThetaCombination)}
