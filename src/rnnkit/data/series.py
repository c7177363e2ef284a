"""Time series from CSV for forecasting: long (``id,time,value[,covariates...]``) or wide (``time,A,B,...``) files.

``time`` is an integer index or an ISO date / datetime (``2020-01-31``, ``2020-01``, ``2020-01-31T06:00``). Each
time becomes an integer *ordinal* on a regular grid: the integer itself, ``12 * year + month - 1`` for dates a
whole number of months apart, seconds since 1970 otherwise. The grid step (the frequency) is inferred from all
series together; arithmetic on times (the next H times of a series, gaps, the season phase) is arithmetic on
ordinals, and ``TimeAxis.format`` writes an ordinal back in the file's own style.

Checked: every series sorted by time, no duplicate times, one grid step, every value and covariate within float32's
range (the model computes in float32: 1e300 would be inf, and a nonzero 1e-300 would flush to 0).
A missing time (a gap) or a missing value
(an empty cell, ``nan``, ``NA``) is an error naming the series and the time unless ``fill`` is given: ``ffill``
(the last value before; a leading gap takes the first value), ``interpolate`` (linear between the neighbours,
constant beyond the ends) or ``zero``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import pairwise

import numpy as np

from rnnkit.data.text import read_text
from rnnkit.datasets import resolve
from rnnkit.errors import DataError

__all__ = ["FILLS", "Series", "SeriesSet", "TimeAxis", "check_continues", "read_series"]

FILLS = ("ffill", "interpolate", "zero")
MISSING = {"", "nan", "NaN", "NAN", "NA", "na", "N/A", "null", "None"}
EPOCH = datetime(1970, 1, 1)
DAY = 86_400
_YEAR_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


@dataclass(frozen=True)
class TimeAxis:
    """A regular time grid: ``kind`` "int", "month" (ordinal 12 * year + month - 1) or "seconds" (since 1970),
    ``step`` in ordinal units, and how to write times back (``style`` "int", "year-month", "date", "datetime";
    ``day`` for month grids: the day of the month, 0 for month ends; ``clock`` seconds after midnight)."""

    kind: str
    step: int
    style: str = "int"
    day: int = 1
    clock: int = 0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "step": self.step, "style": self.style, "day": self.day, "clock": self.clock}

    @classmethod
    def from_dict(cls, d: dict) -> TimeAxis:
        return cls(str(d["kind"]), int(d["step"]), str(d["style"]), int(d["day"]), int(d["clock"]))

    @property
    def name(self) -> str:
        """The frequency in words: "monthly", "daily", "every 2 steps", ..."""
        if self.kind == "int":
            return "integer steps" if self.step == 1 else f"every {self.step} steps"
        if self.kind == "month":
            return {1: "monthly", 3: "quarterly", 6: "half-yearly", 12: "yearly"}.get(
                self.step, f"every {self.step} months"
            )
        named = {60: "minutely", 3600: "hourly", DAY: "daily", 7 * DAY: "weekly"}
        return named.get(self.step, f"every {self.step} s")

    def season_length(self) -> int:
        """The usual seasonal period of this frequency (12 for monthly, 7 for daily, 24 for hourly, ...); 1 for
        integer times, whose season only the user knows."""
        if self.kind == "month":
            return 12 // self.step if 12 % self.step == 0 else 1
        if self.kind == "seconds":
            if self.step < DAY and DAY % self.step == 0:
                return DAY // self.step
            return {DAY: 7, 7 * DAY: 52}.get(self.step, 1)
        return 1

    def calendar_phases(self, ordinals: np.ndarray) -> np.ndarray:
        """Calendar phases in [0, 1) of each time, (N, F): month of year (monthly), quarter (quarterly), hour of
        day and day of week (sub-daily), day of week and of year (daily), week of year (weekly); F = 0 otherwise."""
        o = np.asarray(ordinals, np.int64)
        phases = []
        if self.kind == "month":
            if self.step == 1:
                phases.append((o % 12) / 12)
            elif self.step == 3:
                phases.append(((o % 12) // 3) / 4)
        elif self.kind == "seconds":
            days = o // DAY
            if self.step < DAY:
                phases.append((o % DAY) / DAY)
            if self.step <= DAY:
                phases.append(((days + 3) % 7) / 7)  # 1970-01-01 was a Thursday: Monday = 0
            if DAY <= self.step <= 7 * DAY:
                d = o.astype("datetime64[s]").astype("datetime64[D]")
                phases.append((d - d.astype("datetime64[Y]")).astype(np.int64) / 366)
        return np.stack(phases, axis=1) if phases else np.zeros((len(o), 0))

    def format(self, ordinal: int) -> str:
        """An ordinal written in the file's style."""
        o = int(ordinal)
        if self.kind == "int":
            return str(o)
        if self.kind == "month":
            year, month = divmod(o, 12)
            if self.style == "year-month":
                return f"{year:04d}-{month + 1:02d}"
            if self.day == 0:
                nxt = date(year + (month + 1) // 12, (month + 1) % 12 + 1, 1)
                d = nxt - timedelta(days=1)
            else:
                d = date(year, month + 1, self.day)
            if self.style == "date":
                return d.isoformat()
            return (datetime(d.year, d.month, d.day) + timedelta(seconds=self.clock)).isoformat()
        t = EPOCH + timedelta(seconds=o)
        return t.date().isoformat() if self.style == "date" else t.isoformat()


@dataclass
class Series:
    """One series: its id, the ordinal of its first time, values (T,) and covariates (T, C) on the axis grid."""

    id: str
    start: int
    values: np.ndarray
    covariates: np.ndarray

    def __len__(self) -> int:
        return len(self.values)

    def end(self, step: int) -> int:
        """The ordinal of the last time."""
        return self.start + (len(self.values) - 1) * step


@dataclass
class SeriesSet:
    """The series of one file, on one time axis, with the names of their covariate columns."""

    series: list[Series]
    axis: TimeAxis
    covariates: list[str]
    source: str
    filled: int = 0  # values inserted or replaced by ``fill``

    def __len__(self) -> int:
        return len(self.series)

    def by_id(self) -> dict[str, Series]:
        return {s.id: s for s in self.series}


# --- parsing ---------------------------------------------------------------------------------------------------


def _parse_times(raw: list[str], source: str, lines: list[int]) -> tuple[list[int], str, list]:
    """Strings -> (ordinals before the axis is known, style, parsed values); integers, or dates/datetimes."""
    try:
        return [int(t) for t in raw], "int", []
    except ValueError:
        pass
    parsed, styles = [], set()
    for text, line in zip(raw, lines, strict=True):
        t = text.strip()
        m = _YEAR_MONTH.match(t)
        try:
            if m:
                value, style = datetime(int(m.group(1)), int(m.group(2)), 1), "year-month"
            elif len(t) == 10:
                value, style = datetime.combine(date.fromisoformat(t), datetime.min.time()), "date"
            else:
                value, style = datetime.fromisoformat(t), "datetime"
        except ValueError:
            raise DataError(
                f"{source}, line {line}: time {text!r} is neither an integer nor an ISO date/datetime (2020-01-31, "
                "2020-01, 2020-01-31T06:00)"
            ) from None
        if value.tzinfo is not None:
            raise DataError(f"{source}, line {line}: time {text!r} has a time zone; give times without one")
        parsed.append(value)
        styles.add(style)
    if len(styles) > 1:
        raise DataError(f"{source}: the time column mixes {' and '.join(sorted(styles))} values")
    return [], styles.pop(), parsed


def _axis_for(parsed: list[datetime], style: str, groups: list[list[int]]) -> tuple[TimeAxis, list[int]]:
    """The grid of date/datetime times: whole months apart (same day of month, or all month ends, at one clock
    time) -> a month grid; otherwise seconds. ``groups`` are the row indices of each series, in time order."""
    month_ends = all((t + timedelta(days=1)).day == 1 for t in parsed)
    days = {t.day for t in parsed}
    clocks = {t.hour * 3600 + t.minute * 60 + t.second for t in parsed}
    same_day = len(days) == 1 and next(iter(days)) <= 28
    if (same_day or month_ends) and len(clocks) == 1 and not any(t.microsecond for t in parsed):
        months = [12 * t.year + t.month - 1 for t in parsed]
        if _grid_step(months, groups) > 0:
            day = 0 if month_ends and not same_day else next(iter(days))
            axis = TimeAxis("month", _grid_step(months, groups), style, day, next(iter(clocks)))
            return axis, months
    seconds = [int((t - EPOCH).total_seconds()) for t in parsed]
    return TimeAxis("seconds", max(_grid_step(seconds, groups), 1), style), seconds


def _grid_step(ordinals: list[int], groups: list[list[int]]) -> int:
    """The greatest common divisor of the positive time differences within the series (0 if there are none)."""
    step = 0
    for rows in groups:
        for a, b in pairwise(rows):
            step = math.gcd(step, ordinals[b] - ordinals[a])
    return step


def _number(text: str, source: str, line: int, column: str) -> float:
    t = text.strip()
    if t in MISSING:
        return math.nan
    try:
        value = float(t)
    except ValueError:
        raise DataError(f"{source}, line {line}: {column} {text!r} is not a number") from None
    if math.isinf(value):
        raise DataError(f"{source}, line {line}: {column} is {text!r}; values must be finite")
    if abs(value) > FLOAT32_MAX:  # finite here, inf once the model reads it in float32
        raise DataError(f"{source}, line {line}: {column} {text.strip()!r} is outside float32's range (+/-3.4e38); "
                        "rescale the series")  # fmt: skip
    if 0 < abs(value) < FLOAT32_TINY:  # would flush to 0 in float32: a series of such values forecasts all zeros
        raise DataError(f"{source}, line {line}: {column} {text.strip()!r} is too small for float32 (nonzero below "
                        "1.2e-38); rescale the series (multiply it by a power of ten)")  # fmt: skip
    return value


def _rows(path: str | os.PathLike) -> tuple[list[str], list[tuple[int, list[str]]]]:
    text = read_text(path, expected="a CSV file of time series")
    reader = csv.reader(io.StringIO(text))
    try:
        rows = [(reader.line_num, row) for row in reader if row and any(cell.strip() for cell in row)]
    except csv.Error as e:  # a field over the csv module's limit (131,072 characters)
        raise DataError(f"{path}, line {reader.line_num}: not readable as CSV ({e})") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    header = [cell.strip() for cell in rows[0][1]]
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise DataError(f"{path}: column {dup!r} appears twice in the header")
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} fields, but the header has {len(header)}")
    if len(rows) < 2:
        raise DataError(f"{path}: a header but no data rows")
    return header, rows[1:]


