"""Music: piano rolls to and from MIDI, the two heads' exact likelihoods and their samplers, learning, and the CLI.

The heads are checked against the definition of a distribution (probabilities of all 2^K frames sum to 1, the
log-likelihood is the sum of each key's conditional computed one key at a time) and their samplers against those
probabilities; the task against the per-key frequencies a model must beat on the generated ``arpeggios`` corpus.
"""

from __future__ import annotations

import itertools
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import one_error_line
from rnnkit.cli import main
from rnnkit.data.music import Piece, read_piece, read_pieces, roll_to_notes, write_midi
from rnnkit.datasets import resolve
from rnnkit.errors import DataError
from rnnkit.tasks.music import MusicConfig, MusicTask
from rnnkit.tasks.music_heads import HEADS, BernoulliHead
from rnnkit.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_roll(rng: np.random.Generator, T: int, K: int) -> np.ndarray:
    """Runs of held keys of random lengths, the last frame sounding (a roll read back ends at its last note)."""
    frames = np.zeros((T, K), dtype=bool)
    for k in range(K):
        t = int(rng.integers(0, 6))
        while t < T:
            length = int(rng.integers(1, 6))
            frames[t : t + length, k] = True
            t += length + int(rng.integers(1, 8))
    frames[-1, 0] = True
    return frames


# --- rolls and MIDI ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [1, 3, 4, 12])
def test_a_roll_written_as_midi_reads_back_identical(resolution, tmp_path):
    frames = _random_roll(np.random.default_rng(resolution), 60, 20)
    path = tmp_path / "roll.mid"
    path.write_bytes(write_midi(frames, resolution, low=40, tempo=97))
    roll = read_piece(path).roll(resolution)
    assert roll.frames.shape == (60, 128) and roll.dropped == 0
    assert np.array_equal(roll.frames[:, 40:60], frames)
    assert not roll.frames[:, :40].any() and not roll.frames[:, 60:].any()
    assert len(roll_to_notes(frames)) == len(read_piece(path).notes)  # one MIDI note per run of frames


def test_frames_sample_the_notes_sounding_at_each_step_as_jsb_did():
    # quarter, two eighths, a dotted quarter, an eighth; one note played a little late; read at 1 step per quarter
    notes = np.array([[60, 0, 1], [62, 1, 1.5], [64, 1.5, 2], [65, 2, 3.5], [67, 3.5, 4], [69, 4.05, 5]])
    roll = Piece("x", notes).roll(1)
    assert [sorted(np.flatnonzero(f)) for f in roll.frames] == [[60], [62], [65], [65], [69]]
    assert roll.dropped == 2  # the eighths at 1.5 and 3.5 sound at no quarter-note instant
    assert [sorted(np.flatnonzero(f)) for f in Piece("x", notes).roll(2).frames][:4] == [[60], [60], [62], [64]]


def test_bad_music_files_are_one_line_each(tmp_path):
    import mido

    (tmp_path / "text.mid").write_text("not a midi file")
    with pytest.raises(DataError, match=r"text\.mid: not a standard MIDI file"):
        read_piece(tmp_path / "text.mid")
    drums = mido.MidiFile()
    drums.tracks.append(mido.MidiTrack([mido.Message("note_on", channel=9, note=36, velocity=90, time=0),
                                        mido.Message("note_off", channel=9, note=36, time=240)]))  # fmt: skip
    drums.save(tmp_path / "drums.mid")
    with pytest.raises(DataError, match=r"drums.mid: only drums \(1 drum notes"):
        read_piece(tmp_path / "drums.mid")
    empty = mido.MidiFile()
    empty.tracks.append(mido.MidiTrack())
    empty.save(tmp_path / "empty.mid")
    with pytest.raises(DataError, match=r"empty\.mid: no notes"):
        read_piece(tmp_path / "empty.mid")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "readme.txt").write_text("no music here")
    with pytest.raises(DataError, match=r"none: no music files in it \(.mid"):
        read_pieces(tmp_path / "none")
    with pytest.raises(DataError, match="none of its 3 music files could be read"):
        read_pieces(tmp_path)
    (tmp_path / "good.mid").write_bytes(write_midi(np.ones((4, 1), bool), 4, low=60))
    pieces, skipped = read_pieces(tmp_path)  # a folder: the broken files are skipped and counted
    assert [p.name for p in pieces] == ["good"] and skipped == 3


# --- the heads --------------------------------------------------------------------------------------------------


def _head(name: str, H=3, K=4, N=5) -> torch.nn.Module:
    torch.manual_seed(0)
    head = HEADS[name](H, K, N).double()
    for p in head.parameters():  # larger than the default init, so the keys depend on each other clearly
        torch.nn.init.normal_(p, std=1.5)
    return head


