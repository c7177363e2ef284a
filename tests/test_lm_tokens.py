"""The LM's tokens (chars, words, bpe) and beam search: exact round trips, bpc by hand, beam vs exhaustive search,
training and bit-exact resume of words and bpe runs, and old (chars) runs still loading."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from rnnkit.checkpoint import load_checkpoint, load_run, save_checkpoint
from rnnkit.cli import main
from rnnkit.data import Vocab
from rnnkit.data.tokens import TOKENIZERS, BpeTokenizer, CharTokenizer, WordTokenizer, require_tokenizers
from rnnkit.errors import CheckpointError, ConfigError, DataError
from rnnkit.metrics import evaluate_text
from rnnkit.sampling import beam_search, best_continuation, sample_text
from rnnkit.tasks.language_model import CharLM, LMConfig, LMModelConfig, LMTask
from rnnkit.train import train

TEXT = (
    'def área(x, y):\n    """Return the area: x × y (ünits²)."""\n    return x * y  # 面积 😀\n\n'
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
)
UNSEEN = "naïve café 日本語 🙂👍🏽 e\u0301 \r\n\t\x00 \u2028 zebra_quux42 ==> ''"


def _fitted(kind: str, text: str = TEXT):
    return CharTokenizer.fit(text) if kind == "chars" else TOKENIZERS[kind].fit(text, vocab_size=300, min_count=2)


# --- tokenizers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chars", "words", "bpe"])
def test_round_trip_is_exact_and_characters_add_up(kind):
    tok = _fitted(kind, TEXT * 3)
    for text in (TEXT, TEXT[7:50], "x", ""):
        ids = tok.encode(text)
        assert tok.decode(ids) == text and "".join(tok.stream(ids)) == text
        assert int(tok.char_lengths()[torch.tensor(ids, dtype=torch.long)].sum()) == len(text)
        assert tok.ids(text).tolist() == ids
    again = type(tok).from_artefacts(json.loads(json.dumps(tok.artefacts())))  # what a checkpoint keeps
    assert again.encode(TEXT) == tok.encode(TEXT) and again.pieces == tok.pieces


def test_words_spell_out_rare_words_and_mark_unseen_characters():
    tok = WordTokenizer.fit("the cat the hat the end", vocab_size=20, min_count=2)
    assert tok.tokens == ["\ufffd", " ", "a", "c", "d", "e", "h", "n", "t", "the"]  # words seen once are left out
    assert [tok.decode([i]) for i in tok.encode("the hat")] == ["the", " ", "h", "a", "t"]
    text = "then the    chat\n"  # "then", "chat" and the run of 4 spaces are spelled out; "\n" was never seen
    assert [tok.decode([i]) for i in tok.encode(text)] == [*"then", " ", "the", *"    ", *"chat", "\ufffd"]
    assert tok.decode(tok.encode(text)) == "then the    chat\ufffd"
    assert tok.count_unknown("the dog!") == 3 and tok.missing("dog!") == ["!", "g", "o"]
    small = WordTokenizer.fit("aa aa aa bb bb cc", vocab_size=6, min_count=1)  # U+FFFD, " ", a, b, c + 1 word
    assert small.tokens == ["\ufffd", " ", "a", "b", "c", "aa"]
    with pytest.raises(DataError, match="vocab_size=4 is smaller than the 5 ids"):
        WordTokenizer.fit("aa bb cc", vocab_size=4, min_count=1)


def test_bpe_knows_every_byte_and_streams_characters_split_across_pieces():
    tok = BpeTokenizer.fit(TEXT * 3, vocab_size=300, min_count=2)
    assert len(tok) == 300 and tok.unknown_id is None and tok.missing(UNSEEN) == []
    ids = tok.encode(UNSEEN)
    assert tok.decode(ids) == UNSEEN == tok.tokenizer.decode(ids)  # the library's own decoder agrees
    split = [i for i in ids if tok.char_lengths()[i] == 0]  # pieces that hold only continuation bytes
    assert split, "no character of the unseen text spans two pieces: the streaming test below tests nothing"
    parts = list(tok.stream(ids))
    assert "".join(parts) == UNSEEN and len(parts) < len(ids)  # partial characters waited for their other bytes
    assert all("\ufffd" not in p for p in parts)
    assert tok.decode(tok.encode("🙂")[:1]) == "\ufffd"  # half an emoji alone is not text
    # a long text is encoded in parts cut where the pre-tokenizer splits anyway: the same ids as in one call
    long = (TEXT + UNSEEN + "\n") * 40
    BpeTokenizer.PART, part = 64, BpeTokenizer.PART
    try:
        assert len(tok._parts(long)) > 10 and tok.encode(long) == tok.tokenizer.encode(long).ids
    finally:
        BpeTokenizer.PART = part
    assert BpeTokenizer.fit(TEXT * 3, vocab_size=300, min_count=2).artefacts() == tok.artefacts()  # deterministic


def test_missing_tokenizers_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tokenizers", None)  # import tokenizers -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'rnnkit\[bpe\]'"):
        BpeTokenizer.fit("abc abc", vocab_size=300, min_count=1)
    with pytest.raises(CheckpointError, match=r"pip install 'rnnkit\[bpe\]'"):
        BpeTokenizer.from_artefacts({"tokens": "bpe", "tokenizer": "{}"})
    assert require_tokenizers is not None


# --- bits per character, by hand ------------------------------------------------------------------------------------


def _uniform(V: int) -> CharLM:
    """A model that gives every token probability 1/V whatever the past: each token costs ln V nats."""
    torch.manual_seed(0)
    model = CharLM(V, LMModelConfig(hidden_size=4, embedding_size=3))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model.eval()


def test_bpc_of_a_words_model_by_hand():
    tok = WordTokenizer(["\ufffd", " ", "a", "b", "ab"])
    text = "ab ab ab"  # ab | " " | ab | " " | ab: the first token is context; 4 targets holding 1+2+1+2 = 6 characters
    assert [tok.decode([i]) for i in tok.encode(text)] == ["ab", " ", "ab", " ", "ab"]
    m = evaluate_text(_uniform(5), tok, text, batch_size=1, bptt=16)
    assert (m["tokens"], m["chars"]) == (4, 6)
    assert m["loss"] == pytest.approx(math.log(5)) and m["ppl"] == pytest.approx(5.0)
    assert m["bpc"] == pytest.approx(4 * math.log2(5) / 6)
    # the same model over characters: 7 targets of one character each, log2(V) bits per character
    chars = CharTokenizer(Vocab(" ab"))
    c = evaluate_text(_uniform(3), chars, text, batch_size=1, bptt=16)
    assert (c["tokens"], c["chars"]) == (7, 7) and c["bpc"] == pytest.approx(math.log2(3))


def test_bpc_of_a_bpe_model_by_hand():
    tok = BpeTokenizer.fit(TEXT * 3, vocab_size=280, min_count=2)
    ids = tok.encode(TEXT)
    m = evaluate_text(_uniform(280), tok, TEXT, batch_size=1, bptt=len(ids))
    first = tok.decode(ids[:1])  # context only
    assert m["tokens"] == len(ids) - 1 and m["chars"] == len(TEXT) - len(first)
    assert m["bpc"] == pytest.approx((len(ids) - 1) * math.log2(280) / (len(TEXT) - len(first)))


# --- beam search ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(3)
    vocab = Vocab("abc\n")  # V = 4, no unknown symbol
    model = CharLM(4, LMModelConfig(hidden_size=6, embedding_size=3, num_layers=2)).double().eval()
    return model, vocab


def _exhaustive(model, vocab, prompt: str, length: int) -> tuple[list[int], float]:
    """Oracle: the log-probability of every one of the V^length continuations, each by one full forward pass."""
    context = vocab.encode(prompt)
    seqs = torch.tensor(list(itertools.product(range(len(vocab)), repeat=length)))  # (V^L, L)
    x = torch.cat([torch.tensor(context).expand(len(seqs), -1), seqs], 1)  # (V^L, C + L)
    with torch.no_grad():
        logp = model(x)[0].log_softmax(-1)  # (V^L, C + L, V)
    C = len(context)
    scores = logp[:, C - 1 : -1].gather(2, seqs.unsqueeze(2)).squeeze(2).sum(1)  # (V^L,)
    best = int(scores.argmax())
    return seqs[best].tolist(), float(scores[best])


@pytest.mark.parametrize("prompt", ["ab", "c\na"])
def test_beam_search_finds_the_exhaustive_best_and_beam_one_is_greedy(tiny, prompt):
    model, vocab = tiny
    L = 4
    best, score = _exhaustive(model, vocab, prompt, L)
    got, got_score = best_continuation(model, vocab, prompt, L, beam=len(vocab) ** (L - 1))  # keeps every prefix
    assert got == best and got_score == pytest.approx(score, abs=1e-9)
    assert "".join(beam_search(model, vocab, prompt, L, beam=64)) == vocab.decode(best)
    greedy, _ = best_continuation(model, vocab, prompt, L, beam=1)
    assert vocab.decode(greedy) == sample_text(model, vocab, prompt, L, temperature=0)
    assert len(list(beam_search(model, vocab, prompt, L, beam=1))) == L  # one beam: each token final at once
    for beam in (2, 3, 7):  # a narrower beam: a real continuation, scored as the model scores it, never above the best
        tokens, s = best_continuation(model, vocab, prompt, L, beam=beam)
        assert len(tokens) == L and s <= score + 1e-9
        assert s == pytest.approx(_exhaustive_score(model, vocab, prompt, tokens), abs=1e-9)


def _exhaustive_score(model, vocab, prompt, tokens) -> float:
    x = torch.tensor([vocab.encode(prompt) + tokens])
    with torch.no_grad():
        logp = model(x)[0].log_softmax(-1)[0]  # (T, V)
    C = len(prompt)
    return float(sum(logp[C - 1 + t, tok] for t, tok in enumerate(tokens)))


def test_beam_search_never_emits_the_unknown_symbol_and_checks_its_arguments(tiny):
    model, _ = tiny
    vocab = Vocab(["\n", "a", "b", "\ufffd"])  # the unknown symbol stands for unseen characters
    with torch.no_grad():
        model.head.bias[3] = 50.0  # make it by far the likeliest token
    try:
        tokens, _ = best_continuation(model, vocab, "a", 3, beam=5)
    finally:
        with torch.no_grad():
            model.head.bias[3] = 0.0
    assert 3 not in tokens and len(tokens) == 3
    with pytest.raises(ValueError, match="beam must be an integer >= 1, got 0"):
        list(beam_search(model, vocab, "a", 3, beam=0))
    with pytest.raises(DataError, match="prompt characters not in the model's vocabulary: 'z'"):
        list(beam_search(model, vocab, "z", 3, beam=2))
    assert best_continuation(model, vocab, "a", 0, beam=2) == ([], 0.0)


# --- runs: train, resume, sample, eval, old runs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("lmtok") / "text.txt"
    p.write_text(TEXT * 12, encoding="utf-8")
    return p


def _config(text_file, tokens: str, vocab_size: int = 300, **train) -> LMConfig:
    t = {"batch_size": 4, "bptt": 8, "max_steps": 6, "max_minutes": 0, "eval_every": 3, "log_every": 1}
    d = {
        "data": str(text_file),
        "val_fraction": 0.2,
        "tokens": tokens,
        "vocab_size": 0 if tokens == "chars" else vocab_size,
    }
    return LMConfig.from_dict({"model": {"embedding_size": 6, "hidden_size": 12}, "data": d, "train": t | train})


@pytest.fixture(scope="module")
def runs(text_file, tmp_path_factory):
    """A words run and a bpe run, 6 steps each; the bpe run also interrupted at step 4 and resumed."""
    root = tmp_path_factory.mktemp("lmtok-runs")
    out = {kind: (root / kind, train(LMTask(_config(text_file, kind)), root / kind)) for kind in ("words", "bpe")}

    def interrupt(event):
        if event["kind"] == "step" and event["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(LMTask(_config(text_file, "bpe")), root / "resumed", on_event=interrupt)
    assert load_checkpoint(root / "resumed" / "last.pt")["step"] == 4
    out["resumed"] = (root / "resumed", train(LMTask(_config(text_file, "bpe")), root / "resumed", resume=True))
    return out


def test_bpe_run_resumes_bit_exactly(runs):
    (straight_dir, straight), (resumed_dir, resumed) = runs["bpe"], runs["resumed"]
    assert resumed.steps == 6 and resumed.last == straight.last and resumed.best == straight.best
    a, b = (load_checkpoint(d / "last.pt") for d in (straight_dir, resumed_dir))
    assert a["artefacts"] == b["artefacts"] and a["artefacts"]["tokens"] == "bpe"
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


@pytest.mark.parametrize("kind", ["words", "bpe"])
def test_a_tokens_run_trains_loads_samples_and_scores(kind, runs, text_file, capsys):
    run_dir, result = runs[kind]
    assert result.steps == 6 and {"bpc", "ppl", "tokens", "chars"} <= set(result.last)
    run = load_run(run_dir)
    assert run.config.data.tokens == kind and len(run.task.tokenizer) == run.model.vocab_size <= 300
    assert (run_dir / {"words": "tokens.json", "bpe": "tokenizer.json"}[kind]).is_file()
    capsys.readouterr()
    assert main(["eval", "--run", str(run_dir), "--data", str(text_file), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    tok = run.task.tokenizer
    text = text_file.read_text(encoding="utf-8")
    ids = tok.encode(text)
    assert 0 < got["tokens"] <= len(ids) - 1 and 0 < got["chars"] <= len(text) - len(tok.decode(ids[:1]))
    assert got["bpc"] == pytest.approx(got["loss"] * got["tokens"] / got["chars"] / math.log(2), rel=1e-9)
    assert got["ppl"] == pytest.approx(math.exp(got["loss"]))
    assert main(["sample", "--run", str(run_dir), "--prompt", "def ", "--length", "12", "--seed", "2"]) == 0
    assert len(capsys.readouterr().out) > 1
    assert main(["sample", "--run", str(run_dir), "--prompt", "def ", "--length", "12", "--beam", "3"]) == 0
    tokens, _ = best_continuation(run.model, tok, "def ", 12, beam=3)
    assert capsys.readouterr().out == tok.decode(tokens) + "\n"


def test_chars_runs_keep_their_artefacts_and_old_runs_load(text_file, tmp_path):
    run_dir = tmp_path / "chars"
    train(LMTask(_config(text_file, "chars", max_steps=2, eval_every=2)), run_dir)
    payload = load_checkpoint(run_dir / "best.pt")
    assert set(payload["artefacts"]) == {"vocab"}  # what chars runs always saved
    # a run from before the tokenizers: no tokens, vocab_size or min_count in its config
    for key in ("tokens", "vocab_size", "min_count"):
        del payload["config"]["data"][key]
    old = tmp_path / "old"
    old.mkdir()
    save_checkpoint(old / "best.pt", payload)
    run = load_run(old)
    assert isinstance(run.task.tokenizer, CharTokenizer) and run.vocab == Vocab(payload["artefacts"]["vocab"])
    assert len("".join(run.task.sample(run.model, prompt="def", length=20))) == 21


def test_token_options_are_checked(text_file, capsys):
    assert main(["train", "lm", "--data", str(text_file), "--vocab-size", "100", "--max-steps", "1"]) == 2
    assert "vocab_size applies to --tokens words or bpe, got 100 with chars" in capsys.readouterr().err
    assert main(["train", "lm", "--data", str(text_file), "--tokens", "sentencepiece", "--max-steps", "1"]) == 2
    assert "tokens must be one of chars, words, bpe, got 'sentencepiece'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"vocab_size for --tokens bpe must be >= 256 \(the byte alphabet\), got 100"):
        LMTask(_config(text_file, "bpe", vocab_size=100)).prepare(None)
