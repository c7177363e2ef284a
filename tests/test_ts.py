"""The UEA/UCR ``.ts`` reader: small files written here with known contents, every malformed input named in one line,
and (where sktime is installed) equality with sktime's own loader on the archive files it bundles."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from rnnkit.data.ts import TimeSeriesSet, read_ts
from rnnkit.errors import DataError

HEADER = """\
@problemName Toy
@timeStamps false
@missing false
@univariate true
@equalLength true
@seriesLength 3
@classLabel true a b
@data
"""


def write(tmp_path: Path, text: str, name: str = "toy.ts") -> Path:
    """``text`` written to ``tmp_path / name`` as UTF-8 (newlines kept as given)."""
    p = tmp_path / name
    p.write_bytes(text.encode())
    return p


def col(*values: float) -> np.ndarray:
    """One univariate series, (T, 1) float32."""
    return np.array(values, dtype=np.float32)[:, None]


def assert_series(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    """Same number of examples, each the same float32 (T, D) array (NaN equal to NaN)."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == np.float32 and g.shape == e.shape
        np.testing.assert_array_equal(g, e)


# --- well-formed files ----------------------------------------------------------------------------------------


def test_univariate_equal_length(tmp_path):
    d = read_ts(write(tmp_path, HEADER + "1,2,3:a\n-0.5,1e-3,4.25:b\n7,8,9:a\n"))
    assert isinstance(d, TimeSeriesSet)
    assert_series(d.series, [col(1, 2, 3), col(-0.5, 1e-3, 4.25), col(7, 8, 9)])
    assert d.labels == ["a", "b", "a"] and d.class_labels == ["a", "b"]
    assert d.name == "Toy" and d.num_channels == 1 and d.equal_length and not d.has_missing


def test_multivariate(tmp_path):
    text = """\
@problemName Two
@timeStamps false
@univariate false
@dimensions 2
@classLabel true up down
@data
1,2,3:10,20,30:up
4,5,6:40,50,60:down
"""
    d = read_ts(write(tmp_path, text))
    expected = [np.array([[1, 10], [2, 20], [3, 30]], np.float32), np.array([[4, 40], [5, 50], [6, 60]], np.float32)]
    assert_series(d.series, expected)
    assert d.labels == ["up", "down"] and d.class_labels == ["up", "down"] and d.num_channels == 2


def test_unequal_length_multivariate_without_dimensions(tmp_path):
    # the channel count comes from the first example
    text = "@univariate false\n@equalLength false\n@classLabel true 1 2\n@data\n1,2,3:4,5,6:1\n7:8:2\n9,10:11,12:1\n"
    d = read_ts(write(tmp_path, text))
    assert [x.shape for x in d.series] == [(3, 2), (1, 2), (2, 2)]
    np.testing.assert_array_equal(d.series[2], np.array([[9, 11], [10, 12]], np.float32))
    assert not d.equal_length and d.num_channels == 2 and d.name is None


def test_missing_values(tmp_path):
    text = HEADER.replace("@missing false", "@missing true") + "1,?,3:a\nNaN,2, nan :b\n"
    d = read_ts(write(tmp_path, text))
    assert_series(d.series, [col(1, np.nan, 3), col(np.nan, 2, np.nan)])
    assert d.has_missing
    # declared but absent: has_missing reports the data
    assert not read_ts(write(tmp_path, HEADER.replace("@missing false", "@missing true") + "1,2,3:a\n")).has_missing


def test_comments_blank_lines_crlf_and_bom(tmp_path):
    text = "\ufeff# a comment\n% an ARFF-style comment\n\n" + HEADER.replace("@data\n", "\n# more\n@data\n\n")
    text += "1,2,3:a\n\n# between examples\n4,5,6:b\n\n"
    d = read_ts(write(tmp_path, text.replace("\n", "\r\n")))
    assert_series(d.series, [col(1, 2, 3), col(4, 5, 6)])
    assert d.labels == ["a", "b"]


def test_header_keys_and_booleans_are_case_insensitive(tmp_path):
    text = "@PROBLEMNAME\tMixedCase\n@TimeStamps FALSE\n@MISSING True\n@UniVariate TRUE\n@classlabel TRUE Yes No\n"
    d = read_ts(write(tmp_path, text + "@DATA\n1,?:Yes\n3,4:No\n"))
    assert d.name == "MixedCase" and d.class_labels == ["Yes", "No"] and d.labels == ["Yes", "No"]  # values keep case
    assert_series(d.series, [col(1, np.nan), col(3, 4)])