@pytest.mark.parametrize("name", sorted(HEADS))
def test_each_head_is_a_distribution_over_all_frames(name):
    head, K = _head(name), 4
    h = torch.randn(2, 3, dtype=torch.float64)  # two states
    frames = torch.tensor(list(itertools.product([0.0, 1.0], repeat=K)), dtype=torch.float64)  # (16, K)
    logp = head.log_prob(h[:, None, :].expand(2, 16, 3), frames.expand(2, 16, K))  # (2, 16)
    assert logp.dtype == torch.float64 and torch.allclose(logp.exp().sum(1), torch.ones(2, dtype=torch.float64))
    assert logp.exp().max() < 0.9  # not a degenerate distribution


def _conditionals_one_key_at_a_time(head, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """log p(v_k | v_<k, h) per key, straight from each head's equations (no cumsum, no shared code)."""
    if isinstance(head, BernoulliHead):
        p = torch.sigmoid(head.out.weight @ h + head.out.bias)  # (K,)
        return torch.log(torch.where(v > 0, p, 1 - p))
    c, b = head.biases(h).split((head.nade_size, head.keys))
    out = []
    for k in range(head.keys):
        a = c + sum((v[j] * head.W[:, j] for j in range(k)), torch.zeros_like(c))  # (N,)
        p = torch.sigmoid(b[k] + head.V[k] @ torch.sigmoid(a))
        out.append(torch.log(p if v[k] > 0 else 1 - p))
    return torch.stack(out)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_the_log_likelihood_is_the_sum_of_each_keys_conditional(name):
    head = _head(name, K=6)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        h = torch.randn(3, generator=g, dtype=torch.float64)
        v = torch.bernoulli(torch.full((6,), 0.4, dtype=torch.float64), generator=g)
        want = _conditionals_one_key_at_a_time(head, h, v).sum()
        assert torch.allclose(head.log_prob(h, v), want, atol=1e-12)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_sampling_follows_the_heads_distribution(name):
    head, K, n = _head(name, K=3), 3, 20_000
    h = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    frames = torch.tensor(list(itertools.product([0.0, 1.0], repeat=K)), dtype=torch.float64)  # (8, K)
    p = head.log_prob(h.expand(8, 3), frames).exp().detach()  # (8,)
    draws = head.sample(h.expand(n, 3), 1.0, torch.Generator().manual_seed(0))  # (n, K)
    codes = (draws * torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)).sum(1).long()
    observed = torch.bincount(codes, minlength=8).double()
    chi2 = float(((observed - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 24.3, (chi2, observed / n, p)  # the chi-square(7) 99.9% point: fails by chance 1 in 1,000
    # temperature 0 is the greedy frame; a temperature near 0 samples it
    greedy = head.predict(h)
    assert torch.equal(head.sample(h, 0.0), greedy)
    assert torch.equal(head.sample(h.expand(50, 3), 1e-4, torch.Generator().manual_seed(0)), greedy.expand(50, K))


# --- the task: learning the generated corpus, and the CLI -------------------------------------------------------


def _config(head: str, **train_options) -> MusicConfig:
    t = {"batch_size": 16, "max_steps": 250, "max_minutes": 0, "eval_every": 125, "lr": 1e-2, "warmup_steps": 10,
         "log_every": 25} | train_options  # fmt: skip
    m = {"mode": "gru", "hidden_size": 48, "head": head, "nade_size": 24}
    return MusicConfig.from_dict({"model": m, "data": {"data": ["arpeggios"], "val": ["arpeggios:val"]}, "train": t})


def _per_key_frequencies_nll(task: MusicTask) -> float:
    """NLL per frame of the validation pieces under each key's training frequency, independent of all else."""
    train = np.concatenate([r[:, task.low : task.high + 1] for r in task.train_pieces])  # (N, K)
    p = train.mean(0).clip(1e-6, 1 - 1e-6)
    val = torch.cat(task.val_set["frames"]).numpy()  # (M, K)
    return float(-(val * np.log(p) + (1 - val) * np.log(1 - p)).sum(1).mean())


def _train_both(out: Path, **train_options) -> dict:
    """A NADE run and a Bernoulli run on the built-in ``arpeggios``."""
    runs = {}
    for head in ("nade", "bernoulli"):
        task = MusicTask(_config(head, **train_options))
        runs[head] = train(task, out / head)
        runs[head].prepared = task  # the task object, with its data
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Briefly trained runs for the commands' tests (a second of CPU each)."""
    return _train_both(tmp_path_factory.mktemp("music"), max_steps=16, eval_every=8)


@pytest.mark.slow
def test_the_generated_corpus_is_learned_far_below_per_key_frequencies(tmp_path):
    runs = _train_both(tmp_path)  # 250 steps: about 8 s of CPU each
    baseline = _per_key_frequencies_nll(runs["nade"].prepared)
    nade, bernoulli = (runs[h].best["nll_per_frame"] for h in ("nade", "bernoulli"))
    assert nade < 0.5 * baseline and bernoulli < 0.8 * baseline, (nade, bernoulli, baseline)
    assert nade < bernoulli  # a chord is not independent keys
    assert runs["nade"].best["frame_accuracy"] > 0.5


def test_eval_and_sample_through_the_cli(runs, tmp_path, capsys):
    run = runs["nade"].run_dir
    assert main(["eval", "--run", str(run), "--data", "arpeggios:val", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["task"] == "music" and scores["frames"] == 40 * 80 and scores["pieces"] == 40
    assert scores["out_of_range_notes"] == 0
    assert scores["nll_per_frame"] == pytest.approx(runs["nade"].best["nll_per_frame"], rel=1e-5)
    song, png, wav = tmp_path / "song.mid", tmp_path / "song.png", tmp_path / "song.wav"
    argv = ["sample", "--run", str(run), "--out", str(song), "--length", "64", "--seed", "3", "--plot", str(png),
            "--audio", str(wav), "--tempo", "120"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"wrote {song}", f"wrote {png}", f"wrote {wav}"]
    assert "sampled 64 frames (16 quarter notes" in captured.err
    frames = read_piece(song).roll(4).frames
    assert 48 <= len(frames) <= 64 and frames.any()  # a roll read back ends at its last note
    with wave.open(str(wav)) as w:  # 16 quarter notes at 120 a minute: 8 s, plus the last note's release
        assert w.getnchannels() == 1 and 8.0 <= w.getnframes() / w.getframerate() <= 8.2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*argv[:-6], "--force"]) == 0  # the same seed samples the same notes
    assert np.array_equal(read_piece(song).roll(4).frames, frames)
    # a prompt is continued: the file holds the prompt, then the sampled frames
    prompt = tmp_path / "prompt.mid"
    prompt.write_bytes((resolve("arpeggios:val") / "val-000.mid").read_bytes())
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--out", str(tmp_path / "more.mid"), "--prompt", str(prompt),
                 "--length", "16"]) == 0  # fmt: skip
    more = read_piece(tmp_path / "more.mid").roll(4).frames
    assert np.array_equal(more[:80], read_piece(prompt).roll(4).frames)


def test_out_of_range_notes_are_counted_and_left_out(runs, tmp_path, capsys):
    task = runs["bernoulli"].prepared
    frames = np.zeros((8, 128), dtype=bool)
    frames[:, task.low] = True
    frames[2:4, 10] = True  # two notes far below the run's keys, one above
    frames[5:6, 10] = True
    frames[1:3, 127] = True
    path = tmp_path / "wide.mid"
    path.write_bytes(write_midi(frames, 4))
    assert main(["eval", "--run", str(runs["bernoulli"].run_dir), "--data", str(path), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["out_of_range_notes"] == 3 and scores["frames"] == 8


def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys):
    run = str(runs["nade"].run_dir)
    (tmp_path / "notes.txt").write_text("hello")
    status = main(["train", "music", "--data", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "r")])
    assert "notes.txt: not a standard MIDI file" in one_error_line(capsys, status)
    status = main(["train", "music", "--data", "arpeggios", "--resolution", "0", "--out", str(tmp_path / "r")])
    assert one_error_line(capsys, status) == "rnnkit: error: resolution must be an integer in [1, 96], got 0"
    (tmp_path / "empty").mkdir()
    status = main(["train", "music", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert "empty: no music files in it" in one_error_line(capsys, status)
    assert not (tmp_path / "r").exists()
    status = main(["sample", "--run", run, "--out", str(tmp_path / "song.wav")])
    assert "expected a file name ending in .mid" in one_error_line(capsys, status)
    status = main(["sample", "--run", run, "--out", str(tmp_path / "s.mid"), "--prompt", str(tmp_path / "notes.txt")])
    assert "notes.txt: not a standard MIDI file" in one_error_line(capsys, status)
    status = main(["sample", "--run", run, "--out", str(tmp_path / "s.mid"), "--echo-prompt"])
    assert "--echo-prompt does not apply to a music run" in one_error_line(capsys, status)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes.txt"]
