"""Limits where the cost is: classes, line length, target length, the confusion plot; each one line, in bounded time."""

from __future__ import annotations

import pytest
import torch

from rnnkit.errors import DataError


def test_more_classes_than_the_cap_are_one_line(tmp_path):
    from rnnkit.tasks import ClassifyConfig, ClassifyTask
    from rnnkit.tasks.classification import MAX_CLASSES

    data = tmp_path / "d.tsv"
    data.write_text("".join(f"ab\t{i}\n" for i in range(MAX_CLASSES + 1)))
    task = ClassifyTask(ClassifyConfig.from_dict({"data": {"data": str(data)}}))
    with pytest.raises(DataError, match=f"{MAX_CLASSES + 1:,} classes, more than the {MAX_CLASSES:,}"):
        task.prepare(None)


def test_a_confusion_matrix_of_many_classes_is_plotted_as_its_most_frequent_ones(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from rnnkit import metrics

    seen = {}
    monkeypatch.setattr(metrics, "_save", lambda plt, fig, path: seen.update(fig=fig))
    C = 3000
    confusion = torch.zeros(C, C, dtype=torch.long)
    confusion[torch.arange(C), torch.arange(C)] = torch.arange(C)  # class k has k true examples
    assert metrics.plot_confusion(confusion, [f"c{k}" for k in range(C)], tmp_path / "c.png", "val")
    ax = seen["fig"].axes[0]
    assert len(ax.get_xticks()) == metrics.PLOTTED_CLASSES
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"c{k}" for k in range(C - 50, C)]
    assert "50 most frequent of 3,000 classes" in ax.get_title()


def test_a_line_longer_than_the_cap_is_one_line(tmp_path):
    from rnnkit.data.labelled import read_examples
    from rnnkit.data.pairs import read_pairs
    from rnnkit.data.text import MAX_LINE_CHARS

    long = "c" * (MAX_LINE_CHARS + 1)
    (tmp_path / "d.tsv").write_text(f"ab\t0\nba\t1\n{long}\t0\n")
    with pytest.raises(DataError, match=r"d\.tsv, line 3: 100,003 characters, more than the 100,000"):
        read_examples(tmp_path / "d.tsv")
    (tmp_path / "d.csv").write_text(f"ab,0\n{long},1\n")
    with pytest.raises(DataError, match=r"d\.csv, line 2: "):
        read_examples(tmp_path / "d.csv")
    (tmp_path / "p.tsv").write_text(f"ab\tba\na\t{long}\n")
    with pytest.raises(DataError, match=r"p\.tsv, line 2: .* more than the 100,000"):
        read_pairs(tmp_path / "p.tsv")


def test_seq2seq_caps_targets_by_default_so_too_long_error_fires(tmp_path):
    from rnnkit.data.pairs import read_pairs
    from rnnkit.tasks.seq2seq import Seq2SeqDataConfig

    limit = Seq2SeqDataConfig().max_target_length
    assert 0 < limit <= 1000
    (tmp_path / "p.tsv").write_text("ab\tba\n" * 5 + "a\t" + "x" * 10_000 + "\n")
    with pytest.raises(DataError, match=f"line 6: a target of 10000 tokens, longer than --max-target-length {limit}"):
        read_pairs(tmp_path / "p.tsv", max_target_length=limit, too_long="error")
    assert read_pairs(tmp_path / "p.tsv", max_target_length=limit).dropped == 1


def test_the_no_validation_note_says_why(tmp_path, capsys):
    from rnnkit.cli import main

    data = tmp_path / "ten.tsv"
    data.write_text("".join(f"{w}\t{w[::-1]}\n" for w in ("ab", "abc", "bc", "ca", "cab", "b", "aa", "bb", "cc", "ac")))
    small = ["--max-steps", "1", "--max-minutes", "0", "--hidden-size", "4", "--embedding-size", "4"]
    assert main(["train", "seq2seq", "--data", str(data), "--out", str(tmp_path / "a"), *small]) == 0
    out = capsys.readouterr().out
    assert "--val-fraction 0.05 held out nothing of data this small, and no --val" in out
    assert main(["train", "seq2seq", "--data", str(data), "--out", str(tmp_path / "b"), "--val-fraction", "0",
                 *small]) == 0  # fmt: skip
    assert "(--val-fraction 0, and no --val)" in capsys.readouterr().out
