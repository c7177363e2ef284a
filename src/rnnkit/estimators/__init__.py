"""rnnkit's tasks as estimators over data in memory, in scikit-learn's contract (``rnnkit.estimators.base``).

    clf = rnnkit.Classifier(hidden_size=64, max_steps=300).fit(X, y)     # texts, sequences, (N, T[, D]) arrays
    fc = rnnkit.Forecaster(horizon=12, max_steps=300).fit(df)            # long DataFrame id,time,value or a Series
    s2s = rnnkit.Seq2Seq(max_steps=300).fit(sources, targets)
    lm = rnnkit.LanguageModel(max_steps=300).fit(text)
    est.save("runs/x"); rnnkit.load("runs/x")                             # a run folder, as the CLI writes

Each ``fit`` runs the task through ``rnnkit.train.train`` (the CLI's trainer), into a run folder.
"""

from __future__ import annotations

from pathlib import Path

from rnnkit.checkpoint import load_checkpoint
from rnnkit.errors import CheckpointError
from rnnkit.estimators.base import Estimator, NotFittedError, Progress
from rnnkit.estimators.classifier import Classifier, as_sequences
from rnnkit.estimators.forecaster import Forecaster
from rnnkit.estimators.language_model import LanguageModel
from rnnkit.estimators.seq2seq import Seq2Seq

__all__ = [
    "Classifier",
    "Estimator",
    "Forecaster",
    "LanguageModel",
    "NotFittedError",
    "Progress",
    "Seq2Seq",
    "as_sequences",
    "load",
]

ESTIMATORS: dict[str, type[Estimator]] = {
    cls.Task.name: cls for cls in (Classifier, Forecaster, LanguageModel, Seq2Seq)
}


def load(path) -> Estimator:
    """The fitted estimator of the run folder ``path`` (one ``save``, ``fit(out=...)`` or ``rnnkit train`` wrote):
    a ``Classifier`` for a classify run, a ``Forecaster`` for a forecast run, and so on."""
    path = Path(path)
    which = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
    if not which.is_file():
        raise CheckpointError(f"{path}: not an rnnkit run folder (no best.pt or last.pt in it)")
    kind = load_checkpoint(which).get("kind")
    if kind not in ESTIMATORS:
        raise CheckpointError(f"{path}: a {kind!r} run, which has no estimator (known: {', '.join(ESTIMATORS)})")
    return ESTIMATORS[kind].from_run(path)
