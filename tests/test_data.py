"""Data: vocabulary, text files, the built-in corpus, the split and the TBPTT stream, against plain-Python oracles."""

from __future__ import annotations

import hashlib

import pytest
import torch

from rnnkit.data import TextStream, Vocab, batchify, default_corpus, read_text, split_text, stdlib_files
from rnnkit.errors import DataError

# --- Vocab ----------------------------------------------------------------------------------------------------


def test_vocab_sorted_round_trip_and_tensor_path():
    text = "hello, wörld! ∑ 😀\n\tx"
    v = Vocab.from_text(text)
    assert v.chars == sorted(set(text))
    assert len(v) == len(set(text)) and "ö" in v and "z" not in v
    ids = v.encode(text)
    assert ids == [v.chars.index(c) for c in text]
    assert v.encode(text, tensor=True).tolist() == ids  # the bulk path agrees with the per-character one
    assert v.encode(text, tensor=True).dtype == torch.int64
    assert v.decode(ids) == text and v.decode(torch.tensor(ids)) == text


def test_vocab_unknown_characters_are_named():
    v = Vocab.from_text("abc")
    with pytest.raises(DataError, match=r"2 character\(s\) not in the vocabulary: 'x', 'y'"):
        v.encode("abxcy")
    with pytest.raises(DataError, match="'x'"):
        v.encode("x", tensor=True)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\), got 3"):
        v.decode([3])


def test_vocab_json_save_load(tmp_path):
    v = Vocab.from_text("the quick brown fox\n\"'\\")
    assert Vocab.from_json(v.to_json()) == v
    v.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json") == v
    for bad in ["{", "[1]", '{"format": "other", "chars": ["a"]}', '{"format": "rnnkit.vocab/1", "chars": ["ab"]}']:
        with pytest.raises(DataError):
            Vocab.from_json(bad)
    with pytest.raises(DataError, match="empty"):
        Vocab.from_text("")


# --- read_text ------------------------------------------------------------------------------------------------


def test_read_text_good_and_bom(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeffhé\n".encode())
    assert read_text(p) == "hé\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), (b"", "empty"), (b"ab\0cd", "NUL byte at offset 2"), (b"ok \xff\xfe", "not UTF-8")],
)
def test_read_text_bad_files_name_the_path(tmp_path, content, message):
    p = tmp_path / "bad.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        read_text(p)
    assert str(p) in str(e.value)


def test_read_text_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        read_text(tmp_path)


# --- default corpus -------------------------------------------------------------------------------------------


def _tree(root, files):
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)


def test_stdlib_files_sorted_and_skips_tests(tmp_path):
    _tree(
        tmp_path,
        {
            "b.py": "B",
            "a/z.py": "AZ",
            "a/test/t.py": "no",
            "test/x.py": "no",
            "site-packages/pkg.py": "no",
            "c.txt": "no",
            "a.py": "A",
            "idlelib/idle_test/i.py": "no",
        },
    )
    rel = [f.relative_to(tmp_path).as_posix() for f in stdlib_files(tmp_path)]
    assert rel == sorted(["a.py", "a/z.py", "b.py"], key=lambda r: hashlib.sha1(r.encode()).hexdigest())
    assert rel == ["b.py", "a/z.py", "a.py"]  # the fixed hash order of these three paths
    assert default_corpus(0, root=tmp_path) == "B\nAZ\nA\n"
    assert default_corpus(4, root=tmp_path) == "B\nAZ"  # the cap cuts mid-file


def test_default_corpus_is_the_running_stdlib_deterministic_and_capped():
    text = default_corpus(50_000)
    assert len(text) == 50_000 and text == default_corpus(50_000)
    first = stdlib_files()[0].read_text(encoding="utf-8")
    assert text.startswith(first.rstrip("\n")[:1000])
    assert all("site-packages" not in f.parts and "test" not in f.parts for f in stdlib_files())


# --- split ----------------------------------------------------------------------------------------------------


def test_split_text_is_contiguous():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    train, val = split_text(text, 0.1)
    assert train + val == text and len(val) == 100
    with pytest.raises(DataError, match="too short"):
        split_text("abc", 0.1)


# --- stream ---------------------------------------------------------------------------------------------------


def test_batchify_rows_and_targets_match_the_stream():
    ids = torch.arange(103)
    x, y = batchify(ids, 4)
    M = 102 // 4
    assert x.shape == y.shape == (4, M)
    for b in range(4):
        assert x[b].tolist() == list(range(b * M, (b + 1) * M))
        assert y[b].tolist() == list(range(b * M + 1, (b + 1) * M + 1))


def test_stream_chunks_continue_each_row():
    ids = torch.arange(1, 200)
    s = TextStream(ids, batch_size=3, bptt=7)
    xs, ys = zip(*s.chunks(), strict=True)
    assert len(s) == len(xs) == -(-s.row_length // 7)
    assert xs[-1].size(1) == s.row_length - 7 * (len(s) - 1)  # the last chunk holds what is left
    torch.testing.assert_close(torch.cat(xs, 1), s.inputs, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(ys, 1), s.targets, rtol=0, atol=0)
    for k in range(1, len(xs)):
        assert torch.equal(xs[k][:, 0], ys[k - 1][:, -1])  # chunk k starts where chunk k-1's targets stopped
    assert [c[0].tolist() for c in s.chunks(start=2)] == [c.tolist() for c in xs[2:]]  # resume at a position
    with pytest.raises(IndexError):
        s.chunk(len(s))


def test_stream_shards_per_rank():
    ids = torch.arange(500)
    whole = TextStream(ids, batch_size=4, bptt=5)  # the same 4 rows as 2 ranks x 2 rows
    parts = [TextStream(ids, batch_size=2, bptt=5, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([p.inputs for p in parts]), whole.inputs)
    assert not set(parts[0].inputs.flatten().tolist()) & set(parts[1].inputs.flatten().tolist())
    assert len(parts[0]) == len(parts[1])  # every rank runs the same number of steps
    with pytest.raises(ValueError, match="rank"):
        TextStream(ids, 2, 5, rank=2, world_size=2)


def test_stream_shorter_than_a_batch():
    with pytest.raises(DataError, match="shorter than one batch"):
        TextStream(torch.arange(8), batch_size=4, bptt=2, world_size=2)
