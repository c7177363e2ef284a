"""``rnnkit.Classifier``: ``rnnkit train classify`` as a scikit-learn classifier over sequences in memory.

``X`` is one of:

- a list of strings (text, cut into characters or words by ``tokens``);
- a list of arrays (T_i,) or (T_i, D): sequences of any lengths, D channels each;
- an array (N, T) (N univariate sequences of length T: scikit-learn's 2-D ``X``) or (N, T, D).

``fit`` writes the examples into the run folder in the task's own formats (``RUN/data/train.csv`` with a
``text,label`` header; ``RUN/data/train.npz`` with X padded to (N, T_max, D), ``lengths`` and ``y`` as strings)
and trains on them. ``classes_`` is ``np.unique(y)`` with y's own type; the run's label names are the classes as
strings (their indices when two classes would print alike), and ``estimator.json`` maps them back.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rnnkit.estimators.base import Estimator
from rnnkit.io import atomic_write
from rnnkit.tasks.classification import ClassifyTask

__all__ = ["Classifier", "as_sequences"]


def _float_array(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if np.iscomplexobj(a):
        raise ValueError(f"Complex data not supported: {name} must hold real numbers, got dtype {a.dtype}")
    if a.dtype.kind not in "biuf":
        a = a.astype(np.float64)  # an object array of numbers; a TypeError names what float() could not read
    a = np.asarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinity (inf); impute or drop the missing values first")
    return a


def as_sequences(X: Any, name: str = "X") -> tuple[str, list]:
    """("text", [str, ...]) or ("series", [(T_i, D) float32 arrays]) for any ``X`` the estimators take.

    ValueError or TypeError naming ``name`` for an empty ``X``, a 1-D numeric array (a single sequence: reshape it
    to (1, T)), NaN or infinity, complex numbers, sparse matrices, or sequences with different numbers of channels.
    """
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{name}: sparse input is not supported (sequences are dense); pass X.toarray()")
    if isinstance(X, str):
        raise TypeError(f"{name} must be a list of texts or sequences, got one string; wrap it: [{name}]")
    if isinstance(X, list | tuple) and X and all(isinstance(x, str) for x in X):
        return "text", _texts(list(X), name)
    if not isinstance(X, list | tuple):
        a = np.asarray(X)
        if a.dtype.kind in "US" or (a.dtype == object and a.size and all(isinstance(x, str) for x in a.ravel())):
            if a.ndim != 1:
                raise ValueError(f"{name}: texts must be a 1-D list or array, got shape {a.shape}")
            return "text", _texts([str(x) for x in a], name)
        a = _float_array(a, name)
        if a.ndim == 1:
            raise ValueError(
                f"Expected 2D array, got 1D array instead: {name} of shape {a.shape}. Reshape your data with "
                "X.reshape(1, -1) for a single sequence, or X.reshape(-1, 1) for sequences of one step."
            )
        if a.ndim not in (2, 3):
            raise ValueError(f"{name} must be (N, T) or (N, T, D), got shape {a.shape}")
        if a.shape[0] == 0:
            raise ValueError(f"Found array with 0 sample(s) (shape={a.shape}) while a minimum of 1 is required.")
        if a.shape[1] == 0 or (a.ndim == 3 and a.shape[2] == 0):
            raise ValueError(
                f"Found array with 0 feature(s) (shape={a.shape[:2]}) while a minimum of 1 is required "
                "(sequences of 0 steps or 0 channels)."
            )
        return "series", list(a if a.ndim == 3 else a[:, :, None])
    if not X:
        raise ValueError(f"Found array with 0 sample(s) ({name} is empty) while a minimum of 1 is required.")
    series = []
    for i, x in enumerate(X):
        a = _float_array(x, f"{name}[{i}]")
        if a.ndim == 1:
            a = a[:, None]  # (T,) -> (T, 1)
        if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"{name}[{i}] must be a non-empty (T,) or (T, D) sequence, got shape {a.shape}")
        series.append(a)
    channels = sorted({a.shape[1] for a in series})
    if len(channels) > 1:
        raise ValueError(f"{name}: every sequence needs the same number of channels D, got {channels}")
    return "series", series


def _texts(texts: list[str], name: str) -> list[str]:
    for i, t in enumerate(texts):
        if not t.strip():
            raise ValueError(f"{name}[{i}] is an empty text")
    return texts


def _labels(y: Any, n: int, name: str = "y") -> np.ndarray:
    if y is None:
        raise ValueError("Classifier requires y to be passed, but the target y is None")
    a = np.asarray(y)
    if a.ndim == 2 and a.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected. Please change the shape of y to (n_samples,), "
            "for example using ravel().", _conversion_warning(), stacklevel=3,
        )  # fmt: skip
        a = a.ravel()
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per sequence), got shape {a.shape}")
    if len(a) != n:
        raise ValueError(f"X and {name} must have the same length: found {n} sequences and {len(a)} labels")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError(f"Input {name} contains NaN or infinity.")
        if not np.all(a == np.round(a)):
            raise ValueError(f"Unknown label type: continuous. {name} must hold class labels, not real numbers")
    if a.dtype.kind == "c":
        raise ValueError(f"Unknown label type: complex. {name} must hold class labels")
    return a


def _conversion_warning() -> type[Warning]:
    try:  # scikit-learn's own category, when it is there (its checks look for it)
        from sklearn.exceptions import DataConversionWarning

        return DataConversionWarning
    except ImportError:
        return UserWarning


def _label_names(classes: np.ndarray) -> list[str]:
    """The run's names of ``classes``: as strings when those are distinct and survive the files, else indices."""
    names = [str(c.item() if hasattr(c, "item") else c) for c in classes]
    fine = len(set(names)) == len(names) and all(s and s == s.strip() and not set(s) & set('\t\r\n,"') for s in names)
    return names if fine else [str(i) for i in range(len(classes))]


