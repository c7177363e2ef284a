"""Metrics: the language model's loss and bits per character, classification metrics, the run's records and plots.

The language model's loss is the mean next-token cross-entropy in nats, its perplexity exp(loss), and its bits per
character the total nats over the characters the scored tokens hold, / ln 2 (= loss / ln 2 for character tokens),
so that bpc compares across tokenisations of the same text.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.data.stream import TextStream
from rnnkit.data.tokens import Tokenizer, as_tokenizer
from rnnkit.data.vocab import Vocab
from rnnkit.distributed import DistInfo, all_reduce
from rnnkit.io import atomic_open, atomic_write
from rnnkit.precision import at_least_fp32
from rnnkit.sequence import detach_state

__all__ = [
    "MetricsLog",
    "classification_metrics",
    "confusion_matrix",
    "evaluate_dynamic",
    "evaluate_ids",
    "evaluate_text",
    "forecast_scores",
    "mase_scale",
    "pinball",
    "plot_alignments",
    "plot_confusion",
    "plot_forecasts",
    "plot_training",
    "smape",
]

log = logging.getLogger(__name__)
LN2 = math.log(2.0)


def _nll_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed next-character cross-entropy in nats: logits (B, T, V), targets (B, T); at least fp32 (bf16 too)."""
    logits = at_least_fp32(logits.reshape(-1, logits.size(-1)))  # (B*T, V)
    return nn.functional.cross_entropy(logits, targets.reshape(-1), reduction="sum")


@torch.no_grad()
def _lm_scores(total: float, tokens: float, chars: float) -> dict[str, float]:
    """The LM's metrics from the summed nats of ``tokens`` scored tokens holding ``chars`` characters."""
    loss = total / tokens
    return {"loss": loss, "bpc": total / chars / LN2, "ppl": math.exp(min(loss, 700.0)), "chars": int(chars),
            "tokens": int(tokens)}  # fmt: skip


def _count_chars(targets: Tensor, char_lengths: Tensor | None) -> int:
    """Characters the target ids (B, T) hold: one each without ``char_lengths`` (V,)."""
    return targets.numel() if char_lengths is None else int(char_lengths[targets].sum())


