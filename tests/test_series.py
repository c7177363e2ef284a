"""Reading time series from CSV: layouts, time axes, frequencies, gaps and fills, and every bad input."""

from __future__ import annotations

import numpy as np
import pytest

from rnnkit.data.series import TimeAxis, read_series
from rnnkit.errors import DataError


def _csv(tmp_path, text: str, name: str = "s.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_long_file_with_ids_integer_times_and_a_covariate(tmp_path):
    p = _csv(tmp_path, "id,time,value,temp\na,1,10,0.5\na,2,11,0.6\nb,5,3,1\nb,6,4,2\nb,7,5,3\n")
    data = read_series(p)
    assert [s.id for s in data.series] == ["a", "b"]
    assert data.axis == TimeAxis("int", 1) and data.covariates == ["temp"]
    a, b = data.series
    assert a.start == 1 and a.values.tolist() == [10, 11] and a.covariates[:, 0].tolist() == [0.5, 0.6]
    assert b.start == 5 and b.end(1) == 7 and len(b) == 3


def test_a_file_without_an_id_column_is_one_series(tmp_path):
    data = read_series(_csv(tmp_path, "time,value\n0,1\n1,2\n2,3\n"))
    assert len(data) == 1 and data.series[0].values.tolist() == [1, 2, 3]


def test_wide_file_one_column_per_series_each_trimmed_to_its_values(tmp_path):
    p = _csv(tmp_path, "time,x,y\n2020-01,1,\n2020-02,2,5\n2020-03,3,6\n")
    data = read_series(p, wide=True)
    x, y = data.series
    assert (x.id, y.id) == ("x", "y")
    assert x.values.tolist() == [1, 2, 3] and y.values.tolist() == [5, 6]
    assert data.axis.kind == "month" and data.axis.step == 1
    assert data.axis.format(y.start) == "2020-02"  # written back in the file's own style


@pytest.mark.parametrize(
    ("times", "kind", "step", "name", "season", "after"),
    [
        (["2020-01-01", "2020-02-01", "2020-03-01"], "month", 1, "monthly", 12, "2020-04-01"),
        (["2019-01-31", "2019-02-28", "2019-03-31"], "month", 1, "monthly", 12, "2019-04-30"),  # month ends
        (["2019-10-01", "2020-01-01", "2020-04-01"], "month", 3, "quarterly", 4, "2020-07-01"),
        (["2018-01-01", "2019-01-01", "2020-01-01"], "month", 12, "yearly", 1, "2021-01-01"),
        (["2020-02-27", "2020-02-28", "2020-02-29"], "seconds", 86400, "daily", 7, "2020-03-01"),  # leap day
        (["2020-01-06", "2020-01-13", "2020-01-20"], "seconds", 7 * 86400, "weekly", 52, "2020-01-27"),
        (["2020-01-01T22:00:00", "2020-01-01T23:00:00", "2020-01-02T00:00:00"], "seconds", 3600, "hourly", 24,
         "2020-01-02T01:00:00"),
    ],
)  # fmt: skip
def test_the_frequency_is_inferred_from_the_dates_and_times_continue(tmp_path, times, kind, step, name, season, after):
    rows = "".join(f"s,{t},{k}\n" for k, t in enumerate(times))
    data = read_series(_csv(tmp_path, "id,time,value\n" + rows))
    axis, s = data.axis, data.series[0]
    assert (axis.kind, axis.step, axis.name, axis.season_length()) == (kind, step, name, season)
    assert [axis.format(s.start + k * axis.step) for k in range(3)] == times
    assert axis.format(s.end(axis.step) + axis.step) == after


def test_calendar_phases_follow_the_calendar():
    monthly = TimeAxis("month", 1)
    january, july = 12 * 2020 + 0, 12 * 2020 + 6
    assert monthly.calendar_phases(np.array([january, july])).tolist() == [[0.0], [0.5]]
    daily = TimeAxis("seconds", 86400, "date")
    monday = 86400 * 4  # 1970-01-05
    phases = daily.calendar_phases(np.array([monday, monday + 86400]))
    assert phases[:, 0].tolist() == [0.0, 1 / 7]  # day of week
    assert TimeAxis("int", 1).calendar_phases(np.arange(3)).shape == (3, 0)


def test_gaps_and_missing_values_are_errors_unless_filled(tmp_path):
    p = _csv(tmp_path, "id,time,value\na,1,1\na,2,\na,4,7\n")
    with pytest.raises(DataError, match=r"series 'a' has a missing value at time 2 \(2 missing in all; pass --fill"):
        read_series(p)
    assert read_series(p, fill="ffill").series[0].values.tolist() == [1, 1, 1, 7]
    assert read_series(p, fill="interpolate").series[0].values.tolist() == [1, 3, 5, 7]
    filled = read_series(p, fill="zero")
    assert filled.series[0].values.tolist() == [1, 0, 0, 7] and filled.filled == 2
    lead = _csv(tmp_path, "time,value\n1,\n2,5\n3,6\n", "lead.csv")
    assert read_series(lead, fill="ffill").series[0].values.tolist() == [5, 5, 6]  # a leading gap takes the first


@pytest.mark.parametrize(
    ("text", "wide", "match"),
    [
        ("id,value\na,1\n", False, "no 'time' column"),
        ("id,time\na,1\n", False, r"no 'value' column .*--wide"),
        ("id,time,value\na,1,x\n", False, r"line 2: value 'x' is not a number"),
        ("id,time,value\na,1,inf\n", False, "must be finite"),
        ("id,time,value\na,1,1\na,1,2\n", False, r"series 'a' has a duplicate time \(lines 2 and 3\)"),
        ("id,time,value\na,2,1\na,1,2\n", False, r"line 3: series 'a' is not sorted by time"),
        ("id,time,value\na,2020-01-01,1\na,2020-01-02,2\na,2020-01-05,3\na,2020-01-05T12:00,3\n", False,
         "mixes date and datetime"),
        ("id,time,value\na,2020-01-01,1\na,2020-01-02,1\na,2020-01-03 10:00:00+02:00,1\n", False, "time zone|mixes"),
        ("id,time,value\na,yesterday,1\n", False, "neither an integer nor an ISO date"),
        ("id,time,value\na,1,1,9\n", False, "line 2: 4 fields, but the header has 3"),
        ("id,time,value,value\na,1,1,1\n", False, "column 'value' appears twice"),
        ("id,time,value\n", False, "a header but no data rows"),
        ("time,a\n1,\n2,\n", True, "series 'a' has no values"),
        ("time\n1\n", True, "a column per series"),
        ("id,time,value\n,1,1\n", False, "empty id"),
    ],
)  # fmt: skip
def test_bad_files_are_one_clear_error(tmp_path, text, wide, match):
    with pytest.raises(DataError, match=match):
        read_series(_csv(tmp_path, text), wide=wide)


def test_irregular_dates_are_reported(tmp_path):
    # 1-day and 2-day steps: a daily grid with a gap at 2020-01-03
    p = _csv(tmp_path, "id,time,value\na,2020-01-01,1\na,2020-01-02,2\na,2020-01-04,3\n")
    with pytest.raises(DataError, match=r"series 'a' has no row at time 2020-01-03"):
        read_series(p)
    # steps of 90 and 30 minutes: a half-hourly grid with a gap at 00:30
    q = _csv(tmp_path, "id,time,value\na,2020-01-01T00:00,1\na,2020-01-01T01:30,2\na,2020-01-01T02:00,3\n", "q.csv")
    with pytest.raises(DataError, match="no row at time 2020-01-01T00:30:00"):
        read_series(q)


def test_fill_must_be_known():
    with pytest.raises(ValueError, match="fill must be one of ffill, interpolate, zero"):
        read_series("x.csv", fill="mean")


def test_a_missing_or_binary_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_series(tmp_path / "none.csv")
    (tmp_path / "b.csv").write_bytes(b"\x00\x01")
    with pytest.raises(DataError, match="looks binary"):
        read_series(tmp_path / "b.csv")


@pytest.mark.parametrize(
    ("cell", "match"),
    [("1e300", "'1e300' is outside float32's range"), ("-4e38", "outside float32's range"),
     ("1e-300", "'1e-300' is too small for float32"), ("-2e-40", "too small for float32")],
)  # fmt: skip
def test_values_and_covariates_outside_float32_are_one_line(tmp_path, cell, match):
    for header, row in (("id,time,value", f"a,2,{cell}"), ("id,time,value,price", f"a,2,5,{cell}")):
        p = tmp_path / "s.csv"
        extra = ",1" if "price" in header else ""
        p.write_text(f"{header}\na,1,3{extra}\n{row}\na,3,4{extra}\n")
        with pytest.raises(DataError, match=f"line 3: .*{match}"):
            read_series(p)
    p.write_text("id,time,value\na,1,0\na,2,1e-30\na,3,3.4e38\n")  # zero, small normals and the edge are fine
    assert read_series(p).series[0].values.tolist() == [0.0, 1e-30, 3.4e38]


def test_an_npz_beyond_float32_is_one_line(tmp_path):
    from rnnkit.data.labelled import read_examples

    np.savez(tmp_path / "x.npz", X=np.array([[1.0, 1e300]]), y=np.array([0]))
    with pytest.raises(DataError, match="outside float32's range"):
        read_examples(tmp_path / "x.npz")
