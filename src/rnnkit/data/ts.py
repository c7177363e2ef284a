"""A reader for the UEA/UCR time-series classification archive's ``.ts`` files.

The format (https://www.timeseriesclassification.com, sktime's ``load_from_tsfile``) is a header of ``@key value``
lines, then ``@data`` and one example per line::

    # comments start with '#' (or ARFF's '%'); blank lines are ignored anywhere
    @problemName Toy
    @timeStamps false
    @missing true
    @univariate false
    @dimensions 2
    @equalLength false
    @classLabel true up down
    @data
    1.0,2.0,3.0:0.5,?,0.25:up          <- channel 1 : channel 2 : label, '?' a missing value
    4.0,5.0:1.5,2.5:down               <- unequal lengths are allowed across examples

Header keys are case-insensitive. Within a line, channels are separated by ``:`` and the values of a channel by
``,``; with ``@classLabel true`` (or ``@targetLabel true``, a regression target) the last ``:`` field is the
label. ``read_ts`` returns one ``(T_i, D)`` float32 array per example; it checks everything it reads and raises a
``DataError`` naming the file, the line and what was expected and found. Timestamped data (``@timeStamps true``)
is not supported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnkit.data.text import read_text
from rnnkit.datasets import resolve
from rnnkit.errors import DataError

__all__ = ["TimeSeriesSet", "read_ts"]

COMMENT_MARKS = ("#", "%")  # '%' is ARFF's, still found in a few archive files (sktime's UnitTest_*.ts)
MISSING_TOKENS = frozenset({"?", "nan", "+nan", "-nan"})  # compared lower-cased; '?' is the archive's marker
FLOAT32_MAX = float(np.finfo(np.float32).max)
BOOLEAN_KEYS = ("timestamps", "missing", "univariate", "equallength", "classlabel", "targetlabel")


@dataclass
class TimeSeriesSet:
    """The examples of one ``.ts`` file.

    Attributes:
        series: one float32 array per example, shape (T_i, D); NaN where the file has ``?`` or ``NaN`` (only
            allowed when the file declares ``@missing true``).
        labels: the label of each example as written in the file (str), or None without ``@classLabel true`` /
            ``@targetLabel true``. For ``@targetLabel`` (regression) these are the target values as text.
        class_labels: the labels declared by ``@classLabel true a b c``, in declared order; None otherwise.
        name: the ``@problemName`` value, or None when the header has none.
        num_channels: D, the number of channels (variables) of every example.
        equal_length: whether all examples have the same T, computed from the data (the header is not trusted).
        has_missing: whether any value is NaN.
    """

    series: list[np.ndarray]
    labels: list[str] | None
    class_labels: list[str] | None
    name: str | None
    num_channels: int
    equal_length: bool
    has_missing: bool


@dataclass
class _Header:
    """What the header lines said, with the line number (1-based) of each declaration that later checks cite."""

    name: str | None = None
    missing: bool = False
    dimensions: int | None = None
    dimensions_line: int = 0
    univariate_line: int = 0
    labelled: bool = False  # the last ':' field of a data line is a label (@classLabel or @targetLabel true)
    class_labels: list[str] | None = None
    class_labels_line: int = 0
    equal_length: bool | None = None  # @equalLength, if declared
    equal_length_line: int = 0
    series_length: int | None = None  # @seriesLength, if declared
    series_length_line: int = 0


def read_ts(path: str | os.PathLike) -> TimeSeriesSet:
    """Read a UEA/UCR ``.ts`` file (univariate or multivariate, equal or unequal length, with missing values).

    Args:
        path: the ``.ts`` file, UTF-8 text (a leading BOM is dropped), or a built-in dataset
            (``rnnkit.datasets.resolve``).

    Returns:
        A ``TimeSeriesSet``: one (T_i, D) float32 array per example, the labels as str, the declared class
        labels, the problem name, D, and whether the lengths are equal and any value is missing (NaN).

    Raises:
        DataError: in one line naming the file (and the line, where there is one), what was expected and what
            was found: a missing, empty, non-UTF-8 file or a directory; a malformed header (a boolean key not
            ``true``/``false``, ``@classLabel true`` with no labels, ``@timeStamps true``, which is not
            supported); no ``@data`` line or no examples after it; a data line with the wrong number of channels
            (against ``@dimensions``/``@univariate true``, else against the first example), channels of
            different lengths, an empty channel, a value that is not a number or is +/-inf, a missing value
            (``?``/``NaN``) without ``@missing true``, a missing or undeclared class label.

    A trailing ``:`` on an unlabelled line (sktime's writer leaves one after the last channel of multivariate
    data) is ignored. ``@equalLength true`` is enforced (every example as long as the first), and so is
    ``@seriesLength N`` unless ``@equalLength false`` (every example N steps); an example whose values are all
    missing is refused.
    """
    p = resolve(path)
    lines = _read_lines(p)
    header, first = _parse_header(p, lines)
    expected_dims = header.dimensions
    dims_source = (
        f"@dimensions, line {header.dimensions_line}"
        if header.dimensions_line
        else f"@univariate true, line {header.univariate_line}"
    )
    declared = set(header.class_labels) if header.class_labels is not None else None
    series: list[np.ndarray] = []
    labels: list[str] | None = [] if header.labelled else None
    has_missing = False
    for index in range(first, len(lines)):
        line = lines[index].strip()
        if not line or line.startswith(COMMENT_MARKS):
            continue
        lineno, where = index + 1, f"{p}, line {index + 1}"
        fields, label = _split_example(where, line, header)
        if expected_dims is None:
            expected_dims, dims_source = len(fields), f"as in the first example, line {lineno}"
        elif len(fields) != expected_dims:
            hint = " (the last ':' field is the label)" if header.labelled else ""
            raise DataError(f"{where}: expected {expected_dims} channel(s) ({dims_source}), got {len(fields)}{hint}")
        if declared is not None and label not in declared:
            raise DataError(
                f"{where}: class label {label!r} is not among those declared by @classLabel "
                f"(line {header.class_labels_line}): {' '.join(header.class_labels or [])}"
            )
        x = _example_array(where, fields, header.missing)  # (T, D)
        _check_declared_length(where, header, len(x), len(series[0]) if series else None)
        has_missing = has_missing or bool(np.isnan(x).any())
        if has_missing and np.isnan(x).all():  # nothing to learn from, and NaN statistics (numpy warnings) later
            raise DataError(f"{where}: every value of this example is missing; remove the line")
        series.append(x)
        if labels is not None:
            labels.append(label)
    if not series:
        raise DataError(f"{p}: no examples after @data (line {first}), expected at least one data line")
    assert expected_dims is not None
    return TimeSeriesSet(
        series=series,
        labels=labels,
        class_labels=header.class_labels,
        name=header.name,
        num_channels=expected_dims,
        equal_length=len({len(x) for x in series}) == 1,
        has_missing=has_missing,
    )


def _check_declared_length(where: str, header: _Header, length: int, first: int | None) -> None:
    """DataError when an example's length breaks the header's @seriesLength or @equalLength true."""
    if header.series_length is not None and header.equal_length is not False and length != header.series_length:
        raise DataError(f"{where}: expected {header.series_length} values per channel (@seriesLength, line "
                        f"{header.series_length_line}), got {length}")  # fmt: skip
    if header.equal_length and first is not None and length != first:
        raise DataError(f"{where}: expected {first} values per channel as the first example has (@equalLength true, "
                        f"line {header.equal_length_line}), got {length}")  # fmt: skip


def _split_example(where: str, line: str, header: _Header) -> tuple[list[str], str]:
    """A data line's channel texts and its label ("" when the header declares none)."""
    if line.startswith("@"):
        key = line.split(maxsplit=1)[0]
        raise DataError(f"{where}: expected data after @data, got the header line {key!r} (headers come first)")
    fields = line.split(":")
    if not header.labelled:
        if len(fields) > 1 and not fields[-1].strip():
            fields.pop()  # a trailing ':' after the last channel
        return fields, ""
    if len(fields) < 2:
        raise DataError(
            f"{where}: expected channels followed by ':<label>' (the header declares labels), got no ':' in "
            f"{_show(line)}"
        )
    label = fields.pop().strip()
    if not label:
        raise DataError(f"{where}: expected a label after the last ':', got an empty label")
    return fields, label


