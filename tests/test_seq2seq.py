"""The encoder-decoder with attention: padding is ignored, beam 1 is greedy, beam scores are the model's own
log-probabilities, and the reverse task is learned."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import _seq2seq_reference as reference
from conftest import one_error_line
from rnnkit import seq2seq
from rnnkit.cli import main
from rnnkit.seq2seq import BOS, EOS, PAD, Attention, Seq2Seq, alignment, beam_search, greedy
from rnnkit.sequence import pad_sequences
from rnnkit.tasks.seq2seq import Seq2SeqConfig, Seq2SeqTask, edit_distance, sequence_scores

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(attention="general", **kw) -> Seq2Seq:
    torch.manual_seed(0)
    return Seq2Seq(12, 9, embedding_size=6, hidden_size=8, attention=attention, **kw).eval()


def _batch(seqs):
    x, lengths = pad_sequences([torch.tensor(s) for s in seqs])
    return x, lengths


@pytest.mark.parametrize("attention", ["dot", "general", "bahdanau"])
@pytest.mark.parametrize("mode", ["lstm", "gru", "elman"])
def test_more_padding_changes_no_output(attention, mode):
    model = _model(attention, mode=mode)
    x, lengths = _batch([[4, 5, 6, 7], [8, 9]])
    wider = torch.cat([x, torch.zeros(2, 3, dtype=torch.long)], dim=1)  # three more padding steps
    target = torch.tensor([[BOS, 4, 5], [BOS, 6, 4]])
    torch.testing.assert_close(model(x, lengths, target), model(wider, lengths, target))
    memory, state = model.encode(wider, lengths)
    _, _, a = model.step(torch.tensor([BOS, BOS]), state, memory)
    assert (a[1, 2:] == 0).all() and torch.allclose(a.sum(-1), torch.ones(2))


def test_attention_checks_its_arguments():
    with pytest.raises(ValueError, match="kind must be one of dot, general, bahdanau"):
        Attention("cosine", 4, 4)
    with pytest.raises(ValueError, match="dot attention needs query_size == memory_size"):
        Attention("dot", 4, 6)


@pytest.mark.parametrize("tie", [False, True])
def test_beam_one_is_greedy(tie):
    model = _model(tie_embeddings=tie)
    x, lengths = _batch([[4, 5, 6], [7, 8, 9, 10, 11], [5]])
    g = greedy(model, x, lengths, max_length=7)
    b = beam_search(model, x, lengths, beam=1, max_length=7)
    assert [h.tokens for h in g] == [h[0].tokens for h in b]
    assert [h.score for h in g] == pytest.approx([h[0].score for h in b], abs=1e-5)


def test_a_beam_score_is_the_log_probability_of_its_sequence():
    model = _model(attention="bahdanau", num_layers=2, decoder_layers=2)
    x, lengths = _batch([[4, 5, 6, 7], [8, 9]])
    results = beam_search(model, x, lengths, beam=4, max_length=6, n_best=3)
    for row, hyps in enumerate(results):
        assert len(hyps) == 3
        assert [h.normalised for h in hyps] == sorted((h.normalised for h in hyps), reverse=True)
        for h in hyps:
            target = torch.tensor([[BOS, *h.tokens]])
            logits = model(x[row : row + 1, : lengths[row]], lengths[row : row + 1], target[:, :-1])
            logp = F.log_softmax(logits, -1).gather(-1, target[:, 1:, None]).sum().item()
            assert h.score == pytest.approx(logp, abs=1e-4)
            assert h.tokens[-1] == EOS or len(h.tokens) == 6


def test_wider_beams_find_sequences_at_least_as_likely():
    model = _model()
    x, lengths = _batch([[4, 5, 6, 7, 8], [9, 10, 11]])
    narrow = beam_search(model, x, lengths, beam=1, max_length=8, alpha=0.0)
    wide = beam_search(model, x, lengths, beam=6, max_length=8, alpha=0.0)
    for a, b in zip(narrow, wide, strict=True):
        assert b[0].score >= a[0].score - 1e-6


@pytest.mark.slow
def test_learns_to_reverse_sequences():
    # 8 symbols, lengths 3 to 10, 300 steps of 32: exact on every held-out row here (0.97 at 200 steps), in about a
    # seventh of the CPU time of 10 symbols up to length 20 (reversal needs the attention either way)
    torch.manual_seed(0)
    model = Seq2Seq(12, 12, embedding_size=16, hidden_size=32, attention="general")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=300, pct_start=0.2)
    g = torch.Generator().manual_seed(0)

    def batch(n):
        seqs = [torch.randint(4, 12, (int(torch.randint(3, 11, (1,), generator=g)),), generator=g) for _ in range(n)]
        x, lengths = pad_sequences(seqs)
        y, _ = pad_sequences([torch.cat([torch.tensor([BOS]), s.flip(0), torch.tensor([EOS])]) for s in seqs])
        return x, lengths, y, seqs

    for _ in range(300):
        x, lengths, y, _ = batch(32)
        logits = model(x, lengths, y[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), y[:, 1:], ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    x, lengths, _, seqs = batch(200)
    hyps = greedy(model, x, lengths, max_length=15)
    exact = sum(h.tokens == [*s.flip(0).tolist(), EOS] for h, s in zip(hyps, seqs, strict=True)) / len(seqs)
    assert exact >= 0.99, exact
    # a confident model makes </s> the second-best first token: that early, unlikely ending must not end the search
    beams = beam_search(model, x, lengths, beam=3, max_length=15)
    exact = sum(h[0].tokens == [*s.flip(0).tolist(), EOS] for h, s in zip(beams, seqs, strict=True)) / len(seqs)
    assert exact >= 0.99, exact


# --- the task and its commands ----------------------------------------------------------------------------------


def test_edit_distance_and_sequence_scores_by_hand():
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert edit_distance([], ["a", "b"]) == 2
    m = sequence_scores(
        [["K", "AE", "T"], ["R", "EH", "D"], ["D", "OW"]],
        [[["K", "AE", "T"]], [["R", "IY", "D"], ["R", "EH", "D"]], [["D", "AO", "G"]]],
    )
    # wrong: only the third; edits: 0, 0 (second reference), 2 (substitute OW, insert G) over 3 + 3 + 3 tokens
    assert m == {"wer": pytest.approx(1 / 3), "ter": pytest.approx(2 / 9), "exact": pytest.approx(2 / 3), "n": 3}


def test_held_out_sources_keep_all_their_targets_on_one_side(tmp_path):
    lines = [f"w{i}\tp{i}\n" for i in range(40)] + ["w3\tq3\n", "w7\tq7\n"]
    p = tmp_path / "pairs.tsv"
    p.write_text("".join(lines))
    cfg = Seq2SeqConfig.from_dict({"data": {"data": str(p), "val_fraction": 0.25}})
    task = Seq2SeqTask(cfg)
    task.prepare(None)
    held = {tuple(s.tolist()) for s in task.val_set.sources}
    assert len(held) == 10 and all("".join(s) not in held for s in task.read(str(p), "required").sources
                                   if "".join(s) not in held)  # fmt: skip
    for source, refs in zip(task.val_pairs.sources, task.val_pairs.references, strict=True):
        word = "".join(source)
        expected = [list(t.split("\t")[1].strip()) for t in lines if t.split("\t")[0] == word]
        assert refs == expected  # w3 and w7, when held out, are scored against both their targets


def test_train_predict_and_eval_from_the_command_line(tmp_path, capsys):
    pairs = tmp_path / "pairs.tsv"
    words = ["abc", "bca", "cab", "abcd", "dcab", "bd", "db", "cc", "ad", "da", "bad", "dab"]
    pairs.write_text("".join(f"{w}\t{w[::-1]}\n" for w in words * 6))
    run = tmp_path / "run"
    sizes = ["--hidden-size", "16", "--embedding-size", "8", "--attention", "bahdanau"]
    argv = ["train", "seq2seq", "--data", str(pairs), "--out", str(run), "--max-steps", "30", "--max-minutes", "0",
            "--eval-every", "15", *sizes]  # fmt: skip
    assert main(argv) == 0
    assert (run / "attention.png").stat().st_size > 0
    capsys.readouterr()
    new = tmp_path / "new.txt"
    new.write_text("bad\nabzc\tignored\n")
    assert main(["predict", "--run", str(run), "--data", str(new), "--beam", "3"]) == 0
    out = capsys.readouterr()
    rows = out.out.splitlines()
    assert [r.split("\t")[0] for r in rows] == ["bad", "abzc"]  # input order, sources as written
    assert "1 source token(s) not in the run's vocabulary" in out.err
    assert main(["predict", "--run", str(run), "--data", str(new), "--beam", "3", "--n-best", "2"]) == 0
    assert [r.split("\t")[0] for r in capsys.readouterr().out.splitlines()] == ["bad", "bad", "abzc", "abzc"]
    status = main(["predict", "--run", str(run), "--data", str(new), "--n-best", "2"])
    assert "--n-best must be <= --beam" in one_error_line(capsys, status)
    assert main(["eval", "--run", str(run), "--data", str(pairs), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["task"] == "seq2seq" and m["n"] == len(words) and set(m) >= {"wer", "ter", "exact", "beam"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("abc\n")
    status = main(["eval", "--run", str(run), "--data", str(bad)])
    assert "line 1: no tab; expected source<TAB>target" in one_error_line(capsys, status)


def test_alignment_rows_are_distributions_over_the_source():
    model = _model("bahdanau")
    tokens, weights = alignment(model, torch.tensor([4, 5, 6, 7]), max_length=5)
    assert weights.shape == (len(tokens), 4) and torch.allclose(weights.sum(-1), torch.ones(len(tokens)))
    x, lengths = _batch([[4, 5, 6, 7]])
    assert tokens == greedy(model, x, lengths, 5)[0].tokens


# --- the parallel decoder, the batched search, old checkpoints --------------------------------------------------


def _pairs(seed=0, n=5, target_length=7):
    g = torch.Generator().manual_seed(seed)
    x, lengths = pad_sequences([torch.randint(4, 12, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g)
                                for _ in range(n)])  # fmt: skip
    y = torch.randint(4, 9, (n, target_length), generator=g)
    y[:, 0] = BOS
    return x, lengths, y


@pytest.mark.parametrize("attention", ["dot", "general", "bahdanau"])
@pytest.mark.parametrize("mode", ["lstm", "gru", "elman", "layernorm-gru"])
def test_parallel_teacher_forcing_equals_the_step_by_step_decoder(attention, mode):
    """Without input feeding, the decoder RNN over the whole target and the batched attention give the logits and
    gradients of ``step`` run token by token, in fp32 and (within bf16's rounding) under bf16 autocast."""
    model = _model(attention, mode=mode, decoder_layers=2, input_feeding=False)
    x, lengths, y = _pairs()
    parallel, steps = model(x, lengths, y), model.forward_steps(x, lengths, y)
    torch.testing.assert_close(parallel, steps, atol=1e-5, rtol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    g_parallel = torch.autograd.grad(parallel.square().sum(), params)
    g_steps = torch.autograd.grad(steps.square().sum(), params)
    for a, b in zip(g_parallel, g_steps, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(x, lengths, y)
    torch.testing.assert_close(bf16.float(), steps, atol=2e-2, rtol=2e-2)


def test_bahdanau_in_chunks_of_the_target_equals_one_block(monkeypatch):
    model = _model("bahdanau", input_feeding=False)
    x, lengths, y = _pairs()
    whole = model(x, lengths, y)
    g_whole = torch.autograd.grad(whole.sum(), list(model.parameters()), allow_unused=True)
    monkeypatch.setattr(seq2seq, "ADDITIVE_CHUNK", 2 * 8 * 16)  # two target steps of 2 rows a chunk: recomputed
    chunked = model(x, lengths, y)
    torch.testing.assert_close(chunked, whole)
    for a, b in zip(torch.autograd.grad(chunked.sum(), list(model.parameters()), allow_unused=True), g_whole,
                    strict=True):  # fmt: skip
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-6))


def test_a_checkpoint_of_the_stacked_cells_decoder_loads():
    """Before the decoder was an rnnkit.RNN its layers were ``cells.{k}`` (a ModuleList of cells): those keys load
    into ``decoder.{kind}_l{k}``, and the parameters keep their order (an optimiser's saved state)."""
    model = _model(mode="lstm", decoder_layers=2)
    renamed = {}
    for key, value in model.state_dict().items():
        if key.startswith("decoder."):
            kind, layer = key[len("decoder.") :].rsplit("_l", 1)
            key = f"cells.{layer}.{kind}"
        renamed[key] = value
    # the names rnnkit wrote before, for an LSTM decoder of two layers
    legacy = [f"cells.{k}.{kind}" for k in (0, 1) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert [k for k in renamed if k.startswith("cells.")] == legacy
    torch.manual_seed(1)
    fresh = Seq2Seq(12, 9, embedding_size=6, hidden_size=8, decoder_layers=2).eval()
    fresh.load_state_dict(renamed)  # strict
    x, lengths, y = _pairs()
    torch.testing.assert_close(fresh(x, lengths, y), model(x, lengths, y), atol=0, rtol=0)
    names = [n for n, _ in fresh.named_parameters()]
    assert names[names.index("bridge.bias") + 1] == "decoder.weight_ih_l0"  # where cells.0.weight_ih was


@pytest.fixture(scope="module")
def reverser():
    """A tiny model trained for a little while to reverse sequences: confident enough for beams to diverge."""
    torch.manual_seed(0)
    model = Seq2Seq(12, 12, embedding_size=12, hidden_size=16, attention="general", input_feeding=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        seqs = [torch.randint(4, 12, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g) for _ in range(32)]
        x, lengths = pad_sequences(seqs)
        y, _ = pad_sequences([torch.cat([torch.tensor([BOS]), s.flip(0), torch.tensor([EOS])]) for s in seqs])
        loss = F.cross_entropy(model(x, lengths, y[:, :-1]).transpose(1, 2), y[:, 1:], ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_batched_search_finds_what_the_per_hypothesis_search_found(reverser, alpha):
    x, lengths = _batch([[4, 5, 6, 7], [8, 9], [10, 11, 4, 5, 6, 7], [9], [6, 6, 6], [7, 5, 4, 11, 10]])
    for max_length in (3, 9):  # cut short (the live beams taken as they are) and ending on </s>
        new = beam_search(reverser, x, lengths, beam=4, max_length=max_length, alpha=alpha, n_best=4)
        old = reference.beam_search(reverser, x, lengths, beam=4, max_length=max_length, alpha=alpha, n_best=4)
        assert [[h.tokens for h in row] for row in new] == [[h.tokens for h in row] for row in old]
        for row_new, row_old in zip(new, old, strict=True):
            assert [h.score for h in row_new] == pytest.approx([h.score for h in row_old], abs=1e-6)
            assert [h.normalised for h in row_new] == pytest.approx([h.normalised for h in row_old], abs=1e-6)
        assert [h.tokens for h in greedy(reverser, x, lengths, max_length)] == [
            h.tokens for h in reference.greedy(reverser, x, lengths, max_length)
        ]
    assert sum(len(set(map(tuple, (h.tokens for h in row)))) for row in new) > len(new)  # beams differ


def test_an_input_feeding_model_searches_as_before():
    model = _model("bahdanau", mode="gru", decoder_layers=2)
    x, lengths = _batch([[4, 5, 6, 7], [8, 9], [10, 11, 4]])
    new = beam_search(model, x, lengths, beam=3, max_length=6, n_best=2)
    old = reference.beam_search(model, x, lengths, beam=3, max_length=6, n_best=2)
    assert [[h.tokens for h in row] for row in new] == [[h.tokens for h in row] for row in old]


def test_validation_decodes_a_fixed_sample_and_takes_the_loss_on_every_pair(tmp_path):
    p = tmp_path / "pairs.tsv"
    p.write_text("".join(f"w{i}\tp{i}\n" for i in range(60)))
    cfg = Seq2SeqConfig.from_dict({"model": {"hidden_size": 8, "embedding_size": 4},
                                   "data": {"data": str(p), "val_fraction": 0.5, "val_decode": 7}})  # fmt: skip
    task = Seq2SeqTask(cfg)
    task.prepare(None)
    model = task.build_model()
    decoded, batched = [], []
    decode, batch = task.decode, task.val_set.batch

    def watched_decode(m, data, **kw):
        decoded.append([tuple(s.tolist()) for s in data.sources])
        return decode(m, data, **kw)

    task.decode = watched_decode
    task.val_set.batch = lambda idx: batched.append(len(idx)) or batch(idx)
    first, second = (task.evaluate(model, torch.device("cpu"), None) for _ in range(2))
    assert first == second and set(first) == {"loss", "wer", "ter", "exact"}
    held = {tuple(s.tolist()) for s in task.val_set.sources}
    assert len(held) == 30 and len(decoded[0]) == 7 and decoded[0] == decoded[1] and set(decoded[0]) <= held
    assert batched == [7, 30] * 2  # at each evaluation: the sample decoded, then the loss on every held-out pair
    assert task.val_set.sample(0, 0) is task.val_set and task.val_set.sample(30, 5) is task.val_set
    one, two = ([s.tolist() for s in task.val_set.sample(7, seed).sources] for seed in (1, 2))
    assert one != two
