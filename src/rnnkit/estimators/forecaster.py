"""``rnnkit.Forecaster``: ``rnnkit train forecast`` (a global DeepAR-style forecaster) over pandas data in memory.

    fc = rnnkit.Forecaster(horizon=12, max_steps=300).fit(df)   # long DataFrame id,time,value[,covariates...]
    fc.predict()                                               # DataFrame id, time, forecast, q0.1, q0.5, q0.9

``fit`` also takes a ``pandas.Series`` (one series: its index is the time, its name the id). It writes the history
into the run folder as the task's long CSV (``RUN/data/train.csv``: ``id,time,value[,covariates]``; datetimes as
ISO dates) and trains on it. Validation is the task's own: each series' last ``horizon`` held out
(``validation="last"``), so ``fit`` takes no separate validation data. ``predict`` forecasts the steps after the
history it was fit on, or after another history (the model is global: it forecasts series it never saw).
pandas is needed here only (``pip install rnnkit[sklearn]`` brings it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rnnkit.estimators.base import Estimator
from rnnkit.io import atomic_write
from rnnkit.tasks.forecasting import ForecastTask

__all__ = ["Forecaster"]

COLUMNS = ("id", "time", "value")


def _pandas():
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - pandas is in the sklearn extra
        raise ImportError("rnnkit.Forecaster needs pandas: pip install 'rnnkit[sklearn]'") from e
    return pd


def _long_frame(data: Any, name: str, *, values: bool = True):
    """``data`` as a long DataFrame id,time,value[,covariates] (a Series: one series, its index the time)."""
    pd = _pandas()
    if isinstance(data, pd.Series):
        sid = data.name if data.name is not None else "series"
        data = pd.DataFrame({"id": sid, "time": data.index, "value": data.to_numpy()})
    if not isinstance(data, pd.DataFrame):
        raise TypeError(
            f"{name} must be a pandas DataFrame (id, time, value columns) or Series, got {type(data).__name__}"
        )
    missing = [c for c in COLUMNS if c not in data.columns]
    if missing:
        raise ValueError(f"{name} must have columns id, time, value (and covariates), got {list(data.columns)}")
    if len(data) == 0:
        raise ValueError(f"{name} is empty")
    if values and not np.issubdtype(data["value"].dtype, np.number):
        raise ValueError(f"{name}: the value column must be numeric, got dtype {data['value'].dtype}")
    return data[[*COLUMNS, *[c for c in data.columns if c not in COLUMNS]]]


def _time_text(times) -> tuple[list[str], str]:
    """Times as the task's CSV writes them (integers, ISO dates or datetimes), and their kind ("int" or "date")."""
    pd = _pandas()
    if pd.api.types.is_datetime64_any_dtype(times):
        t = pd.DatetimeIndex(times)
        if t.tz is not None:
            t = t.tz_convert(None)
        fmt = "%Y-%m-%d" if (t == t.normalize()).all() else "%Y-%m-%dT%H:%M:%S"
        return list(t.strftime(fmt)), "date"
    if pd.api.types.is_integer_dtype(times):
        return [str(int(v)) for v in times], "int"
    raise ValueError(f"time must be integers or datetimes, got dtype {times.dtype}")


def _write_csv(frame, path: Path) -> tuple[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = frame.copy()
    out["id"] = out["id"].astype(str)
    if out["id"].str.contains(r"[,\"\r\n]").any():
        raise ValueError("series ids must not hold commas, quotes or line breaks")
    out["time"], kind = _time_text(frame["time"])
    atomic_write(path, out.to_csv(index=False, na_rep="").encode("utf-8"))
    return str(path.resolve()), kind


class Forecaster(Estimator):
    """A global probabilistic forecaster (``rnnkit train forecast``): fit on a history, forecast its future.

    ``horizon`` is required; the other keywords are every flag of ``rnnkit train forecast``
    (``help(rnnkit.Forecaster.__init__)`` lists them). ``wide`` is left out: ``fit`` always writes a long table.
    """

    Task = ForecastTask
    excluded = ("wide",)

    def fit(self, y, *, callbacks=None, out=None, resume: bool = False) -> Forecaster:
        """Train on the history ``y`` (long DataFrame ``id,time,value[,covariates]``, or a Series); returns self."""
        frame = _long_frame(y, "y")
        ids = frame["id"].drop_duplicates().tolist()

        def write(folder: Path) -> dict[str, str | None]:
            return {"data": _write_csv(frame, folder / "train.csv")[0]}

        extra = {"ids": [v.item() if hasattr(v, "item") else v for v in ids]}
        self._fit_run(write, out=out, resume=resume, callbacks=callbacks, extra=extra)
        return self

    def _adopt(self, run_dir: Path, owned: bool) -> None:
        super()._adopt(run_dir, owned)
        self.horizon_ = self.task_.horizon
        self.history_path_ = run_dir / "data" / "train.csv"

    def predict(self, y=None, *, horizon: int | None = None, future=None, quantiles: str | None = None,
                num_samples: int | None = None, seed: int = 0):  # fmt: skip
        """Forecasts of the ``horizon`` (default: the run's) steps after each series of ``y`` (default: the history
        it was fit on), as a DataFrame ``id, time, forecast, q...`` (the forecast is the median; the quantile
        columns are the run's levels, or ``quantiles`` like "0.05,0.5,0.95"). ``future``: the covariates over
        the forecast steps (a long DataFrame like the history, value may be empty) when the run has covariates."""
        pd = _pandas()
        self._check_fitted()

        with tempfile.TemporaryDirectory(prefix="rnnkit-forecast-") as tmp:
            if y is None:
                history, kind = str(self.history_path_), self._history_kind()
            else:
                history, kind = _write_csv(_long_frame(y, "y"), Path(tmp) / "history.csv")
            future_path = None
            if future is not None:
                future_path, _ = _write_csv(_long_frame(future, "future", values=False), Path(tmp) / "future.csv")
            table = self.task_.forecast_rows(self.model_, data=history, horizon=horizon, future=future_path,
                                             quantiles=quantiles, num_samples=num_samples, seed=seed)  # fmt: skip
            rows = list(table.rows)
        frame = pd.DataFrame(rows, columns=list(table.header))
        for column in table.header[2:]:
            frame[column] = frame[column].astype(float)
        frame["time"] = frame["time"].astype(int) if kind == "int" else pd.to_datetime(frame["time"])
        ids = {str(v): v for v in self._extra.get("ids", [])}
        frame["id"] = [ids.get(v, v) for v in frame["id"]]
        return frame

    def _history_kind(self) -> str:
        return "int" if self.task_.axis.kind == "int" else "date"