def _example_array(where: str, fields: list[str], missing_allowed: bool) -> np.ndarray:
    """The (T, D) float32 array of one example from its D channel texts; DataError for a bad channel."""
    channels = [_parse_channel(where, c, text, missing_allowed) for c, text in enumerate(fields, start=1)]
    if len({len(values) for values in channels}) > 1:
        shown = ", ".join(str(len(values)) for values in channels)
        raise DataError(f"{where}: expected the channels of one example to have equal lengths, got lengths {shown}")
    x = np.stack(channels, axis=1)  # D x (T,) -> (T, D)
    too_big = np.abs(x) > FLOAT32_MAX  # finite in float64 but inf in float32; NaN compares False
    if too_big.any():
        t, c = np.argwhere(too_big)[0]
        raise DataError(
            f"{where}: channel {c + 1}, value {t + 1}: expected a number within float32 range (+/-3.4e38), "
            f"got {float(x[t, c]):g}"
        )
    return x.astype(np.float32)


def _read_lines(p: Path) -> list[str]:
    """The lines of the UTF-8 file ``p`` (BOM dropped); DataError for a missing, empty or binary file."""
    text = read_text(p, expected="a .ts file")
    if not text.strip():
        raise DataError(f"{p}: file is empty, expected a .ts header and an @data section")
    # split on '\n' only: str.splitlines also splits on form feeds and other separators, which would shift the
    # line numbers that errors report
    return text.split("\n")


