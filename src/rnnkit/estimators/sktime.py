"""sktime adapters: ``RnnkitClassifier`` (a ``BaseClassifier``) and ``RnnkitForecaster`` (a ``BaseForecaster``).

    from rnnkit.estimators.sktime import RnnkitClassifier, RnnkitForecaster
    RnnkitClassifier(max_steps=200).fit(X_numpy3d, y).predict(X)          # X (N, C, T), sktime's layout
    RnnkitForecaster(max_steps=200).fit(y_series, fh=[1, 2, 3]).predict()

Each takes the keywords of the rnnkit estimator it wraps (``rnnkit.Classifier``, ``rnnkit.Forecaster``) and hands
the work to it: sktime's (N, C, T) panels become (N, T, C) sequences; a forecaster's series is written on an
integer time axis (its position), so any sktime index (periods, dates, integers) maps back exactly. The forecaster's
``horizon`` is the largest step of ``fh`` asked for in ``fit``. This module imports sktime: it is for sktime users.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sktime.classification.base import BaseClassifier
from sktime.forecasting.base import BaseForecaster

from rnnkit.estimators.base import Estimator
from rnnkit.estimators.classifier import Classifier
from rnnkit.estimators.forecaster import Forecaster

__all__ = ["RnnkitClassifier", "RnnkitForecaster"]

TINY = {"hidden_size": 4, "max_steps": 3, "eval_every": 1000, "checkpoint_every": 0, "verbose": 0}


def _adapter_init(wrapped: type[Estimator], base: type, skip: tuple[str, ...] = ()):
    """An ``__init__`` taking the keywords of ``wrapped`` (its generated signature), as skbase's BaseObject wants:
    each stored under its own name, then the base class's ``__init__``."""
    params = [p for name, p in inspect.signature(wrapped.__init__).parameters.items() if name not in skip]
    defaults = {p.name: p.default for p in params if p.name != "self"}

    def init(self, **kwargs):
        unknown = sorted(set(kwargs) - set(defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {unknown[0]!r}")
        for name, default in defaults.items():
            setattr(self, name, kwargs.get(name, default))
        base.__init__(self)

    init.__signature__ = inspect.Signature(params)
    init.__name__ = "__init__"
    return init


class RnnkitClassifier(BaseClassifier):
    """sktime's classifier interface over ``rnnkit.Classifier`` (every keyword of it).

    Examples
    --------
    >>> import numpy as np
    >>> from rnnkit.estimators.sktime import RnnkitClassifier
    >>> X = np.random.default_rng(0).normal(size=(20, 1, 12))  # (N, C, T), sktime's numpy3D
    >>> y = np.array([0, 1] * 10)
    >>> RnnkitClassifier(hidden_size=4, max_steps=3, verbose=0).fit(X, y).predict(X).shape
    (20,)
    """

    _tags: ClassVar[dict[str, Any]] = {
        "X_inner_mtype": "numpy3D",
        "y_inner_mtype": "numpy1D",
        "capability:multivariate": True,
        "capability:predict_proba": True,
        "python_dependencies": "torch",
        "authors": "rnnkit",
        "maintainers": "rnnkit",
    }

    def _fit(self, X, y):
        params = {name: getattr(self, name) for name in self._wrapped_params()}
        self.classifier_ = Classifier(**params).fit(np.swapaxes(X, 1, 2), y)  # (N, C, T) -> (N, T, C)
        return self

    def _predict_proba(self, X):
        return self.classifier_.predict_proba(np.swapaxes(X, 1, 2))

    def _predict(self, X):
        return self.classifier_.predict(np.swapaxes(X, 1, 2))

    @classmethod
    def _wrapped_params(cls) -> list[str]:
        return [n for n in inspect.signature(cls.__init__).parameters if n != "self"]

    @classmethod
    def get_test_params(cls, parameter_set: str = "default"):
        return [TINY | {"head_size": 0, "embedding_size": 4}, TINY | {"mode": "lstm", "bidirectional": False}]


RnnkitClassifier.__init__ = _adapter_init(Classifier, BaseClassifier)


class RnnkitForecaster(BaseForecaster):
    """sktime's forecaster interface over ``rnnkit.Forecaster`` (every keyword of it but ``horizon``, which is
    the largest step of the ``fh`` given to ``fit``): one univariate series, quantile forecasts.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from rnnkit.estimators.sktime import RnnkitForecaster
    >>> y = pd.Series(np.sin(np.arange(40) / 3.0))
    >>> f = RnnkitForecaster(hidden_size=4, max_steps=3, verbose=0).fit(y, fh=[1, 2, 3])
    >>> f.predict().index.tolist()
    [40, 41, 42]
    """

    _tags: ClassVar[dict[str, Any]] = {
        "y_inner_mtype": "pd.Series",
        "X_inner_mtype": "pd.DataFrame",
        "capability:exogenous": False,
        "capability:insample": False,
        "capability:pred_int": True,
        "capability:pred_int:insample": False,
        "requires-fh-in-fit": True,
        "python_dependencies": ["torch", "pandas"],
        "authors": "rnnkit",
        "maintainers": "rnnkit",
    }

    def _fit(self, y, X=None, fh=None):
        steps = fh.to_relative(self.cutoff)
        horizon = int(max(steps))
        params = {name: getattr(self, name) for name in self._wrapped_params()}
        series = pd.Series(y.to_numpy(dtype=np.float64), index=pd.RangeIndex(len(y)), name="y")  # time = position
        self.forecaster_ = Forecaster(horizon=horizon, **params).fit(series)
        self._n = len(y)
        return self

    def _forecast(self, fh, levels):
        steps = np.asarray(fh.to_relative(self.cutoff), dtype=np.int64)
        horizon = int(steps.max())
        quantiles = ",".join(f"{q:g}" for q in levels) if levels else None
        frame = self.forecaster_.predict(horizon=horizon, quantiles=quantiles)
        return frame.set_index(frame["time"] - (self._n - 1)).loc[steps], fh.to_absolute_index(self.cutoff)

    def _predict(self, fh, X=None):
        frame, index = self._forecast(fh, None)
        return pd.Series(frame["forecast"].to_numpy(), index=index, name=self._y.name)

    def _predict_quantiles(self, fh, X=None, alpha=None):
        levels = sorted(set(alpha))
        frame, index = self._forecast(fh, levels)
        name = self._y.name if self._y.name is not None else 0
        columns = pd.MultiIndex.from_product([[name], alpha])
        values = np.column_stack([frame[f"q{a:g}"].to_numpy() for a in alpha])
        return pd.DataFrame(values, index=index, columns=columns)

    @classmethod
    def _wrapped_params(cls) -> list[str]:
        return [n for n in inspect.signature(cls.__init__).parameters if n != "self"]

    @classmethod
    def get_test_params(cls, parameter_set: str = "default"):
        small = TINY | {"num_layers": 1, "num_samples": 8, "eval_samples": 4, "validation": "none"}
        return [small, small | {"head": "gaussian", "mode": "gru"}]


RnnkitForecaster.__init__ = _adapter_init(Forecaster, BaseForecaster, skip=("horizon",))
