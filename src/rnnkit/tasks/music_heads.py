"""The music model's output heads: one class per distribution of a frame of K keys given the RNN's state.

A head turns the recurrent output h_t (after reading frames v_1 .. v_{t-1}) into a distribution over the next
frame v_t in {0, 1}^K, with an exact log-likelihood:

    Bernoulli  p(v | h) = prod_k sigma(l_k)^v_k (1 - sigma(l_k))^(1 - v_k),    l = U h + b
               keys independent given the history: the usual RNN baseline (Chung et al. 2014)
    NADE       p(v | h) = prod_k p(v_k | v_<k, h)                              keys in order, low to high
               a_k = c(h) + W[:, :k] v_<k,   p(v_k = 1 | v_<k, h) = sigma(b(h)_k + V_k . sigma(a_k))
               with c(h) = U_c h + c and b(h) = U_b h + b: the RNN-NADE of Boulanger-Lewandowski et al. (2012),
               whose NADE (Larochelle & Murray 2011) models each chord, the RNN its time-varying biases

Both expose the conditional logits of each key given the frame's true lower keys (``logits``), so the
log-likelihood is the Bernoulli log-probability of each key under its logit, summed over keys. Sampling draws key
by key at a temperature (each logit divided by it; 0 picks the likelier value), and ``predict`` gives the frame
that frame accuracy scores: each key 1 when its probability passes 1/2 (for NADE greedily, key by key, each
conditioned on the keys already chosen).

``HEADS`` maps the config's ``head`` string (``--head nade``) to its class.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.precision import at_least_fp32

__all__ = ["HEADS", "BernoulliHead", "FrameHead", "NADEHead"]


class FrameHead(nn.Module):
    """h (..., H) -> a distribution over frames v (..., K) in {0, 1}^K. Every method runs in fp32 at least."""

    name: ClassVar[str]

    def __init__(self, hidden_size: int, keys: int, nade_size: int) -> None:
        super().__init__()
        self.hidden_size, self.keys = hidden_size, keys

    def logits(self, h: Tensor, v: Tensor) -> Tensor:
        """l_k = logit p(v_k = 1 | v_<k, h) for every key, given the frame ``v``: (..., K)."""
        raise NotImplementedError

    def draw(self, h: Tensor, choose) -> Tensor:
        """A frame (..., K) chosen key by key: ``choose(logit of key k) -> v_k`` (0. or 1.)."""
        raise NotImplementedError

    def log_prob(self, h: Tensor, v: Tensor) -> Tensor:
        """log p(v | h) in nats: h (..., H), v (..., K) of 0s and 1s -> (...)."""
        with torch.autocast(h.device.type, enabled=False):
            h = at_least_fp32(h)
            v = v.to(h.dtype)
            return -F.binary_cross_entropy_with_logits(self.logits(h, v), v, reduction="none").sum(-1)

    @torch.no_grad()
    def sample(self, h: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """One frame per row of h (..., H) -> (..., K) of 0. and 1.: key k is 1 with probability
        sigma(l_k / temperature); temperature 0: 1 where l_k > 0."""
        if temperature == 0:
            return self.predict(h)

        def choose(logit: Tensor) -> Tensor:
            p = torch.sigmoid(logit / temperature)
            return torch.bernoulli(p, generator=generator)

        with torch.autocast(h.device.type, enabled=False):
            return self.draw(at_least_fp32(h), choose)

    @torch.no_grad()
    def predict(self, h: Tensor) -> Tensor:
        """The frame frame accuracy scores: key k on where its (conditional) probability passes 1/2: (..., K)."""
        with torch.autocast(h.device.type, enabled=False):
            return self.draw(at_least_fp32(h), lambda logit: (logit > 0).to(logit.dtype))


class BernoulliHead(FrameHead):
    """Independent keys given the history: l = U h + b."""

    name = "bernoulli"

    def __init__(self, hidden_size: int, keys: int, nade_size: int) -> None:
        super().__init__(hidden_size, keys, nade_size)
        self.out = nn.Linear(hidden_size, keys)  # U, b

    def logits(self, h: Tensor, v: Tensor) -> Tensor:
        return self.out(h)  # (..., K): no key depends on another

    def draw(self, h: Tensor, choose) -> Tensor:
        return choose(self.out(h))  # (..., K) at once


class NADEHead(FrameHead):
    """RNN-NADE's output (Boulanger-Lewandowski et al. 2012): a NADE of ``nade_size`` hidden units over the keys,
    its biases c(h) and b(h) set by the RNN at each step; W and V are shared by all steps."""

    name = "nade"

    def __init__(self, hidden_size: int, keys: int, nade_size: int) -> None:
        super().__init__(hidden_size, keys, nade_size)
        self.nade_size = nade_size
        self.biases = nn.Linear(hidden_size, nade_size + keys)  # [U_c; U_b] h + [c; b]
        self.W = nn.Parameter(torch.empty(nade_size, keys))  # key j's input to the NADE's hidden units: W[:, j]
        self.V = nn.Parameter(torch.empty(keys, nade_size))  # the hidden units' output to key k: V[k]
        bound = nade_size**-0.5
        nn.init.uniform_(self.W, -bound, bound)
        nn.init.uniform_(self.V, -bound, bound)

    def _biases(self, h: Tensor) -> tuple[Tensor, Tensor]:
        c, b = self.biases(h).split((self.nade_size, self.keys), -1)  # (..., N), (..., K)
        return c, b

    def logits(self, h: Tensor, v: Tensor) -> Tensor:
        c, b = self._biases(h)  # (..., N), (..., K)
        below = torch.ones(self.keys, self.keys, device=v.device).tril(-1)  # (K, K): below[k, j] = 1 for j < k
        a = c.unsqueeze(-2) + (v.unsqueeze(-2) * below) @ self.W.t()  # (..., K, N): a_k = c + W[:, :k] v_<k
        return b + (torch.sigmoid(a) * self.V).sum(-1)  # (..., K): b_k + V_k . sigma(a_k)

    def draw(self, h: Tensor, choose) -> Tensor:
        c, b = self._biases(h)  # (..., N), (..., K)
        a, keys = c, []
        for k in range(self.keys):
            logit = b[..., k] + torch.sigmoid(a) @ self.V[k]  # (...)
            v_k = choose(logit)  # (...)
            a = a + v_k.unsqueeze(-1) * self.W[:, k]  # (..., N): key k now conditions the keys above it
            keys.append(v_k)
        return torch.stack(keys, -1)  # (..., K)


HEADS: dict[str, type[FrameHead]] = {head.name: head for head in (BernoulliHead, NADEHead)}
