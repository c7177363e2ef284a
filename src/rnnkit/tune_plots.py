"""The pictures of a study (``rnnkit tune``): the optimisation history and the settings' importances (matplotlib Agg).

The history plots each finished trial's value by trial number (a pruned trial at the last value it reported) and
the best so far as a step line. The importances are Optuna's (``optuna.importance.get_param_importances`` with
its default evaluator: PED-ANOVA in Optuna 5, fANOVA before; normalised to sum to 1), which need at least two
completed trials whose settings differ; with a handful of trials they are rough.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

from rnnkit.metrics import _pyplot, _save

__all__ = ["plot_history", "plot_importance"]

log = logging.getLogger(__name__)


def plot_history(trials: list[Any], path: Path, primary: str, higher_is_better: bool) -> bool:
    """history.png: each trial's value (complete: filled; pruned: hollow, at its last report) and the best so far.
    False when no trial has a value yet, or without matplotlib."""
    complete = [(t.number, t.value) for t in trials if t.state.name == "COMPLETE" and _finite(t.value)]
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in trials
              if t.state.name == "PRUNED" and t.intermediate_values]  # fmt: skip
    if not complete and not pruned:
        return False
    plt = _pyplot("optimisation-history plot")
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    if complete:
        ax.plot(*zip(*complete, strict=True), "o", label="complete")
        best, running = [], None
        for number, value in complete:
            better = running is None or (value > running if higher_is_better else value < running)
            running = value if better else running
            best.append((number, running))
        ax.step(*zip(*best, strict=True), where="post", label="best so far")
    if pruned:
        ax.plot(*zip(*pruned, strict=True), "o", mfc="none", color="grey", label="pruned (last report)")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {primary} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(plt, fig, path)
    return True


def plot_importance(study: Any, path: Path) -> str | None:
    """importance.png: a bar per setting; None when written, else why not (too few trials, a constant value)."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return f"it needs 2 completed trials, the study has {len(complete)}"
    try:
        with warnings.catch_warnings():  # "some regimes have less than 2 trials": a small study's importances are rough
            warnings.simplefilter("ignore", UserWarning)
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ImportError, ZeroDivisionError) as e:  # too few distinct settings or values
        log.info("no parameter importances: %s", e)
        return f"Optuna could not rank the settings ({e})"
    if not importances or not all(_finite(v) for v in importances.values()):
        return "Optuna could not rank the settings (the completed trials are too alike)"
    plt = _pyplot("importance plot")
    if plt is None:
        return "matplotlib is not installed"
    names = list(importances)[::-1]  # the most important at the top
    fig, ax = plt.subplots(figsize=(7, 1 + 0.4 * len(names)))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel(f"importance (Optuna's default evaluator, summing to 1; {len(complete)} completed trials)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    _save(plt, fig, path)
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
