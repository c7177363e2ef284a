"""Sequence pairs for sequence-to-sequence tasks: tokens, alternatives, and every bad line named."""

from __future__ import annotations

import pytest
import torch

from rnnkit.data.labelled import TokenVocab
from rnnkit.data.pairs import read_pairs, split_tokens
from rnnkit.errors import DataError


def _file(tmp_path, text: str):
    p = tmp_path / "pairs.tsv"
    p.write_text(text)
    return p


def test_pairs_with_characters_and_space_separated_phones(tmp_path):
    p = _file(tmp_path, "cat\tK AE1 T\n\ncats\tK AE1 T S\nread\tR EH1 D\nread\tR IY1 D\n")
    pairs = read_pairs(p, target_tokens="space")
    assert pairs.sources == [list("cat"), list("cats"), list("read"), list("read")]
    assert pairs.references[0] == [["K", "AE1", "T"]] and pairs.references[3] == [["R", "IY1", "D"]]
    assert pairs.lines == [1, 3, 4, 5] and pairs.texts[1] == "cats" and len(pairs) == 4


def test_alternatives_and_sources_alone(tmp_path):
    p = _file(tmp_path, "read\tR EH1 D|R IY1 D\n")
    assert read_pairs(p, target_tokens="space", targets="alternatives").references == [
        [["R", "EH1", "D"], ["R", "IY1", "D"]]
    ]
    q = _file(tmp_path, "hello world\textra\nbye\n")
    only = read_pairs(q, source_tokens="space", targets="none")
    assert only.sources == [["hello", "world"], ["bye"]] and only.references == [[], []]


def test_long_targets_are_dropped_with_a_count_or_an_error(tmp_path):
    p = _file(tmp_path, "a\txyz\nb\txy\n")
    pairs = read_pairs(p, max_target_length=2)
    assert pairs.sources == [["b"]] and pairs.dropped == 1
    with pytest.raises(DataError, match=r"line 1: a target of 3 tokens, longer than --max-target-length 2"):
        read_pairs(p, max_target_length=2, too_long="error")
    with pytest.raises(DataError, match=r"no pairs \(2 dropped as too long\)"):
        read_pairs(p, max_target_length=1)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("cat K AE T\n", r"line 1: no tab; expected source<TAB>target"),
        ("cat\tK\tx\n", r"line 1: 3 tab-separated fields"),
        ("\tK AE T\n", r"line 1: empty source"),
        ("cat\t\n", r"line 1: empty target"),
        ("ok\tx\ncat\t   \n", r"line 2: empty target"),
    ],
)
def test_bad_lines_are_named(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        read_pairs(_file(tmp_path, text), target_tokens="space")


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="source_tokens must be one of chars, space"):
        read_pairs("x", source_tokens="words")
    with pytest.raises(ValueError, match="how must be one of"):
        split_tokens("a b", "bytes")


def test_a_vocabulary_with_sequence_specials_round_trips():
    vocab = TokenVocab.build([["K", "AE1", "T"], ["K", "IY1"]], max_size=100, specials=("<s>", "</s>"))
    assert vocab.tokens == ["<pad>", "<unk>", "<s>", "</s>", "AE1", "IY1", "K", "T"]
    ids, unknown = vocab.encode(["K", "AE1", "ZZ"])
    assert unknown == 1 and ids[-1].item() == 1
    eos = vocab.index["</s>"]
    assert vocab.decode(torch.cat([ids[:2], torch.tensor([eos, 4, 0])]), stop="</s>") == ["K", "AE1"]
    assert vocab.decode([6, 0, 4]) == ["K", "AE1"]  # padding left out
    with pytest.raises(ValueError, match=r"ids must be in \[0, 8\)"):
        vocab.decode([8])
