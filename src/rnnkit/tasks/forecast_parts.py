"""The forecaster's parts: its network, the network's export graph, and the training windows it learns from.

    Forecaster     inputs (B, T, D) [+ series ids (B,)] --rnnkit.RNN--> (B, T, H) --linear--> head outputs (B, T, P)
    Windows        every series laid end to end, ``pad`` unobserved steps before each: any window is one index
    WindowBatches  an epoch of windows, (series index, end) pairs, shuffled or drawn series-first, per rank

``window_pairs`` lists a run's training windows and ``drop_last`` cuts a series' held-out tail. None of these
needs the task: ``ForecastTask`` builds them from its fitted settings (lags, context, horizon, features).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.data.series import Series
from rnnkit.init import initialise_
from rnnkit.recurrent import RNN
from rnnkit.tasks.forecast_config import ForecastModelConfig
from rnnkit.tasks.forecast_heads import HEADS

__all__ = ["ForecastGraph", "Forecaster", "WindowBatches", "Windows", "drop_last", "window_pairs"]


class Forecaster(nn.Module):
    """inputs (B, T, D) [+ series ids (B,)] -> rnnkit.RNN -> head outputs (B, T, P).

    P is the head's ``num_parameters``: 2 (gaussian, negbin), 3 (studentt) or H * Q (quantile: H steps ahead times
    Q levels).
    """

    def __init__(self, config: ForecastModelConfig, input_size: int, *, num_series: int = 0, horizon: int = 1,
                 levels: tuple[float, ...] = (0.5,)) -> None:  # fmt: skip
        super().__init__()
        self.config, self.horizon, self.levels = config, horizon, tuple(levels)
        self.embed = nn.Embedding(num_series, config.id_embedding) if config.id_embedding and num_series else None
        D = input_size + (config.id_embedding if self.embed is not None else 0)
        self.rnn = RNN(config.mode, D, config.hidden_size, config.num_layers, dropout=config.dropout,
                       backend=config.backend, **config.rnn_options())  # fmt: skip
        P = HEADS[config.head]().num_parameters(horizon, self.levels)
        self.head = nn.Linear(config.hidden_size, P)  # raw outputs; the task's ``head`` reads them
        initialise_(self.rnn, config.init)

    def forward(self, x: Tensor, ids: Tensor | None = None, state=None) -> tuple[Tensor, Any]:
        """x (B, T, D), ids (B,) long (-1 = a series the run never saw: the mean embedding) -> (B, T, P), state."""
        if self.embed is not None:
            if ids is None:
                raise ValueError("this model has series embeddings: pass ids (B,)")
            known = ids.clamp(min=0)
            e = torch.where((ids >= 0).unsqueeze(-1), self.embed(known), self.embed.weight.mean(0))  # (B, E)
            x = torch.cat([x, e.unsqueeze(1).expand(-1, x.size(1), -1)], dim=-1)
        y, state = self.rnn(x, state)  # (B, T, H)
        return self.head(y), state


class ForecastGraph(nn.Module):
    """Export graph (``rnnkit export``): inputs (B, T, D) [, ids (B,) int64], h0 [c0] -> params (B, T, P), hn [cn]."""

    def __init__(self, model: Forecaster, ids: bool) -> None:
        super().__init__()
        self.model, self.ids = model, ids

    def forward(self, inputs: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        from rnnkit.export import flat_state, nested_state

        ids, state = (rest[0], rest[1:]) if self.ids else (None, rest)
        out, new_state = self.model(inputs, ids, nested_state(state))  # (B, T, P)
        return (out, *flat_state(new_state))


class Windows:
    """Series laid end to end with ``pad`` unobserved steps before each, so any window is one fancy index."""

    def __init__(self, series: list[Series], features: list[np.ndarray], pad: int) -> None:
        F_ = features[0].shape[1] if features else 0
        chunks_v, chunks_o, chunks_f, chunks_a = [], [], [], []
        self.offsets, self.lengths = [], []
        at = 0
        for s, f in zip(series, features, strict=True):
            n = len(s)
            chunks_v += [np.zeros(pad), s.values]
            chunks_o += [np.zeros(pad), np.ones(n)]
            chunks_f += [np.zeros((pad, F_)), f]
            chunks_a += [np.zeros(pad), np.arange(n, dtype=np.float64)]
            self.offsets.append(at + pad)  # position of the series' first point
            self.lengths.append(n)
            at += pad + n
        self.values = np.concatenate(chunks_v) if chunks_v else np.zeros(0)
        self.observed = np.concatenate(chunks_o) if chunks_o else np.zeros(0)
        self.features = np.concatenate(chunks_f) if chunks_f else np.zeros((0, F_))
        self.age = np.concatenate(chunks_a) if chunks_a else np.zeros(0)

    def take(self, series: np.ndarray, ends: np.ndarray, width: int) -> dict[str, Tensor]:
        """Windows of ``width`` steps ending (exclusive) at point ``ends[b]`` of series ``series[b]``."""
        base = np.asarray(self.offsets)[series] + ends  # (B,)
        idx = base[:, None] - width + np.arange(width)[None, :]  # (B, width)
        return {
            "values": torch.from_numpy(self.values[idx]).float(),
            "observed": torch.from_numpy(self.observed[idx]).float(),
            "features": torch.from_numpy(self.features[idx]).float(),
            "age": torch.from_numpy(self.age[idx]).float(),
        }


def window_pairs(series: list[Series], horizon: int) -> np.ndarray:
    """Every training window as (series index, end): the last ``horizon`` points before ``end`` are all observed
    and at least one context point is."""
    H = horizon
    pairs = [np.stack([np.full(len(s) - H, i), np.arange(H + 1, len(s) + 1)], 1)
             for i, s in enumerate(series) if len(s) > H]  # fmt: skip
    return np.concatenate(pairs).astype(np.int64)


def drop_last(s: Series, k: int) -> Series:
    """``s`` without its last ``k`` points (``s`` itself when k is 0)."""
    return Series(s.id, s.start, s.values[: len(s) - k], s.covariates[: len(s) - k]) if k else s


class WindowBatches:
    """An epoch is ``len(pairs)`` windows: every window once in a shuffled order (``sampling="windows"``), or as
    many draws of a series chosen uniformly and then a window of it (``"series"``: short series weigh as much as
    long ones, as every series counts once in the accuracy). ``take(series, ends)`` makes a batch of them."""

    def __init__(self, pairs: np.ndarray, rank: int, world_size: int, *, batch_size: int, seed: int, sampling: str,
                 take: Callable[[np.ndarray, np.ndarray], dict[str, Tensor]]) -> None:  # fmt: skip
        self.pairs, self.rank, self.world = pairs, rank, world_size
        self.size, self.seed, self.sampling, self.take = batch_size, seed, sampling, take
        self.per_rank = len(pairs) // world_size
        self.series = np.unique(pairs[:, 0])
        first = np.searchsorted(pairs[:, 0], self.series)  # pairs are grouped by series, ends ascending
        self.first, self.count = first, np.diff(np.append(first, len(pairs)))
        self.epoch, self.order = None, None

    def __len__(self) -> int:
        return max(1, math.ceil(self.per_rank / self.size))

    def _epoch(self, epoch: int) -> np.ndarray:
        """Indices into ``pairs`` of this epoch's windows, in order, for this rank."""
        if self.epoch != epoch:
            seed = self.seed * 1_000_003 + epoch
            if self.sampling == "windows":
                order = torch.randperm(len(self.pairs), generator=torch.Generator().manual_seed(seed)).numpy()
            else:
                rng = np.random.default_rng(seed)
                which = rng.integers(0, len(self.series), len(self.pairs))
                order = self.first[which] + (rng.random(len(self.pairs)) * self.count[which]).astype(np.int64)
            start = self.rank * self.per_rank if self.world > 1 else 0
            self.epoch, self.order = epoch, order[start : start + self.per_rank]
        return self.order

    def get(self, epoch: int, k: int):
        pick = self.pairs[self._epoch(epoch)[k * self.size : (k + 1) * self.size]]  # (B, 2): series index, end
        return self.take(pick[:, 0], pick[:, 1])

    def items(self, batch) -> int:
        return batch["values"].size(0)