def read_series(
    path: str | os.PathLike,
    *,
    wide: bool = False,
    fill: str | None = None,
    values: bool = True,
    axis: TimeAxis | None = None,
) -> SeriesSet:
    """The series of a long or (``wide=True``) wide CSV file, on their inferred time axis; see the module docs.
    ``path`` may name a built-in dataset (``rnnkit.datasets.resolve``).

    ``axis``: put the times on this grid instead of inferring one (a trained run's: a file of one point per series
    has no frequency of its own). ``values=False`` reads a file of future covariates, whose value cells may be
    empty (they stay NaN).
    """
    if fill is not None and fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)} or None, got {fill!r}")
    path = resolve(path)
    source = str(path)
    header, rows = _rows(path)
    if "time" not in header:
        raise DataError(f"{source}: no 'time' column (the header is {','.join(header)})")
    t_col = header.index("time")
    lines = [line for line, _ in rows]
    if wide:
        names = [h for h in header if h != "time"]
        if not names:
            raise DataError(f"{source}: a wide file needs a column per series beside 'time'")
        raw_ids, raw_values = [], []
        for line, row in rows:
            for c, h in enumerate(header):
                if h != "time":
                    v = _number(row[c], source, line, f"series {h!r}")
                    raw_ids.append(h)
                    raw_values.append(v)
        row_of = [k for k in range(len(rows)) for _ in names]  # each (row, series) cell -> its row
        time_text = [rows[k][1][t_col] for k in row_of]
        cell_lines = [lines[k] for k in row_of]
        cov_names: list[str] = []
        cov_values = [[] for _ in raw_ids]
    else:
        if "value" not in header:
            raise DataError(f"{source}: no 'value' column (the header is {','.join(header)}); pass wide=True "
                            "(--wide) for a file with one column per series")  # fmt: skip
        v_col = header.index("value")
        id_col = header.index("id") if "id" in header else None
        cov_names = [h for h in header if h not in ("id", "time", "value")]
        cov_cols = [header.index(h) for h in cov_names]
        raw_ids = [row[id_col].strip() if id_col is not None else "series" for _, row in rows]
        for (line, _), i in zip(rows, raw_ids, strict=True):
            if not i:
                raise DataError(f"{source}, line {line}: empty id")
        raw_values = [_number(row[v_col], source, line, "value") for line, row in rows]
        cov_values = [[_number(row[c], source, line, h) for c, h in zip(cov_cols, cov_names, strict=True)]
                      for line, row in rows]  # fmt: skip
        time_text = [row[t_col] for _, row in rows]
        cell_lines = lines
    ints, style, parsed = _parse_times(time_text, source, cell_lines)
    order: dict[str, list[int]] = {}
    for k, i in enumerate(raw_ids):
        order.setdefault(i, []).append(k)
    if axis is not None:
        if (style == "int") != (axis.kind == "int"):
            have, want = ("integer", "date") if style == "int" else ("date", "integer")
            raise DataError(f"{source}: its times are {have}s, but the run's are {want}s")
        stamps = ints or [int((t - EPOCH).total_seconds()) for t in parsed]
        _sorted_groups(order, stamps, cell_lines, source, raw_ids)
        ordinals = [12 * t.year + t.month - 1 for t in parsed] if axis.kind == "month" else stamps
    elif style == "int":
        ordinals = ints
        step = _grid_step(ordinals, _sorted_groups(order, ordinals, cell_lines, source, raw_ids))
        axis = TimeAxis("int", max(step, 1))
    else:
        stamps = [int((t - EPOCH).total_seconds()) for t in parsed]
        groups = _sorted_groups(order, stamps, cell_lines, source, raw_ids)
        axis, ordinals = _axis_for(parsed, style, groups)
    series, filled = [], 0
    for sid, rows_of in order.items():
        o = np.array([ordinals[k] for k in rows_of], np.int64)
        v = np.array([raw_values[k] for k in rows_of], np.float64)
        cov = np.array([cov_values[k] for k in rows_of], np.float64).reshape(len(rows_of), len(cov_names))
        if wide:  # a wide column's series starts at its first value and ends at its last
            seen = np.flatnonzero(~np.isnan(v))
            if not len(seen):
                raise DataError(f"{source}: series {sid!r} has no values")
            o, v, cov = o[seen[0] : seen[-1] + 1], v[seen[0] : seen[-1] + 1], cov[seen[0] : seen[-1] + 1]
        s, n = _on_grid(sid, o, v, cov, axis, fill, source, values)
        series.append(s)
        filled += n
    return SeriesSet(series, axis, cov_names, source, filled)


