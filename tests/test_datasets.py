"""Built-in datasets: names resolve to files, every split reads with its task's reader at its documented size, the
generated ones are the same bytes everywhere, and unknown names list what exists."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import numpy as np
import pytest

from conftest import one_error_line
from rnnkit.data.labelled import read_examples
from rnnkit.data.pairs import read_pairs
from rnnkit.data.series import check_continues, read_series
from rnnkit.data.speech import read_utterances
from rnnkit.data.text import default_corpus, read_text
from rnnkit.data.ts import read_ts
from rnnkit.datasets import DATASETS, catalogue, date_pairs, resolve
from rnnkit.errors import DataError

KNOWN = (
    "built-in datasets: gunpoint, air-passengers, dates, python-stdlib, dtmf-digits, arpeggios, bach-chorales; "
    "see `rnnkit datasets`"
)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_an_existing_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gunpoint").write_text("mine")
    (tmp_path / "dates").mkdir()
    assert str(resolve("gunpoint")) == "gunpoint" and read_text("gunpoint") == "mine"
    assert str(resolve("dates")) == "dates"  # a folder too: the reader then says it is not a file


def test_names_resolve_to_real_files_with_the_readers_suffix(cache):
    assert resolve("gunpoint").name == "GunPoint_TRAIN.ts" and resolve("GunPoint:TEST").name == "GunPoint_TEST.ts"
    assert resolve("air-passengers").suffix == ".csv" and resolve("air-passengers:test").is_file()
    p = resolve("dates:val")
    assert p.suffix == ".tsv" and p.is_file() and p.is_relative_to(cache)
    assert resolve(p) == p


@pytest.mark.parametrize("reader", [read_examples, read_series, read_pairs, read_text, read_ts, read_utterances])
def test_an_unknown_name_is_no_such_file_with_the_list(reader):
    with pytest.raises(DataError) as e:
        reader("names.tsv")
    assert str(e.value) == f"names.tsv: no such file ({KNOWN})"


def test_an_unknown_split_lists_the_splits():
    with pytest.raises(DataError, match=r"gunpoint:val: gunpoint has no split 'val'; its splits are gunpoint:train, "
                                        r"gunpoint:test$"):  # fmt: skip
        resolve("gunpoint:val")


def test_the_command_line_says_it_in_one_line(tmp_path, capsys):
    from rnnkit.cli import main

    status = main(["train", "classify", "--data", "names.tsv", "--out", str(tmp_path / "run")])
    assert one_error_line(capsys, status).endswith(f"names.tsv: no such file ({KNOWN})")


def test_gunpoint_50_train_150_test_series_of_150_steps_two_classes():
    for name, n, counts in (("gunpoint", 50, [24, 26]), ("gunpoint:test", 150, [76, 74])):
        ex = read_examples(name)
        assert ex.kind == "series" and len(ex) == n and ex.declared_labels == ["1", "2"]
        assert {x.shape for x in ex.inputs} == {(150, 1)}
        assert [ex.labels.count(c) for c in ("1", "2")] == counts
    ts = read_ts("gunpoint")
    assert ts.name == "GunPoint" and ts.equal_length and not ts.has_missing
    assert ts.series[0][0, 0] == pytest.approx(-0.6478854)  # the first value of the archive's training file


def test_gunpoint_files_are_the_archive_copies():
    sha256 = {
        "gunpoint": "f842401779fd9800d247d8b33121a1a4643710a19b24917dbdd9a060ca8630d5",
        "gunpoint:test": "79332750788a6227b325b96bd0d70130c8eb707b9731f8d7dec62b7a7d36017e",
    }
    for name, sha in sha256.items():
        assert hashlib.sha256(resolve(name).read_bytes()).hexdigest() == sha


def test_air_passengers_144_months_split_120_and_24():
    whole, train, test = (read_series(f"air-passengers{s}") for s in ("", ":train", ":test"))
    (a,), (b,), (c,) = whole.series, train.series, test.series
    assert (len(a), len(b), len(c)) == (144, 120, 24)
    assert a.values.sum() == 40363 and np.array_equal(a.values, np.concatenate([b.values, c.values]))
    # the first and last years as R's datasets::AirPassengers prints them
    assert a.values[:12].tolist() == [112, 118, 132, 129, 121, 135, 148, 148, 136, 119, 104, 118]
    assert a.values[-12:].tolist() == [417, 391, 419, 461, 472, 535, 622, 606, 508, 461, 390, 432]
    assert whole.axis.name == "monthly" and whole.axis.season_length() == 12
    assert whole.axis.format(a.start) == "1949-01" and test.axis.format(c.start) == "1959-01"
    check_continues(train, read_series("air-passengers:test", axis=train.axis), 24)


def test_dates_sizes_and_hand_checked_pairs():
    train, val, test = (read_pairs(f"dates:{s}", targets="alternatives") for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (20_000, 1_000, 1_000)
    assert len(read_pairs("dates")) == 20_000
    first = [("".join(s), "".join(r[0])) for s, r in zip(train.sources[:3], train.references[:3], strict=True)]
    assert first == [("August 8, 1946", "1946-08-08"), ("Wednesday, 15 December 1943", "1943-12-15"),
                     ("01.10.2008", "2008-10-01")]  # fmt: skip
    assert date_pairs("val")[0] == ("09/19/1951", "1951-09-19")  # month first, as in the US
    assert date_pairs("test")[2] == ("17 Feb 2052", "2052-02-17")
    sources = [{"".join(s) for s in p.sources} for p in (train, val, test)]
    assert sum(map(len, sources)) == 22_000 and not (sources[0] & sources[1] or sources[0] & sources[2]
                                                      or sources[1] & sources[2])  # fmt: skip


def test_every_dates_target_is_its_source_in_iso_8601():
    # strptime's month and day names are English in the C locale pytest runs under
    patterns = ("%d %B %Y", "%B %d, %Y", "%d %b %Y", "%b %d, %Y", "%d.%m.%Y", "%m/%d/%Y", "%A, %d %B %Y")
    seen = set()
    for source, target in date_pairs("test") + date_pairs("val"):
        for k, pattern in enumerate(patterns):
            try:
                parsed = datetime.strptime(source, pattern)
            except ValueError:
                continue
            assert parsed.date().isoformat() == target, source
            if k == 6:  # the weekday is not checked by strptime
                assert source.startswith(parsed.strftime("%A, ")), source
            seen.add(k)
            break
        else:
            pytest.fail(f"{source!r} is in none of the formats")
    assert seen == set(range(7))


def test_dates_are_the_recorded_bytes_and_cached_once(cache):
    for split in DATASETS["dates"].splits:
        text = "".join(f"{a}\t{b}\n" for a, b in date_pairs(split.name))
        assert hashlib.sha256(text.encode()).hexdigest() == split.sha256  # the same on every machine
        assert resolve(f"dates:{split.name}").read_text() == text
    p = resolve("dates")
    stamp = p.stat().st_mtime_ns
    assert resolve("dates").stat().st_mtime_ns == stamp  # not written again
    p.write_text("tampered\tx\n")
    assert read_pairs("dates").texts[0] == "August 8, 1946"  # a changed cache file is made again


def test_arpeggios_is_a_folder_of_midi_files_generated_once(tmp_path, monkeypatch):
    from rnnkit.data.music import read_pieces

    monkeypatch.setenv("RNNKIT_CACHE_DIR", str(tmp_path))
    train, val = resolve("arpeggios"), resolve("arpeggios:val")
    assert train.is_dir() and train.name == "train" and val.parent == train.parent
    assert len(list(train.glob("*.mid"))) == 284 and len(list(val.glob("*.mid"))) == 40
    pieces, skipped = read_pieces("arpeggios:val")
    assert len(pieces) == 40 and skipped == 0 and all(p.roll(4).frames.shape == (80, 128) for p in pieces)
    stamp = (train / "train-000.mid").stat().st_mtime_ns
    assert resolve("arpeggios").stat().st_mtime_ns and (train / "train-000.mid").stat().st_mtime_ns == stamp
    train_notes = {p.notes.tobytes() for p in read_pieces(train)[0]}
    assert not train_notes & {p.notes.tobytes() for p in pieces}  # no piece in both splits


def test_python_stdlib_is_the_language_models_default_corpus():
    p = resolve("python-stdlib")
    assert p.suffix == ".txt" and read_text(p) == default_corpus()


def test_catalogue_rows_for_rnnkit_datasets():
    rows = catalogue()
    assert [(r.name, r.task) for r in rows] == [("gunpoint", "classify"), ("air-passengers", "forecast"),
                                                ("dates", "seq2seq"), ("python-stdlib", "lm"),
                                                ("dtmf-digits", "ctc"), ("arpeggios", "music"),
                                                ("bach-chorales", "music")]  # fmt: skip
    assert all(isinstance(v, str) and v for r in rows for v in r)
    assert rows[0].splits == "gunpoint, gunpoint:test" and "50 series" in rows[0].size


def test_a_forecast_run_and_its_eval_by_name(tmp_path, capsys, one_thread):
    from rnnkit.cli import main

    run = str(tmp_path / "run")
    args = ["--horizon", "24", "--out", run, "--max-steps", "2", "--eval-every", "2", "--hidden-size", "8",
            "--device", "cpu"]  # fmt: skip
    assert main(["train", "forecast", "--data", "air-passengers:train", *args]) == 0
    capsys.readouterr()
    status = main(["eval", "--run", run, "--data", "air-passengers:train", "--actuals", "air-passengers:test",
                   "--json"])  # fmt: skip
    scores = json.loads(capsys.readouterr().out)
    assert status == 0 and scores["points"] == 24 and np.isfinite(scores["mase"])


def test_rnnkit_datasets_lists_every_name_and_split(capsys):
    import json

    from rnnkit.cli import main
    from rnnkit.datasets import catalogue

    assert main(["datasets"]) == 0
    text = capsys.readouterr().out
    for row in catalogue():
        assert f"{row.name} ({row.task})" in text and row.splits.split(", ")[-1] in text
    assert main(["datasets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in listed] == [row.name for row in catalogue()]
    assert {"gunpoint", "air-passengers", "dates"} <= {d["name"] for d in listed}