def _parse_header(p: Path, lines: list[str]) -> tuple[_Header, int]:
    """The header, and the index of the line after ``@data``; DataError for a malformed header or no ``@data``."""
    header = _Header()
    for index, raw in enumerate(lines):
        line = raw.strip()
        if not line or line.startswith(COMMENT_MARKS):
            continue
        lineno = index + 1
        where = f"{p}, line {lineno}"
        if not line.startswith("@"):
            raise DataError(f"{where}: expected a header line '@key value' or @data before the data, got {_show(line)}")
        key, *value = line[1:].split(maxsplit=1)
        key, rest = key.lower(), value[0] if value else ""
        tokens = rest.split()
        if key == "data":
            if tokens:
                raise DataError(f"{where}: expected '@data' alone on its line, got {_show(line)}")
            _reconcile_dimensions(p, header)
            return header, index + 1
        if key == "problemname":
            header.name = rest.strip() or None
        elif key in BOOLEAN_KEYS:
            flag = _boolean(where, key, tokens)
            if key == "timestamps" and flag:
                raise DataError(f"{where}: @timeStamps true: timestamped data is not supported, expected false")
            if key == "missing":
                header.missing = flag
            elif key == "univariate" and flag:
                header.univariate_line = lineno
            elif key == "classlabel":
                _class_labels(where, header, flag, tokens[1:], lineno)
            elif key == "equallength":
                header.equal_length, header.equal_length_line = flag, lineno
            elif key == "targetlabel":
                if len(tokens) > 1:
                    raise DataError(f"{where}: expected '@targetLabel true' or 'false' alone, got {_show(line)}")
                header.labelled = header.labelled or flag
        elif key == "dimensions":
            header.dimensions = _positive_int(where, key, tokens)
            header.dimensions_line = lineno
        elif key == "serieslength":
            header.series_length, header.series_length_line = _positive_int(where, key, tokens), lineno
        # other keys (there are none in the archive today) are ignored, as sktime does; a key given twice
        # takes its later value (sktime's own UnitTest_TEST.ts has two @problemName lines)
    raise DataError(f"{p}: no @data line, expected the header to end with @data followed by the examples")


