"""Labelled sequences: each file format read from small files with known contents, every bad input named in one
line, the stratified split, the token vocabulary, and the length-bucketed batches (deterministic, a partition of
the examples per epoch and across DDP ranks, less padding than random batches)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.data.labelled import LengthBuckets, TokenVocab, read_examples, stratified_split
from rnnkit.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def write(tmp_path: Path, name: str, text: str) -> Path:
    """``text`` written to ``tmp_path / name`` as UTF-8 bytes (newlines kept exactly as given)."""
    p = tmp_path / name
    p.write_bytes(text.encode())
    return p


def save_npz(tmp_path: Path, name: str = "data.npz", **arrays) -> Path:
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def raises_one_line(path: Path, match: str, **kwargs) -> str:
    """The DataError message of ``read_examples(path)``: one line, naming the file, matching ``match``."""
    with pytest.raises(DataError, match=match) as info:
        read_examples(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith((f"{path}:", f"{path}, line")), message  # read_ts writes "PATH, line N: ..."
    return message


# --- .tsv ---------------------------------------------------------------------------------------------------------


def test_tsv_skips_blank_lines_strips_the_label_and_refuses_a_second_tab(tmp_path):
    p = write(tmp_path, "d.tsv", "hello world\tpos\n\n   \nkeep\t neg \r\nlast\tpos")
    ex = read_examples(p)
    assert ex.kind == "text" and ex.source == str(p) and len(ex) == 3
    assert ex.inputs == ["hello world", "keep", "last"]
    assert ex.labels == ["pos", "neg", "pos"]
    assert ex.declared_labels is None
    # text<TAB>la<TAB>bel: a tab in the text or in the label? (it once became the label "bel", silently)
    with pytest.raises(DataError, match=r"line 2: 2 tabs; a \.tsv line is text<TAB>label with one tab .*\.csv"):
        read_examples(write(tmp_path, "t.tsv", "a\tx\nkeep\ta tab\tneg\n"))
    assert (
        read_examples(write(tmp_path, "t.tsv", "a\tx\nkeep\ta tab\tneg\n"), labels="optional").inputs[1]
        == "keep\ta tab"
    )


def test_labels_are_nfc_and_a_repeated_header_is_refused(tmp_path):
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    for name, text in (("d.tsv", f"ab\t{nfc}\ncd\t{nfd}\nef\tx\n"), ("d.csv", f"ab,{nfc}\ncd,{nfd}\nef,x\n")):
        assert read_examples(write(tmp_path, name, text)).labels == [nfc, nfc, "x"]  # one class, not two
    joined = "text\tlabel\nab\tx\ncd\ty\ntext\tlabel\nef\tx\n"  # two files concatenated
    with pytest.raises(DataError, match=r"line 4 is a header line .* after the first line"):
        read_examples(write(tmp_path, "j.tsv", joined))
    with pytest.raises(DataError, match="line 2 is a header line"):
        read_examples(write(tmp_path, "j.csv", "text,label\ntext,label\nab,x\ncd,y\n"))


@pytest.mark.parametrize("header", ["text\tlabel", "Sentence\tClass", " name \t language "])
def test_tsv_header_line_is_detected_and_dropped(tmp_path, header):
    ex = read_examples(write(tmp_path, "d.tsv", f"{header}\nab\tx\ncd\ty\n"))
    assert ex.inputs == ["ab", "cd"] and ex.labels == ["x", "y"]


def test_tsv_first_line_that_is_not_a_header_is_kept(tmp_path):
    # "text" is a header word, "spam" is not a label header word: this is data
    ex = read_examples(write(tmp_path, "d.tsv", "text\tspam\nab\tham\n"))
    assert ex.inputs == ["text", "ab"] and ex.labels == ["spam", "ham"]


def test_tsv_bom_is_dropped(tmp_path):
    ex = read_examples(write(tmp_path, "d.tsv", "\ufefftext\tlabel\nab\tx\n"))
    assert ex.inputs == ["ab"] and ex.labels == ["x"]


def test_tsv_lines_end_only_at_newlines(tmp_path):
    # U+2028, NEL (U+0085) and form feed are characters of the text, not line ends (str.splitlines would split there)
    p = write(tmp_path, "d.tsv", "a\u2028b\tpos\nc\x85d\tneg\ne\x0cf\tpos\r\n")
    ex = read_examples(p)
    assert ex.inputs == ["a\u2028b", "c\x85d", "e\x0cf"] and ex.labels == ["pos", "neg", "pos"]
    assert read_examples(p, labels="optional").inputs == ex.inputs


def test_tsv_optional_labels(tmp_path):
    unlabelled = write(tmp_path, "u.tsv", "just some text\nmore\ttext\tthen\n")
    ex = read_examples(unlabelled, labels="optional")
    assert ex.inputs == ["just some text", "more\ttext"] and ex.labels is None  # one line has none: no labels
    labelled = write(tmp_path, "l.tsv", "a\tx\nb\ty\n")
    ex = read_examples(labelled, labels="optional")
    assert ex.inputs == ["a", "b"] and ex.labels == ["x", "y"]  # all labelled: kept
    ex = read_examples(write(tmp_path, "e.tsv", "a\tx\nb\t\n"), labels="optional")
    assert ex.inputs == ["a", "b"] and ex.labels is None  # an empty label: unlabelled


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a\tx\n\nno label here\n", r"line 3: expected text<TAB>label, found no label \(a tab is missing\)"),
        ("a\tx\n\tx\n", r"line 2: empty text"),
        ("a\tx\n   \ty\n", r"line 2: empty text"),
        ("a\tx\nb\t  \n", r"line 2: empty label"),
        ("\n\n  \n", r"holds no examples"),
        ("text\tlabel\n\n", r"holds no examples"),
    ],
)
def test_tsv_bad_input(tmp_path, text, match):
    raises_one_line(write(tmp_path, "d.tsv", text), match)


def test_tsv_empty_text_is_an_error_without_labels_too(tmp_path):
    raises_one_line(write(tmp_path, "d.tsv", "a\n\tx\n"), r"line 2: empty text", labels="optional")


# --- .csv ---------------------------------------------------------------------------------------------------------


def test_csv_quoting_header_and_blank_lines(tmp_path):
    text = 'sentence,label\n"hello, world",pos\n\nplain,neg\n"say ""hi"", ok", pos \n'
    ex = read_examples(write(tmp_path, "d.CSV", text))  # the extension is case-insensitive
    assert ex.kind == "text"
    assert ex.inputs == ["hello, world", "plain", 'say "hi", ok'] and ex.labels == ["pos", "neg", "pos"]


def test_csv_without_header_keeps_the_first_row(tmp_path):
    ex = read_examples(write(tmp_path, "d.csv", "a,x\nb,y\n"))
    assert ex.inputs == ["a", "b"] and ex.labels == ["x", "y"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,x\nb,y,z\n", r"line 2: expected 2 columns \(text, label\), found 3"),
        ("a,x\nonly text\n", r"line 2: expected text,label, found no label \(a comma is missing\)"),
        ('a,x\n"",y\n', r"line 2: empty text"),
        ("a,x\nb,\n", r"line 2: empty label"),
        ("text,label\n", r"holds no examples"),
        (",\n , \n", r"holds no examples"),
    ],
)
def test_csv_bad_input(tmp_path, text, match):
    raises_one_line(write(tmp_path, "d.csv", text), match)


def test_csv_optional_labels(tmp_path):
    ex = read_examples(write(tmp_path, "d.csv", '"one, two"\nthree\n'), labels="optional")
    assert ex.inputs == ["one, two", "three"] and ex.labels is None


# --- .npz ---------------------------------------------------------------------------------------------------------


def test_npz_three_dims_lengths_and_numeric_labels(tmp_path):
    X = np.arange(2 * 3 * 2, dtype=np.float64).reshape(2, 3, 2)
    X[0, 2] = np.nan  # in the padding past lengths[0] = 2: never read
    p = save_npz(tmp_path, X=X, y=np.array([1.0, 0.0]), lengths=np.array([2, 3]))
    ex = read_examples(p)
    assert ex.kind == "series" and ex.source == str(p) and len(ex) == 2
    assert ex.labels == ["1", "0"]  # 1.0 -> "1"
    assert [x.dtype for x in ex.inputs] == [np.float32, np.float32]
    np.testing.assert_array_equal(ex.inputs[0], [[0, 1], [2, 3]])
    np.testing.assert_array_equal(ex.inputs[1], [[6, 7], [8, 9], [10, 11]])


def test_npz_two_dims_is_univariate_and_lengths_default_to_T(tmp_path):
    p = save_npz(tmp_path, X=np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32), y=np.array(["cat", "dog"]))
    ex = read_examples(p)
    assert ex.labels == ["cat", "dog"]
    assert [x.shape for x in ex.inputs] == [(3, 1), (3, 1)]
    np.testing.assert_array_equal(ex.inputs[1][:, 0], [4, 5, 6])


def test_npz_label_values(tmp_path):
    y = np.array([2.5, -1.0, 3.0])  # only whole floats lose their ".0"
    ex = read_examples(save_npz(tmp_path, X=np.zeros((3, 1)), y=y))
    assert ex.labels == ["2.5", "-1", "3"]
    ex = read_examples(save_npz(tmp_path, "i.npz", X=np.zeros((3, 1)), y=np.array([7, 0, 7], np.int64)))
    assert ex.labels == ["7", "0", "7"]


def test_npz_without_y(tmp_path):
    p = save_npz(tmp_path, X=np.ones((2, 4, 1)))
    assert read_examples(p, labels="optional").labels is None
    raises_one_line(p, r"expected an array y \(N,\) of labels, found \['X'\]")


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"X": np.array([[[0.0], [np.nan]]]), "y": np.array([0])}, r"example 1 holds NaN"),
        ({"X": np.array([[[0.0]], [[np.inf]]]), "y": np.array([0, 1])}, r"example 2 holds an infinite value"),
        ({"X": np.array([[[0.0]], [[-np.inf]]]), "y": np.array([0, 1])}, r"example 2 holds an infinite value"),
        ({"x": np.zeros((2, 3)), "y": np.array([0, 1])}, r"expected an array X \(N, T, D\), found \['x', 'y'\]"),
        ({"X": np.zeros(5), "y": np.zeros(5)}, r"X must be a non-empty numeric array"),
        ({"X": np.zeros((0, 3, 1)), "y": np.zeros(0)}, r"X must be a non-empty numeric array"),
        ({"X": np.zeros((2, 0, 1)), "y": np.zeros(2)}, r"X must be a non-empty numeric array"),
        ({"X": np.array([["a", "b"]]), "y": np.zeros(1)}, r"X must be a non-empty numeric array"),
        ({"X": np.zeros((2, 3)), "y": np.zeros(3)}, r"y must have shape \(N,\)=\(2,\), got \(3,\)"),
        ({"X": np.zeros((2, 3)), "y": np.zeros(2), "lengths": np.array([0, 3])}, r"lengths must be"),
        ({"X": np.zeros((2, 3)), "y": np.zeros(2), "lengths": np.array([1, 4])}, r"lengths must be"),
        ({"X": np.zeros((2, 3)), "y": np.zeros(2), "lengths": np.array([1.0, 2.0])}, r"lengths must be"),
        ({"X": np.zeros((2, 3)), "y": np.zeros(2), "lengths": np.array([1, 2, 3])}, r"lengths must be"),
        ({"X": np.zeros((2, 3)), "y": np.zeros(2), "lengths": np.array(["1", "2"])}, r"lengths must be"),
        # many lengths: the message gives their range, on one line
        (
            {"X": np.zeros((40, 3)), "y": np.zeros(40), "lengths": np.arange(40, dtype=np.int64)},
            r"\[1, T=3\], got \(40,\) int64 in \[0, 39\]$",
        ),
    ],
)
def test_npz_bad_input(tmp_path, arrays, match):
    raises_one_line(save_npz(tmp_path, **arrays), match)


def test_npz_not_a_zip(tmp_path):
    raises_one_line(write(tmp_path, "d.npz", "not a zip file\n"), r"not a readable \.npz file")


def test_npz_object_arrays_are_refused(tmp_path):
    p = save_npz(tmp_path, X=np.zeros((2, 3)), y=np.array(["a", None], dtype=object))  # needs pickle to load
    raises_one_line(p, r"not a readable \.npz file")


# --- .ts ----------------------------------------------------------------------------------------------------------

TS = """\
@problemName Toy
@univariate false
@dimensions 2
@classLabel true up down flat
@data
1,2,3:4,5,6:down
7:8:up
"""


def test_ts_goes_through_read_ts_and_keeps_declared_labels(tmp_path):
    p = write(tmp_path, "toy.ts", TS)
    ex = read_examples(p)
    assert ex.kind == "series" and ex.source == str(p)
    assert ex.labels == ["down", "up"] and ex.declared_labels == ["up", "down", "flat"]
    np.testing.assert_array_equal(ex.inputs[0], np.array([[1, 4], [2, 5], [3, 6]], np.float32))
    np.testing.assert_array_equal(ex.inputs[1], np.array([[7, 8]], np.float32))
    assert ex.inputs[0].dtype == np.float32


def test_ts_without_labels(tmp_path):
    p = write(tmp_path, "u.ts", "@classLabel false\n@data\n1,2,3\n4,5\n")
    ex = read_examples(p, labels="optional")
    assert ex.labels is None and ex.declared_labels is None and [x.shape for x in ex.inputs] == [(3, 1), (2, 1)]
    raises_one_line(p, r"the file has no class labels")


def test_ts_errors_come_from_read_ts(tmp_path):
    raises_one_line(write(tmp_path, "bad.ts", "@classLabel true a b\n@data\n1,2:c\n"), r"line 3")


# --- any file -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["d.tsv", "d.csv", "d.ts", "d.npz"])
def test_empty_file(tmp_path, name):
    raises_one_line(write(tmp_path, name, ""), r"file is empty")


@pytest.mark.parametrize(("name", "shown"), [("d.txt", "'.txt'"), ("data", "'no extension'")])
def test_unknown_extension(tmp_path, name, shown):
    raises_one_line(write(tmp_path, name, "a\tb\n"), rf"expected a data file ending in \.tsv, .*got {shown}")


def test_missing_file_and_directory(tmp_path):
    raises_one_line(tmp_path / "absent.tsv", r"no such file")
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    raises_one_line(folder, r"not a regular file")


def test_binary_and_non_utf8_text(tmp_path):
    raises_one_line(write(tmp_path, "b.tsv", "a\0b\tx\n"), r"looks binary")
    p = tmp_path / "l.csv"
    p.write_bytes("caf\u00e9,x\n".encode("latin-1"))
    raises_one_line(p, r"not UTF-8 text")


# --- stratified_split ---------------------------------------------------------------------------------------------


def test_stratified_split_takes_each_class_in_proportion():
    labels = ["a"] * 10 + ["b"] * 20 + ["c"] * 4 + ["d"]
    train, val = stratified_split(labels, 0.25, seed=0)
    assert sorted(train + val) == list(range(len(labels))) and not set(train) & set(val)  # a partition
    assert train == sorted(train) and val == sorted(val)
    # round(0.25 * n): a 10 -> round(2.5) = 2 (to even), b 20 -> 5, c 4 -> 1, d 1 -> 0 (one example stays in train)
    assert Counter(labels[i] for i in val) == {"a": 2, "b": 5, "c": 1}
    assert Counter(labels[i] for i in train) == {"a": 8, "b": 15, "c": 3, "d": 1}


def test_stratified_split_is_seeded():
    labels = [str(i % 3) for i in range(60)]
    first = stratified_split(labels, 0.2, seed=7)
    assert stratified_split(labels, 0.2, seed=7) == first
    assert stratified_split(labels, 0.2, seed=8) != first  # 20 of 60 each way: another seed, another split
    assert len(first[1]) == 12


def test_stratified_split_leaves_one_in_train_and_handles_zero():
    train, val = stratified_split(["a", "a", "b", "b"], 0.9, seed=0)  # round(1.8) = 2 capped at 2 - 1
    assert len(val) == 2 and sorted(train + val) == [0, 1, 2, 3]
    assert {("a", "b")[i >= 2] for i in val} == {"a", "b"}
    assert stratified_split(["a", "b", "a"], 0.0, seed=0) == ([0, 1, 2], [])


# --- TokenVocab ---------------------------------------------------------------------------------------------------


def test_vocab_keeps_the_most_frequent_tokens_with_ties_in_code_point_order():
    # counts: c 4, a 2, b 2, B 2, d 1; max_size 5 keeps 3 tokens: c, then of the tied a/b/B the first two in
    # code-point order, B (U+0042) and a (U+0061); the kept tokens get ids in code-point order
    tokens = [list("ccab"), list("ccaBbBd")]
    vocab = TokenVocab.build(tokens, max_size=5)
    assert vocab.tokens == ["<pad>", "<unk>", "B", "a", "c"] and len(vocab) == 5
    assert vocab.index == {"<pad>": 0, "<unk>": 1, "B": 2, "a": 3, "c": 4}
    ids, unknown = vocab.encode(list("cabdB"))
    assert ids.dtype == torch.long and ids.tolist() == [4, 3, 1, 1, 2] and unknown == 2


def test_vocab_large_enough_keeps_everything():
    vocab = TokenVocab.build([["the", "cat"], ["the", "dog"]], max_size=100)
    assert vocab.tokens == ["<pad>", "<unk>", "cat", "dog", "the"]
    ids, unknown = vocab.encode([])
    assert ids.shape == (0,) and ids.dtype == torch.long and unknown == 0
    assert TokenVocab.build([["x"]], max_size=2).tokens == ["<pad>", "<unk>"]  # room for nothing else


def test_vocab_tolerates_the_special_tokens_in_the_data():
    # word-level corpora often hold "<unk>" already (Penn Treebank): it maps to the unknown id, not a second entry
    vocab = TokenVocab.build([["<unk>", "a", "<unk>", "<pad>"]], max_size=10)
    assert vocab.tokens == ["<pad>", "<unk>", "a"]
    assert vocab.encode(["<unk>", "a"])[0].tolist() == [1, 2]


@pytest.mark.parametrize("tokens", [["<unk>", "<pad>", "a"], ["<pad>", "<unk>", "a", "a"], ["a"]])
def test_vocab_refuses_a_bad_token_list(tokens):
    with pytest.raises(DataError, match="must start with <pad>, <unk> and hold each token once"):
        TokenVocab(tokens)


# --- LengthBuckets ------------------------------------------------------------------------------------------------


def flat(batches: list[torch.Tensor]) -> list[int]:
    return sorted(i for b in batches for i in b.tolist())


@pytest.mark.parametrize("bucket", [True, False])
def test_each_example_once_per_epoch(bucket):
    lengths = [(i * 7) % 13 + 1 for i in range(103)]
    buckets = LengthBuckets(lengths, batch_size=10, seed=3, bucket=bucket)
    assert len(buckets) == 11  # ceil(103 / 10)
    for epoch in range(3):
        batches = [buckets.get(epoch, k) for k in range(len(buckets))]
        assert flat(batches) == list(range(103))
        assert sorted(len(b) for b in batches) == [3] + [10] * 10


def test_get_depends_on_seed_epoch_and_k_only():
    lengths = [(i * 5) % 17 + 1 for i in range(60)]
    a = LengthBuckets(lengths, batch_size=8, seed=11)
    forward = {(e, k): a.get(e, k).tolist() for e in range(3) for k in range(len(a))}
    b = LengthBuckets(lengths, batch_size=8, seed=11)
    for e, k in reversed(list(forward)):  # another call order, across epochs
        assert b.get(e, k).tolist() == forward[e, k]
    assert LengthBuckets(lengths, batch_size=8, seed=11).get(2, 5).tolist() == forward[2, 5]  # a fresh object
    other_seed = LengthBuckets(lengths, batch_size=8, seed=12)
    assert [other_seed.get(0, k).tolist() for k in range(len(a))] != [forward[0, k] for k in range(len(a))]


@pytest.mark.parametrize("bucket", [True, False])
def test_epochs_differ(bucket):
    buckets = LengthBuckets([i % 9 + 1 for i in range(200)], batch_size=10, seed=0, bucket=bucket)
    orders = [[buckets.get(e, k).tolist() for k in range(len(buckets))] for e in range(3)]
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]


@pytest.mark.parametrize("bucket", [True, False])
def test_ddp_ranks_take_interleaved_batches_and_partition_the_epoch(bucket):
    lengths = [(i * 3) % 11 + 1 for i in range(90)]  # 9 batches of 10 on each of 3 ranks: 3 each
    world = [LengthBuckets(lengths, 10, seed=5, bucket=bucket, rank=r, world_size=3) for r in range(3)]
    single = LengthBuckets(lengths, 10, seed=5, bucket=bucket)
    assert [len(b) for b in world] == [3, 3, 3]
    for epoch in range(2):
        everything = single.epoch_batches(epoch)
        per_rank = [[b.get(epoch, k) for k in range(len(b))] for b in world]
        for r, batches in enumerate(per_rank):
            assert [x.tolist() for x in batches] == [everything[r + 3 * k].tolist() for k in range(3)]
        assert flat([x for batches in per_rank for x in batches]) == list(range(90))


def test_ddp_drops_the_remainder_evenly():
    # 25 examples in batches of 4: 7 batches; on 2 ranks 3 each, the 7th batch is dropped this epoch
    world = [LengthBuckets(list(range(1, 26)), 4, seed=0, bucket=False, rank=r, world_size=2) for r in range(2)]
    assert [len(b) for b in world] == [3, 3]
    seen = flat([b.get(0, k) for b in world for k in range(3)])
    dropped = world[0].epoch_batches(0)[6].tolist()
    assert len(set(seen)) == len(seen) and sorted(seen + dropped) == list(range(25))
    with pytest.raises(DataError, match="3 training examples make no batch on each of 2 processes"):
        LengthBuckets([1, 2, 3], batch_size=4, seed=0, world_size=2)


def test_bucketing_groups_lengths_within_a_pool():
    # fewer examples than one pool (batch_size * POOL): each batch is a run of the whole sorted order
    lengths = [(i * 37) % 101 + 1 for i in range(40)]  # 40 distinct lengths
    buckets = LengthBuckets(lengths, batch_size=8, seed=1)
    by_length = sorted(range(40), key=lambda i: lengths[i])
    runs = sorted(sorted(lengths[i] for i in b.tolist()) for b in buckets.epoch_batches(0))
    assert runs == [sorted(lengths[i] for i in by_length[s : s + 8]) for s in range(0, 40, 8)]


def test_bucketing_pads_less_than_random_batches():
    # uniform on 1..500: a random batch of 32 pads to near 500, mean 250, so about half the steps are padding
    lengths = np.random.default_rng(0).integers(1, 501, size=2000).tolist()
    for epoch in range(2):
        bucketed = LengthBuckets(lengths, 32, seed=0).padding_share(epoch)
        random = LengthBuckets(lengths, 32, seed=0, bucket=False).padding_share(epoch)
        assert 0 < bucketed < 0.1 and 0.4 < random < 0.6


def test_padding_share_by_hand():
    # bucket=False with batch_size 4 over 4 examples: one batch whatever the order; lengths 1, 2, 3, 6
    # padded = 6 * 4 = 24 steps, valid = 12: share = 1 - 12 / 24 = 0.5
    assert LengthBuckets([1, 2, 3, 6], 4, seed=9, bucket=False).padding_share() == pytest.approx(0.5)
    # batch_size 2 with bucketing (one pool): sorted batches {1, 2} and {3, 6}
    # padded = 2 * 2 + 6 * 2 = 16, valid = 12: share = 1 - 12 / 16 = 0.25
    assert LengthBuckets([6, 1, 3, 2], 2, seed=9).padding_share() == pytest.approx(0.25)
    assert LengthBuckets([5, 5, 5], 2, seed=0, bucket=False).padding_share() == 0.0