def test_no_labels(tmp_path):
    header = "@problemName U\n@univariate false\n@dimensions 2\n@classLabel false\n@data\n"
    d = read_ts(write(tmp_path, header + "1,2:3,4\n5:6:\n"))  # a trailing ':' (sktime's writer) is ignored
    assert d.labels is None and d.class_labels is None
    assert_series(d.series, [np.array([[1, 3], [2, 4]], np.float32), np.array([[5, 6]], np.float32)])
    d = read_ts(write(tmp_path, "@data\n1,2,3\n"))  # no @classLabel at all: unlabelled
    assert d.labels is None and d.num_channels == 1


def test_target_label(tmp_path):
    d = read_ts(write(tmp_path, "@univariate true\n@targetLabel true\n@data\n1,2:0.25\n3,4:-7\n"))
    assert d.labels == ["0.25", "-7"] and d.class_labels is None


# --- malformed files: one DataError line naming the file, the line, the expected and the found ------------------

BAD = {
    "no @data": ("@problemName T\n@univariate true\n", None, "no @data line"),
    "no examples": (HEADER + "\n# only a comment\n", None, "no examples after @data (line 8)"),
    "undeclared label": (HEADER + "1,2,3:a\n1,2,3:c\n", 10, "class label 'c' is not among those declared"),
    "channels vs @dimensions": (
        HEADER.replace("@univariate true", "@univariate false\n@dimensions 2") + "1,2,3:3,4,5:a\n1,2,3:a\n",
        11,
        "expected 2 channel(s) (@dimensions, line 5), got 1",
    ),
    "channels vs first example": (
        "@classLabel true a\n@data\n1:2:a\n1:2:3:a\n",
        4,
        "expected 2 channel(s) (as in the first example, line 3), got 3",
    ),
    "channels vs @univariate": (HEADER + "1,2:3,4:a\n", 9, "expected 1 channel(s) (@univariate true, line 4), got 2"),
    "channel lengths": ("@data\n1,2,3:4,5\n", 2, "channels of one example to have equal lengths, got lengths 3, 2"),
    "not a number": (HEADER + "1,2,3:a\n1,x2,3:b\n", 10, "channel 1, value 2: expected a number, got 'x2'"),
    "'?' inside a number": ("@missing true\n@data\n1,2?\n", 3, "channel 1, value 2: expected a number, got '2?'"),
    "underscore in a number": ("@data\n1_000,2\n", 2, "channel 1, value 1: expected a number, got '1_000'"),
    "beyond float64": ("@data\n1,1e400\n", 2, "value 2: expected a finite number, got '1e400'"),
    "empty value": (HEADER + "1,,3:a\n", 9, "channel 1, value 2: expected a number, got an empty value"),
    "'?' without @missing": (HEADER + "1,?,3:a\n", 9, "value 2: a missing value '?', but the header does not declare"),
    "NaN without @missing": (HEADER + "1,2,NaN:a\n", 9, "value 3: a missing value 'NaN', but the header does not"),
    "inf": (HEADER + "1,inf,3:a\n", 9, "value 2: expected a finite number, got 'inf'"),
    "-inf with @missing": ("@missing true\n@data\n?,-Infinity\n", 3, "expected a finite number, got '-Infinity'"),
    "beyond float32": ("@data\n1,1e39\n", 2, "value 2: expected a number within float32 range (+/-3.4e38), got 1e+39"),
    "empty channel": ("@dimensions 2\n@data\n1,2: :\n", 3, "channel 2 is empty, expected comma-separated values"),
    "@classLabel true without labels": ("@classLabel true\n@data\n1:a\n", 1, "to list the class labels"),
    "timestamps": ("@timeStamps true\n@data\n(1,2.0)\n", 1, "@timeStamps true: timestamped data is not supported"),
    "bad boolean": ("@missing yes\n@data\n1\n", 1, "expected @missing true or false, got 'yes'"),
    "bad @dimensions": ("@dimensions two\n@data\n1\n", 1, "expected @dimensions to be a positive integer, got 'two'"),
    "@univariate vs @dimensions": ("@univariate true\n@dimensions 3\n@data\n1\n", 2, "expected @dimensions 1 with"),
    "header after @data": (HEADER + "1,2,3:a\n@missing true\n", 10, "got the header line '@missing'"),
    "data before @data": ("@univariate true\n1,2,3\n@data\n", 2, "expected a header line '@key value' or @data"),
    "labelled line without a label": (HEADER + "1,2,3\n", 9, "expected channels followed by ':<label>'"),
    "empty label": (HEADER + "1,2,3: \n", 9, "expected a label after the last ':', got an empty label"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_malformed_file_names_file_line_and_problem(tmp_path, case):
    text, line, message = BAD[case]
    p = write(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_ts(p)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(p))
    assert message in msg
    if line is not None:
        assert msg.startswith(f"{p}, line {line}: ")


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), (b"", "file is empty"), (b"\n \n", "file is empty"), (b"@data\n\xff1\n", "not UTF-8")],
    ids=["missing", "empty", "blank", "not utf-8"],
)
def test_unreadable_file(tmp_path, content, message):
    p = tmp_path / "x.ts"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read_ts(p)
    assert str(err.value).startswith(str(p))