@torch.no_grad()
def evaluate_ids(
    model: nn.Module,
    ids: Tensor,
    *,
    batch_size: int,
    bptt: int,
    device: torch.device | str,
    dist_info: DistInfo | None = None,
    char_lengths: Tensor | None = None,
) -> dict[str, float]:
    """Loss, bpc and perplexity of ``model`` on the id stream ``ids`` (N,), every target predicted once with carried
    state: {"loss": nats/token, "bpc": bits/char, "ppl": exp(loss), "chars": ..., "tokens": ... scored}.

    ``char_lengths`` (V,): the characters each token holds (``Tokenizer.char_lengths``); None: one each (character
    tokens). bpc is the summed nats of the scored tokens over their characters, / ln 2. The stream is cut into at
    most ``batch_size`` rows (fewer for a short text, so each row holds about one ``bptt`` chunk or more); each row
    starts from the zero state. Under DDP each rank scores its own rows and the sums are all-reduced, so every rank
    gets the same numbers.
    """
    info = dist_info or DistInfo()
    rows = max(1, min(batch_size, (ids.numel() - 1) // (bptt * info.world_size)))
    stream = TextStream(ids, rows, bptt, rank=info.rank, world_size=info.world_size)
    was_training = model.training
    model.eval()
    total, count, chars, state = 0.0, 0, 0, None
    for x, y in stream.chunks():
        chars += _count_chars(y, char_lengths)
        x, y = x.to(device), y.to(device)  # (B, T) each
        logits, state = model(x, state)  # (B, T, V)
        state = detach_state(state)
        total += float(_nll_sum(logits, y))
        count += y.numel()
    model.train(was_training)
    total, count, chars = all_reduce([total, float(count), float(chars)], "sum", info, torch.device(device))
    return _lm_scores(total, count, chars)


def evaluate_dynamic(
    model: nn.Module,
    ids: Tensor,
    *,
    lr: float,
    normalize: bool = True,
    beta: float = 0.99,
    decay: float = 0.0,
    batch_size: int = 2,
    bptt: int = 32,
    device: torch.device | str = "cpu",
    char_lengths: Tensor | None = None,
) -> dict[str, float]:
    """Loss, bpc and perplexity (as ``evaluate_ids``) of ``ids`` (N,) under dynamic evaluation: the model keeps
    learning from the text it has scored.

    Dynamic evaluation (Krause et al., 2018): each ``bptt`` chunk is first scored with the current parameters,
    and only then used for one gradient step on its mean loss g,

        v     <- beta * v + (1 - beta) * g^2                    (normalize=True; v starts at the first g^2)
        theta <- theta - lr * g / (sqrt(v) + 1e-8) + decay * (theta_0 - theta)

    or ``theta <- theta - lr * g + decay * (theta_0 - theta)`` with ``normalize=False`` (plain SGD). Every
    character is predicted from parameters fitted to text strictly before it (the ``batch_size`` rows advance
    in lockstep; a decoder doing the same steps reproduces every prediction). This is how an adaptive compressor
    such as xz uses its input, so it is the figure to set beside theirs; ``evaluate_ids`` is the static figure.
    Few rows adapt best (each step then follows one place in the text): measured on the stdlib corpus, 2 rows
    beat 16 by 0.07 bpc. ``model`` itself is left unchanged (a copy adapts). Dropout is off (eval mode).
    """
    if not isinstance(lr, (int, float)) or lr < 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1), got {beta!r}")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay!r}")
    model = copy.deepcopy(model).to(device)
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    theta0 = [p.detach().clone() for p in params]
    mean_sq: list[Tensor | None] = [None] * len(params)
    rows = max(1, min(batch_size, (ids.numel() - 1) // bptt))
    stream = TextStream(ids, rows, bptt)
    total, count, chars, state = 0.0, 0, 0, None
    for x, y in stream.chunks():
        chars += _count_chars(y, char_lengths)
        x, y = x.to(device), y.to(device)  # (B, T) each
        logits, state = model(x, state)  # (B, T, V)
        loss = _nll_sum(logits, y)
        total += loss.detach().item()  # scored before the update below
        count += y.numel()
        grads = torch.autograd.grad(loss / y.numel(), params, allow_unused=True)
        with torch.no_grad():
            for k, (p, g, p0) in enumerate(zip(params, grads, theta0, strict=True)):
                if g is not None:
                    if normalize:
                        v = mean_sq[k]
                        mean_sq[k] = v = g * g if v is None else v.mul_(beta).addcmul_(g, g, value=1 - beta)
                        p.addcdiv_(g, v.sqrt().add_(1e-8), value=-lr)
                    else:
                        p.add_(g, alpha=-lr)
                if decay:
                    p.add_(p0 - p, alpha=decay)
        state = detach_state(state)
    return _lm_scores(total, count, chars)


def evaluate_text(
    model: nn.Module, vocab: Vocab | Tokenizer, text: str, *, batch_size: int = 16, bptt: int = 256, device="cpu"
) -> dict[str, float]:
    """``evaluate_ids`` of ``text`` encoded by ``vocab`` (a run's tokenizer, or a character ``Vocab``), plus
    "unknown": the characters outside the vocabulary.

    Characters outside it are scored as its unknown symbol (U+FFFD; a DataError for a vocabulary without one); the
    first token is context only (it has no predecessor), so its characters are not counted.
    """
    tokenizer = as_tokenizer(vocab)
    ids = tokenizer.ids(text)  # (N,)
    return {**evaluate_ids(model, ids, batch_size=batch_size, bptt=bptt, device=device,
                           char_lengths=tokenizer.char_lengths()),
            "unknown": tokenizer.count_unknown(text)}  # fmt: skip


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, per training log and per evaluation."""

    def __init__(self, path: Path, *, keep_up_to_step: int | None = None) -> None:
        self.path = path
        if keep_up_to_step is not None and path.exists():
            # after a resume, drop records written after the checkpoint we continue from
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= keep_up_to_step]
            atomic_write(path, "".join(line + "\n" for line in kept))
        self.records: list[dict[str, Any]] = [json.loads(line) for line in _lines(path)]

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", math.inf)
    except (json.JSONDecodeError, AttributeError):
        return math.inf


def _pyplot(what: str):
    """matplotlib.pyplot on the Agg backend, or None (with a warning that ``what`` is skipped) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s", what)
        return None
    return plt


def _save(plt, fig, path: Path | io.BytesIO) -> None:
    """The figure as a PNG at ``path`` (atomically), or into the buffer ``path`` (to write with other files)."""
    try:
        if isinstance(path, io.BytesIO):
            fig.savefig(path, format="png", dpi=100)
            return
        with atomic_open(path, suffix=".png") as (_, tmp):
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def plot_training(records: list[dict[str, Any]], path: Path, primary: str) -> bool:
    """The training curves as a PNG (matplotlib Agg), written atomically; False when matplotlib is missing.

    Left: training and validation loss against step. Right (when the primary metric is not the loss): the
    validation ``primary`` metric, beside its training value when the task reports one (the LM's bpc).
    """
    plt = _pyplot("loss plot")
    if plt is None:
        return False

    def curve(kind: str, key: str) -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in records if r.get("kind") == kind and r.get(key) is not None]

    panels = [("loss", "loss")] + ([(primary, primary)] if primary != "loss" else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for points, name, style in (
            (curve("step", key), "train", "-"),
            (curve("eval", f"val_{key}"), "validation", "o-"),
        ):
            if points:
                ax.plot(*zip(*points, strict=True), style, label=f"{name} {label}", alpha=0.85)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(plt, fig, path)
    return True


# --- classification ------------------------------------------------------------------------------------------


def confusion_matrix(targets: Tensor, predictions: Tensor, num_classes: int) -> Tensor:
    """(C, C) int64 counts: row = true class, column = predicted class; ids outside [0, C) are a ValueError."""
    for name, ids in (("targets", targets), ("predictions", predictions)):
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
            raise ValueError(
                f"{name} must lie in [0, {num_classes}), got values in [{int(ids.min())}, {int(ids.max())}]"
            )
    index = targets.long() * num_classes + predictions.long()  # (N,)
    return torch.bincount(index.cpu(), minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(confusion: Tensor) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class recall/precision/F1 from a confusion matrix (rows true, columns predicted).

    accuracy = trace / N. For class c: recall = C[c, c] / sum_j C[c, j], precision = C[c, c] / sum_i C[i, c],
    F1 = 2 P R / (P + R), each 0 where its denominator is 0 (scikit-learn's ``zero_division=0``). macro-F1 is
    the mean F1 over the classes that occur in the targets or the predictions.
    """
    conf = confusion.double()
    n = conf.sum()
    tp = conf.diag()  # (C,)
    true_count, pred_count = conf.sum(1), conf.sum(0)  # (C,) each
    recall = torch.where(true_count > 0, tp / true_count.clamp(min=1), torch.zeros_like(tp))
    precision = torch.where(pred_count > 0, tp / pred_count.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), torch.zeros_like(tp))
    present = (true_count + pred_count) > 0
    return {
        "accuracy": float(tp.sum() / n) if n > 0 else 0.0,
        "macro_f1": float(f1[present].mean()) if bool(present.any()) else 0.0,
        "n": int(n),
        "recall": recall.tolist(),
        "precision": precision.tolist(),
        "f1": f1.tolist(),
    }


PLOTTED_CLASSES = 50  # a bigger confusion matrix is shown as its most frequent true classes (10,000 hung matplotlib)


def plot_confusion(confusion: Tensor, labels: list[str], path: Path, title: str = "") -> bool:
    """The confusion matrix as a PNG, rows normalised to recall, counts in the cells; False without matplotlib.

    With more than ``PLOTTED_CLASSES`` classes, only the rows and columns of the ``PLOTTED_CLASSES`` classes with
    the most true examples are drawn (the title says so): a readable summary, in bounded time."""
    plt = _pyplot("confusion-matrix plot")
    if plt is None:
        return False
    if len(labels) > PLOTTED_CLASSES:
        keep = torch.argsort(confusion.sum(1), descending=True, stable=True)[:PLOTTED_CLASSES].sort().values
        title = f"{title}\n{PLOTTED_CLASSES} most frequent of {len(labels):,} classes".strip()
        confusion, labels = confusion[keep][:, keep], [labels[i] for i in keep.tolist()]
    C = len(labels)
    counts = confusion.double()
    rates = counts / counts.sum(1, keepdim=True).clamp(min=1)  # (C, C), each row sums to 1
    size = min(3 + 0.55 * C, 14)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if C <= 30:
        for i in range(C):
            for j in range(C):
                if counts[i, j] > 0:
                    color = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8, color=color)
    ticks = range(C)
    ax.set_xticks(ticks, labels, rotation=90 if C > 8 else 0)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    _save(plt, fig, path)
    return True


def tensorboard_writer(log_dir: Path):
    """A SummaryWriter when ``torch.utils.tensorboard`` imports (tensorboard installed), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


# --- forecasting ---------------------------------------------------------------------------------------------------


def smape(actual, forecast) -> float:
    """Symmetric MAPE in percent, as the M3 competition scored it: mean of 200 |y - f| / (|y| + |f|) (0 where both
    are 0). ``actual`` and ``forecast`` are arrays of the same shape (a series or a stack of them)."""
    y, f = np.asarray(actual, np.float64), np.asarray(forecast, np.float64)
    denominator = np.abs(y) + np.abs(f)
    ratio = np.divide(np.abs(y - f), denominator, out=np.zeros_like(y), where=denominator > 0)
    return float(200.0 * ratio.mean())


def mase_scale(history, season_length: int) -> float:
    """MASE's denominator: the in-sample mean absolute error of the seasonal naive forecast at lag m,
    mean |y_t - y_{t-m}| over t = m .. n-1 (lag 1 when the series is shorter than m + 1); NaN when n < 2."""
    y = np.asarray(history, np.float64)
    m = season_length if len(y) > season_length else 1
    if len(y) <= m:
        return math.nan
    return float(np.abs(y[m:] - y[:-m]).mean())


def pinball(actual, forecast_q, q: float) -> np.ndarray:
    """Quantile (pinball) loss of level ``q`` per point: max(q (y - f), (q - 1)(y - f))."""
    d = np.asarray(actual, np.float64) - np.asarray(forecast_q, np.float64)
    return np.maximum(q * d, (q - 1.0) * d)


def forecast_scores(
    histories: list, actuals: list, medians: list, season_length: int, quantiles: dict[float, list] | None = None
) -> dict[str, float]:
    """Accuracy of forecasts of several series, one entry per series in each list.

    ``smape`` (percent) and ``mase`` are the means over series of each series' score (as the M competitions
    average them); a series whose MASE scale is 0 or undefined (a constant or one-point history) is left out of
    ``mase`` and counted in ``mase_skipped``. ``mae`` and ``rmse`` pool every forecast point. With ``quantiles``
    ({level: per-series arrays}), ``quantile_loss`` is the mean pinball loss over levels and points, and
    ``coverage_80`` the share of actuals inside [q0.1, q0.9] when both levels are there.
    """
    if not (len(histories) == len(actuals) == len(medians)):
        raise ValueError(
            f"histories, actuals and medians must have one entry per series, got {len(histories)}, {len(actuals)} "
            f"and {len(medians)}"
        )
    if not actuals:
        raise ValueError("forecast_scores needs at least one series, got none")
    per_smape, per_mase, errors = [], [], []
    for history, y, f in zip(histories, actuals, medians, strict=True):
        y, f = np.asarray(y, np.float64), np.asarray(f, np.float64)
        if y.shape != f.shape:
            raise ValueError(f"an actual and its forecast differ in shape: {y.shape} vs {f.shape}")
        per_smape.append(smape(y, f))
        scale = mase_scale(history, season_length)
        if math.isfinite(scale) and scale > 0:
            per_mase.append(float(np.abs(y - f).mean()) / scale)
        errors.append(y - f)
    e = np.concatenate(errors)
    out = {
        "smape": float(np.mean(per_smape)),
        "mase": float(np.mean(per_mase)) if per_mase else math.nan,
        "mase_skipped": len(actuals) - len(per_mase),
        "mae": float(np.abs(e).mean()),
        "rmse": float(np.sqrt((e**2).mean())),
        "series": len(actuals),
        "points": int(e.size),
    }
    if quantiles:
        y_all = np.concatenate([np.asarray(y, np.float64) for y in actuals])
        stacked = {q: np.concatenate([np.asarray(v, np.float64) for v in values]) for q, values in quantiles.items()}
        out["quantile_loss"] = float(np.mean([pinball(y_all, f, q).mean() for q, f in stacked.items()]))
        if 0.1 in stacked and 0.9 in stacked:
            out["coverage_80"] = float(((y_all >= stacked[0.1]) & (y_all <= stacked[0.9])).mean())
    return out


def plot_forecasts(series: list, forecast: dict, axis, path: Path, *, actuals: dict | None = None, title: str = "",
                   max_series: int = 4, history_steps: int | None = None) -> bool:  # fmt: skip
    """A PNG of up to ``max_series`` series: the recent history, the actuals when given ({id: (h,)}), the median
    forecast and its 80 % band (q0.1 to q0.9). ``series`` are ``rnnkit.data.series.Series``; ``forecast`` is
    ``ForecastTask.forecast``'s result for them; ``axis`` their ``TimeAxis``. False without matplotlib."""
    plt = _pyplot("forecast plot")
    if plt is None:
        return False
    n = min(len(series), max_series)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.6 * n), squeeze=False)
    h = forecast["median"].shape[1] if n else 0
    keep = history_steps or max(3 * h, 24)
    for i, ax in enumerate(axes[:, 0]):
        s = series[i]
        past = np.arange(len(s))[-keep:]
        ahead = len(s) + np.arange(h)
        ax.plot(past, s.values[-len(past) :], color="black", lw=1.2, label="history")
        if actuals is not None and s.id in actuals:
            y = np.asarray(actuals[s.id])[:h]
            ax.plot(ahead[: len(y)], y, color="black", lw=1.2, ls="--", label="actual")
        q = forecast["quantiles"]
        if 0.1 in q and 0.9 in q:
            ax.fill_between(ahead, q[0.1][i], q[0.9][i], color="tab:blue", alpha=0.25, label="80 % interval")
        ax.plot(ahead, forecast["median"][i], color="tab:blue", lw=1.5, label="median forecast")
        ticks = np.linspace(past[0], ahead[-1], 5).round().astype(int)
        ax.set_xticks(ticks, [axis.format(s.start + axis.step * int(t)) for t in ticks], fontsize=8)
        ax.set_title(f"{s.id}", fontsize=9, loc="left")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(plt, fig, path)
    return True


def plot_alignments(examples: list[tuple[list[str], list[str], Tensor]], path: Path, title: str = "") -> bool:
    """Attention heatmaps, one panel per (source tokens, output tokens, weights (T, S)); False without matplotlib."""
    plt = _pyplot("attention plot")
    if plt is None or not examples:
        return False
    fig, axes = plt.subplots(1, len(examples), figsize=(3.2 * len(examples), 3.4), squeeze=False)
    for ax, (source, output, weights) in zip(axes[0], examples, strict=True):
        ax.imshow(weights.detach().float().cpu().numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(source)), source, fontsize=7)
        ax.set_yticks(range(len(output)), output, fontsize=7)
        ax.set_xlabel("source")
        ax.set_ylabel("output")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(plt, fig, path)
    return True
