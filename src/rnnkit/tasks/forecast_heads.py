"""The forecaster's heads: one class per output distribution, as GluonTS's ``DistributionOutput`` has.

A head is a stateless strategy the task asks, never a string it branches on. The network ends in one linear
layer of ``num_parameters(horizon, levels)`` raw outputs per step; the head owns everything after it:

    StudentT   z_t / s ~ StudentT(nu, mu, sigma),          (mu, sigma, nu) = (a, softplus(b), 2 + softplus(c))
    Gaussian   z_t / s ~ Normal(mu, sigma),                (mu, sigma) = (a, softplus(b))
    NegBin     z_t ~ NegativeBinomial(r, logits + log s),  r = softplus(a); counts: the mean scales with s
    Quantile   q_{t+j}^{(k)} = out[j, k] * s               every horizon j < H and level k at once (MQ-RNN's
               "forking sequences", Wen et al. 2017), pinball loss

(sigma and r get + 1e-4, so a collapsed softplus never gives a zero scale.) The first three are
``DistributionHead``s: they learn by the negative log-likelihood of each step and forecast by sampling paths one
step at a time, each draw fed back as the next step's lag; ``Quantile`` forecasts every step in one pass.

``HEADS`` maps the config's ``head`` string (``--head studentt``) to its class.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.data.series import SeriesSet
from rnnkit.errors import DataError

__all__ = [
    "HEADS",
    "DistributionHead",
    "ForecastHead",
    "Gaussian",
    "NegBin",
    "Quantile",
    "StudentT",
    "pinball",
]


class ForecastHead:
    """What every head answers: its width, what data and requests it can serve, and its training loss."""

    name: ClassVar[str]
    sampled: ClassVar[bool]  # True: forecasts by sampled autoregressive paths; False: directly, in one pass

    def num_parameters(self, horizon: int, levels: tuple[float, ...]) -> int:
        """Raw outputs per step of the network's last linear layer."""
        raise NotImplementedError

    def check_data(self, data: SeriesSet) -> None:
        """DataError if the head cannot model these series (default: any real values)."""

    def check_request(self, h: int, levels: tuple[float, ...], horizon: int, trained: tuple[float, ...]) -> None:
        """DataError if a forecast of ``h`` steps at ``levels`` is beyond a run trained for ``horizon``, ``trained``."""

    def loss(self, out: Tensor, values: Tensor, observed: Tensor, steps: Tensor, scale: Tensor, *, horizon: int,
             levels: tuple[float, ...]) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Summed loss and the count of scored values of a window batch: out (B, S, P) at window positions
        ``steps`` (S,), values/observed (B, L), scale (B,)."""
        raise NotImplementedError


class DistributionHead(ForecastHead):
    """A parametric distribution of each step, learned by its likelihood and forecast by sampled paths."""

    sampled = True
    args_dim: ClassVar[int]  # raw outputs per step
    interpolation: ClassVar[str] = "linear"  # how ``torch.quantile`` reads quantiles off the sampled paths

    def num_parameters(self, horizon: int, levels: tuple[float, ...]) -> int:
        return self.args_dim

    def domain_map(self, out: Tensor) -> tuple[Tensor, ...]:
        """Raw outputs (..., P) -> the distribution's parameters, each (...) and in its domain."""
        raise NotImplementedError

    def distribution(self, out: Tensor, scale: Tensor) -> torch.distributions.Distribution:
        """The distribution of ``scale_target(y, scale)``; out (..., P), scale broadcastable to (...)."""
        raise NotImplementedError

    def scale_target(self, y: Tensor, scale: Tensor) -> Tensor:
        """Data values -> the values the distribution is over: y / s (the scale-free heads)."""
        return y / scale

    def unscale(self, z: Tensor, scale: Tensor) -> Tensor:
        """The inverse of ``scale_target``: a draw of the distribution -> a data value."""
        return z * scale

    def loss(self, out: Tensor, values: Tensor, observed: Tensor, steps: Tensor, scale: Tensor, *, horizon: int,
             levels: tuple[float, ...]) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Negative log-likelihood of each observed step, teacher-forced over the whole window."""
        target, mask = values[:, steps], observed[:, steps]  # (B, S)
        dist = self.distribution(out, scale[:, None])
        nll = -dist.log_prob(self.scale_target(target, scale[:, None])) * mask  # (B, S)
        return nll.sum(), mask.sum()

    def sample(self, out: Tensor, scale: Tensor) -> Tensor:
        """One draw per row, as a data value: out (N, P), scale (N,) -> (N,)."""
        return self.unscale(self.distribution(out, scale).sample(), scale)

    def quantiles(self, paths: Tensor, levels: tuple[float, ...]) -> Tensor:
        """The ``levels`` of sampled paths (B, S, h) over their S draws -> (Q, B, h)."""
        qs = torch.tensor(levels, device=paths.device, dtype=paths.dtype)
        return torch.quantile(paths, qs, dim=1, interpolation=self.interpolation)


class StudentT(DistributionHead):
    """z / s ~ StudentT(nu, mu, sigma), nu > 2 so the variance exists; heavy tails for outliers."""

    name = "studentt"
    args_dim = 3

    def domain_map(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(df, loc, scale) = (2 + softplus(out_2), out_0, softplus(out_1) + 1e-4)."""
        return 2.0 + F.softplus(out[..., 2]), out[..., 0], F.softplus(out[..., 1]) + 1e-4

    def distribution(self, out: Tensor, scale: Tensor) -> torch.distributions.Distribution:
        return torch.distributions.StudentT(*self.domain_map(out))