def test_directory(tmp_path):
    with pytest.raises(DataError, match=r"is a directory, expected a \.ts file"):
        read_ts(tmp_path)


# --- parity with sktime on the archive files it bundles --------------------------------------------------------


def bundled_ts_files() -> list[Path]:
    """The ``.ts`` files under sktime's ``datasets/data/`` (empty without sktime), found without importing it."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or spec.origin is None:
        return []
    return sorted((Path(spec.origin).parent / "datasets" / "data").glob("*/*.ts"))


BUNDLED = bundled_ts_files()


def test_sktime_bundles_the_expected_files():
    pytest.importorskip("sktime")
    names = {p.name for p in BUNDLED}
    for problem in ["GunPoint", "ItalyPowerDemand", "ArrowHead", "BasicMotions", "JapaneseVowels", "PLAID"]:
        assert {f"{problem}_TRAIN.ts", f"{problem}_TEST.ts"} <= names


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_matches_sktime_loader(path):
    datasets = pytest.importorskip("sktime.datasets")
    X, y = datasets.load_from_tsfile(str(path), return_data_type="nested_univ")
    d = read_ts(path)
    assert X.shape == (len(d.series), d.num_channels)
    cells = X.to_numpy()  # (N, D) object array of pd.Series; far faster to index than X.iloc
    for i, x in enumerate(d.series):
        for c in range(d.num_channels):
            theirs = cells[i, c].to_numpy(dtype=np.float64)
            assert theirs.shape == (len(x),)
            np.testing.assert_allclose(x[:, c], theirs, rtol=1e-6, atol=0)
    # sktime lower-cases every line it reads, labels included (BasicMotions declares 'Standing Running ...')
    assert d.labels is not None and [label.lower() for label in d.labels] == [str(label) for label in y]
    assert d.equal_length == (len({len(x) for x in d.series}) == 1)


def test_largest_bundled_file_reads_fast():
    pytest.importorskip("sktime")
    largest = max(BUNDLED, key=lambda p: p.stat().st_size)
    start = time.perf_counter()
    read_ts(largest)
    assert time.perf_counter() - start < 2.0, f"{largest.name} ({largest.stat().st_size} bytes) read too slowly"


def test_declared_lengths_are_enforced_and_all_missing_examples_refused(tmp_path):
    """@equalLength true and @seriesLength are promises the data must keep (issue 26: they were not checked)."""
    unequal = "@univariate false\n@equalLength true\n@classLabel true 1 2\n@data\n1,2,3:4,5,6:1\n7:8:2\n"
    with pytest.raises(DataError, match=r"line 6: expected 3 values per channel as the first example has "
                       r"\(@equalLength true, line 2\), got 1"):  # fmt: skip
        read_ts(write(tmp_path, unequal))
    declared = HEADER.replace("@data", "@seriesLength 3\n@data")
    assert len(read_ts(write(tmp_path, declared + "1,2,3:a\n4,5,6:b\n")).series) == 2
    with pytest.raises(DataError, match=r"expected 3 values per channel \(@seriesLength, line \d+\), got 2"):
        read_ts(write(tmp_path, declared + "1,2,3:a\n4,5:b\n"))
    free = declared.replace("@seriesLength 3", "@equalLength false\n@seriesLength 3")
    assert len(read_ts(write(tmp_path, free + "1,2,3:a\n4,5:b\n")).series) == 2  # false: the length is a maximum
    missing = HEADER.replace("@missing false", "@missing true")
    with pytest.raises(DataError, match="every value of this example is missing"):
        read_ts(write(tmp_path, missing + "1,?,3:a\n?,NaN,?:b\n"))