def _sorted_groups(order, stamps, lines, source, ids) -> list[list[int]]:
    """The rows of each series, checked to be in strictly increasing time order."""
    for sid, rows in order.items():
        for a, b in pairwise(rows):
            if stamps[b] == stamps[a]:
                raise DataError(f"{source}: series {sid!r} has a duplicate time (lines {lines[a]} and {lines[b]})")
            if stamps[b] < stamps[a]:
                raise DataError(
                    f"{source}, line {lines[b]}: series {sid!r} is not sorted by time (this time comes before the "
                    f"one on line {lines[a]})"
                )
    return list(order.values())


def _on_grid(sid, o, v, cov, axis: TimeAxis, fill, source, need_values: bool = True) -> tuple[Series, int]:
    """The series on the regular grid from its first to its last time, gaps and NaNs filled (or an error)."""
    step = axis.step
    if np.any((o - o[0]) % step):
        bad = int(o[np.flatnonzero((o - o[0]) % step)[0]])
        raise DataError(f"{source}: series {sid!r} is off the {axis.name} grid at time {axis.format(bad)}")
    n = int((o[-1] - o[0]) // step) + 1
    values = np.full(n, np.nan)
    covariates = np.full((n, cov.shape[1]), np.nan)
    at = (o - o[0]) // step
    values[at], covariates[at] = v, cov
    missing = np.isnan(covariates).any(axis=1) | (np.isnan(values) if need_values else np.zeros(n, bool))
    if not need_values:
        missing |= ~np.isin(np.arange(n), at)  # a future row must still be there, for its covariates
    if missing.any():
        if fill is None:
            k = int(np.flatnonzero(missing)[0])
            what = "no row" if k not in set(at.tolist()) else "a missing value"
            raise DataError(
                f"{source}: series {sid!r} has {what} at time {axis.format(int(o[0]) + k * step)} "
                f"({int(missing.sum())} missing in all; pass --fill ffill, interpolate or zero)"
            )
        if need_values and np.isnan(values).all():
            raise DataError(f"{source}: series {sid!r} has no values")
        values = _fill(values, fill) if need_values else values
        covariates = np.stack([_fill(c, fill) for c in covariates.T], axis=1) if cov.shape[1] else covariates
        if np.isnan(covariates).any():
            raise DataError(f"{source}: series {sid!r} has a covariate with no values")
    return Series(sid, int(o[0]), values, covariates), int(missing.sum())


def _fill(x: np.ndarray, how: str) -> np.ndarray:
    bad = np.isnan(x)
    if not bad.any() or bad.all():
        return x
    if how == "zero":
        return np.where(bad, 0.0, x)
    idx = np.arange(len(x))
    good = np.flatnonzero(~bad)
    if how == "interpolate":
        return np.interp(idx, good, x[good])
    last = np.maximum.accumulate(np.where(bad, -1, idx))  # ffill: index of the last value at or before each step
    last = np.where(last < 0, good[0], last)  # a leading gap takes the first value
    return x[last]


def check_continues(history: SeriesSet, later: SeriesSet, horizon: int | None = None) -> None:
    """DataError unless ``later`` (actuals, future covariates) has every series of ``history`` and no other, each
    starting at the step after its history ends, with at least ``horizon`` steps when given."""
    known = history.by_id()
    step = history.axis.step
    for s in later.series:
        if s.id not in known:
            raise DataError(f"{later.source}: series {s.id!r} is not in the history {history.source}")
        first = known[s.id].end(step) + step
        if s.start != first:
            ends = history.axis.format(known[s.id].end(step))
            raise DataError(
                f"{later.source}: series {s.id!r} starts at {later.axis.format(s.start)}, but its history ends at "
                f"{ends} (expected {history.axis.format(first)})"
            )
        if horizon is not None and len(s) < horizon:
            raise DataError(f"{later.source}: series {s.id!r} has {len(s)} steps, fewer than the horizon {horizon}")
    given = {s.id for s in later.series}
    missing = [sid for sid in known if sid not in given]
    if missing:
        raise DataError(
            f"{later.source}: no rows for series {missing[0]!r} ({len(missing)} series of the history missing)"
        )