class Gaussian(DistributionHead):
    """z / s ~ Normal(mu, sigma)."""

    name = "gaussian"
    args_dim = 2

    def domain_map(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """(loc, scale) = (out_0, softplus(out_1) + 1e-4)."""
        return out[..., 0], F.softplus(out[..., 1]) + 1e-4

    def distribution(self, out: Tensor, scale: Tensor) -> torch.distributions.Distribution:
        return torch.distributions.Normal(*self.domain_map(out))


class NegBin(DistributionHead):
    """Counts: z ~ NegativeBinomial(r, logits + log s), over the raw counts (a count divided by s is no count);
    the window's scale enters as a shift of the logits, so the mean r * exp(logits) * s scales with s
    (DeepAR's count likelihood, Salinas et al. 2020). Its quantiles are read as counts (``nearest``)."""

    name = "negbin"
    args_dim = 2
    interpolation = "nearest"

    def domain_map(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """(total_count, logits) = (softplus(out_0) + 1e-4, out_1)."""
        return F.softplus(out[..., 0]) + 1e-4, out[..., 1]

    def distribution(self, out: Tensor, scale: Tensor) -> torch.distributions.Distribution:
        total, logits = self.domain_map(out)
        return torch.distributions.NegativeBinomial(total, logits=logits + scale.log())

    def scale_target(self, y: Tensor, scale: Tensor) -> Tensor:
        return y

    def unscale(self, z: Tensor, scale: Tensor) -> Tensor:
        return z

    def check_data(self, data: SeriesSet) -> None:
        bad = next((s for s in data.series if (s.values < 0).any() or (s.values != np.round(s.values)).any()), None)
        if bad is not None:
            raise DataError(f"{data.source}: series {bad.id!r} is not counts (negative or fractional values); "
                            "the negbin head needs non-negative integers")  # fmt: skip


def pinball(target: Tensor, pred: Tensor, levels: Tensor) -> Tensor:
    """Pinball loss per element: target (...), pred (..., Q), levels (Q,) -> (..., Q)."""
    d = target.unsqueeze(-1) - pred
    return torch.maximum(levels * d, (levels - 1) * d)


class Quantile(ForecastHead):
    """MQ-RNN's direct multi-horizon quantiles (Wen et al. 2017): step t's outputs (H * Q) are the Q levels of
    each of the H steps after it, in units of the window's scale; trained by the pinball loss on every step of
    the window ("forking sequences"), forecast in one pass from the last context step."""

    name = "quantile"
    sampled = False

    def num_parameters(self, horizon: int, levels: tuple[float, ...]) -> int:
        return horizon * len(levels)

    def check_request(self, h: int, levels: tuple[float, ...], horizon: int, trained: tuple[float, ...]) -> None:
        if h > horizon:
            raise DataError(f"a quantile-head run forecasts at most its trained horizon {horizon}, asked for {h}")
        missing = [q for q in levels if not any(abs(q - k) < 1e-9 for k in trained)]
        if missing:
            raise DataError(f"a quantile-head run forecasts only its trained levels "
                            f"{', '.join(f'{q:g}' for q in trained)}; asked for {missing[0]:g}")  # fmt: skip

    def loss(self, out: Tensor, values: Tensor, observed: Tensor, steps: Tensor, scale: Tensor, *, horizon: int,
             levels: tuple[float, ...]) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Pinball loss of every observed (step, steps ahead) pair inside the window, mean over the levels."""
        H, Q, L = horizon, len(levels), values.size(1)
        pred = out.view(*out.shape[:2], H, Q)  # (B, S, H, Q): step s predicts z_{s+j}
        j = torch.arange(H, device=values.device)
        pos = steps[:, None] + j[None, :]  # (S, H) window positions predicted
        inside = pos < L
        pos = pos.clamp(max=L - 1)
        y = values[:, pos] / scale[:, None, None]  # (B, S, H)
        m = observed[:, pos] * inside  # (B, S, H)
        q = torch.tensor(levels, device=values.device, dtype=out.dtype)
        loss = pinball(y, pred, q).mean(-1) * m  # (B, S, H)
        return loss.sum(), m.sum()

    def forecast(self, out: Tensor, scale: Tensor, h: int, levels: tuple[float, ...], *, horizon: int,
                 trained: tuple[float, ...]) -> dict[float, Tensor]:  # fmt: skip
        """The first h steps' quantiles at ``levels`` (each one of the ``trained`` levels): out (B, P) from the last
        context step, scale (B,) -> {level: (B, h)}, sorted across levels so quantiles never cross."""
        pred = out.view(-1, horizon, len(trained))[:, :h]  # (B, h, Q)
        pred = pred.sort(dim=-1).values * scale[:, None, None]
        pick = {q: min(range(len(trained)), key=lambda k: abs(trained[k] - q)) for q in levels}
        return {q: pred[..., k] for q, k in pick.items()}


HEADS: dict[str, type[ForecastHead]] = {head.name: head for head in (Gaussian, StudentT, NegBin, Quantile)}