def _class_labels(where: str, header: _Header, flag: bool, labels: list[str], lineno: int) -> None:
    """Record ``@classLabel true a b c`` (or ``false``) in ``header``."""
    if flag and not labels:
        raise DataError(f"{where}: expected '@classLabel true' to list the class labels (e.g. 'true a b c'), got none")
    if not flag and labels:
        raise DataError(f"{where}: expected nothing after '@classLabel false', got {' '.join(labels)!r}")
    if len(set(labels)) != len(labels):
        raise DataError(f"{where}: expected distinct class labels after @classLabel true, got {' '.join(labels)!r}")
    if flag:
        header.labelled = True
        header.class_labels = labels
        header.class_labels_line = lineno


def _reconcile_dimensions(p: Path, header: _Header) -> None:
    """``@univariate true`` declares one channel; with ``@dimensions`` too, the two must agree."""
    if not header.univariate_line:
        return
    if header.dimensions is None:
        header.dimensions = 1
    elif header.dimensions != 1:
        raise DataError(
            f"{p}, line {header.dimensions_line}: expected @dimensions 1 with @univariate true "
            f"(line {header.univariate_line}), got {header.dimensions}"
        )


def _boolean(where: str, key: str, tokens: list[str]) -> bool:
    """The ``true``/``false`` value of a header key (case-insensitive)."""
    value = tokens[0].lower() if tokens else ""
    if value not in ("true", "false"):
        raise DataError(f"{where}: expected @{key} true or false, got {' '.join(tokens) or 'nothing'!r}")
    return value == "true"


def _positive_int(where: str, key: str, tokens: list[str]) -> int:
    """The positive integer value of a header key."""
    if len(tokens) != 1 or not tokens[0].isdigit() or int(tokens[0]) < 1:
        raise DataError(f"{where}: expected @{key} to be a positive integer, got {' '.join(tokens) or 'nothing'!r}")
    return int(tokens[0])


def _parse_channel(where: str, c: int, text: str, missing_allowed: bool) -> np.ndarray:
    """One channel's comma-separated values as float64 (T,), NaN for ``?``/``NaN``; DataError for a bad value.

    The fast path converts the whole channel in one NumPy call (``?`` spelled ``nan`` first); only a channel
    that fails, or holds an underscore (which Python and NumPy accept inside numbers), is walked value by
    value, to name the culprit.
    """
    if not text.strip():
        raise DataError(f"{where}: channel {c} is empty, expected comma-separated values")
    tokens = text.split(",")
    if "_" not in text:
        try:
            values = np.array(text.replace("?", "nan").split(",") if "?" in text else tokens, dtype=np.float64)
        except ValueError:
            pass
        else:
            finite = np.isfinite(values)
            if finite.all() or (missing_allowed and np.isnan(values[~finite]).all()):
                return values
    values = np.empty(len(tokens), dtype=np.float64)
    for t, token in enumerate(tokens):
        s = token.strip()
        at = f"{where}: channel {c}, value {t + 1}"
        if s.lower() in MISSING_TOKENS:
            if not missing_allowed:
                raise DataError(
                    f"{at}: a missing value {s!r}, but the header does not declare @missing true; expected a number"
                )
            values[t] = np.nan
            continue
        try:
            if not s or "_" in s:
                raise ValueError(s)
            values[t] = float(s)
        except ValueError:
            raise DataError(f"{at}: expected a number, got {_show(s) if s else 'an empty value'}") from None
        if np.isinf(values[t]):
            raise DataError(f"{at}: expected a finite number, got {s!r}")
    return values


def _show(text: str, limit: int = 40) -> str:
    """``text`` quoted, cut to ``limit`` characters so that an error stays one readable line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