def _write_examples(kind: str, inputs: list, labels: list[str], path: Path) -> str:
    """The examples in the task's format (see the module docstring); returns the file's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        path = path.with_suffix(".csv")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["text", "label"])  # always a header: a first example "x,y" is then never taken for one
        writer.writerows(zip(inputs, labels, strict=True))
        atomic_write(path, buffer.getvalue().encode("utf-8"))
    else:
        path = path.with_suffix(".npz")
        lengths = np.array([len(x) for x in inputs], np.int64)
        X = np.zeros((len(inputs), int(lengths.max()), inputs[0].shape[1]), np.float32)  # (N, T_max, D)
        for i, x in enumerate(inputs):
            X[i, : len(x)] = x
        buffer = io.BytesIO()
        np.savez(buffer, X=X, y=np.array(labels, dtype=str), lengths=lengths)
        atomic_write(path, buffer.getvalue())
    return str(path.resolve())


class Classifier(Estimator):
    """A sequence classifier (``rnnkit train classify``) with scikit-learn's interface.

        clf = rnnkit.Classifier(hidden_size=64, max_steps=300).fit(X, y)
        clf.predict(X); clf.predict_proba(X); clf.classes_; clf.score(X, y)

    ``X``: texts, sequences of any lengths, or an (N, T) / (N, T, D) array (``rnnkit.estimators.as_sequences``).
    The keywords are every flag of ``rnnkit train classify`` (``help(rnnkit.Classifier.__init__)`` lists them).
    """

    Task = ClassifyTask

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags

        tags = super().__sklearn_tags__()
        tags.estimator_type = "classifier"
        tags.classifier_tags = ClassifierTags()
        return tags

    def fit(self, X, y, *, validation_data=None, callbacks=None, out=None, resume: bool = False) -> Classifier:
        """Train on sequences ``X`` with labels ``y``; returns the estimator.

        ``validation_data``: (X_val, y_val) to validate on (else a stratified ``val_fraction`` of X is held out);
        ``callbacks``: ``rnnkit.callbacks.Callback`` objects for this fit; ``out``: the run folder (default a
        temporary one); ``resume``: continue the run in ``out`` from its last.pt.
        """
        kind, inputs = as_sequences(X)
        y = _labels(y, len(inputs))
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got 1 class in y: {classes.tolist()}")
        names = _label_names(classes)
        name_of = dict(zip(classes.tolist(), names, strict=True))
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
                raise TypeError(f"validation_data must be a pair (X_val, y_val), got {type(validation_data).__name__}")
            val_kind, val_inputs = as_sequences(validation_data[0], "X_val")
            y_val = _labels(validation_data[1], len(val_inputs), "y_val")
            if val_kind != kind:
                raise ValueError(f"X_val holds {val_kind}, but X holds {kind}")
            unseen = sorted({str(v) for v in y_val.tolist()} - {str(c) for c in classes.tolist()})
            if unseen:
                raise ValueError(f"y_val holds labels that y has not: {unseen[:5]}")
            val = (val_inputs, [name_of[v] for v in y_val.tolist()])

        def write(folder: Path) -> dict[str, str | None]:
            paths = {"data": _write_examples(kind, inputs, [name_of[v] for v in y.tolist()], folder / "train")}
            paths["val"] = _write_examples(kind, *val, folder / "val") if val is not None else None
            return paths

        extra = {"classes": classes.tolist(), "dtype": classes.dtype.str, "names": names}
        return self._fit_run(write, out=out, resume=resume, callbacks=callbacks, extra=extra)

    def _adopt(self, run_dir: Path, owned: bool) -> None:
        super()._adopt(run_dir, owned)
        extra = self._extra
        if "classes" in extra:
            classes = np.array(extra["classes"], dtype=np.dtype(extra["dtype"]) if extra["dtype"] != "|O" else object)
            names = list(extra["names"])
        else:  # a run the CLI trained: its label names are the classes
            classes, names = np.array(self.task_.labels), list(self.task_.labels)
        self.classes_ = classes
        self._columns = [self.task_.labels.index(n) for n in names]  # the run's column of each class
        self.n_classes_ = len(classes)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (N, n_classes), columns in the order of ``classes_``."""
        self._check_fitted()
        return self._proba(as_sequences(X)[1])

    def _proba(self, inputs: list) -> np.ndarray:
        _, probs = self.task_.predict(self.model_, inputs)  # (N, C), the run's label order
        return probs.numpy().astype(np.float64)[:, self._columns]

    def predict(self, X) -> np.ndarray:
        """The most probable class of each sequence (values of ``classes_``)."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    def score(self, X, y, sample_weight=None) -> float:
        """Accuracy: the share of sequences whose predicted class is ``y`` (weighted by ``sample_weight``)."""
        self._check_fitted()
        inputs = as_sequences(X)[1]
        y = _labels(y, len(inputs))
        right = (self.classes_[self._proba(inputs).argmax(axis=1)] == y).astype(np.float64)
        return float(np.average(right, weights=sample_weight))
