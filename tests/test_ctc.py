"""CTC speech recognition: the loss and the decoders against enumeration and pyctcdecode, features against NumPy,
error rates against jiwer, the resampler, DTMF digits learned end to end, and the CLI's commands and bad input."""

from __future__ import annotations

import itertools
import json
import math
import wave

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import one_error_line
from rnnkit.cli import main
from rnnkit.ctc import CharLMScorer, collapse, error_rates, greedy_decode, prefix_beam_search
from rnnkit.data.dtmf import dtmf_files, wav_bytes
from rnnkit.data.speech import read_audio, resample
from rnnkit.features import FeatureConfig, log_mel, mel_filterbank
from rnnkit.tasks import CTCConfig, CTCTask

pytestmark = pytest.mark.usefixtures("one_thread")

# --- the loss and the decoders against enumeration --------------------------------------------------------------


def exact_label_probs(log_probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """p(l | x) for every label sequence l: the sum over all (V+1)^T alignments of their probability."""
    T, C = log_probs.shape
    p = log_probs.double().exp()
    out: dict[tuple[int, ...], float] = {}
    for a in itertools.product(range(C), repeat=T):
        l = tuple(collapse(a))
        out[l] = out.get(l, 0.0) + float(torch.prod(p[torch.arange(T), torch.tensor(a)]))
    return out


def random_log_probs(T: int, C: int, seed: int, sharpness: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(sharpness * torch.randn(T, C, generator=g, dtype=torch.float64), -1)


@pytest.mark.parametrize("target", [[1, 2], [1, 1], [2], [2, 1, 2]])
def test_ctc_loss_is_the_sum_over_all_alignments(target):
    log_probs = random_log_probs(5, 3, seed=len(target))
    exact = exact_label_probs(log_probs)[tuple(target)]
    loss = F.ctc_loss(log_probs[:, None], torch.tensor([target]), torch.tensor([5]), torch.tensor([len(target)]),
                      reduction="sum")  # fmt: skip
    assert float(loss) == pytest.approx(-math.log(exact), rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_prefix_beam_search_without_pruning_gives_exact_probabilities(seed):
    log_probs = random_log_probs(5, 3, seed)
    exact = {l: p for l, p in exact_label_probs(log_probs).items() if p > 0}
    hyps = prefix_beam_search(log_probs, beam=10_000, min_log_prob=-math.inf, n_best=10_000)
    assert {h.ids for h in hyps} == set(exact)
    for h in hyps:
        assert h.ctc == pytest.approx(math.log(exact[h.ids]), rel=1e-9)
    assert hyps[0].ids == max(exact, key=exact.get)  # the most probable label sequence, not the best path's


def test_greedy_decode_collapses_the_best_path():
    log_probs = torch.log(torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1],
                                        [0.1, 0.1, 0.8]]))[None]  # fmt: skip
    assert greedy_decode(log_probs, torch.tensor([5])) == [[1, 1, 2]]
    assert greedy_decode(log_probs, torch.tensor([2])) == [[1]]


def exact_log_prob(log_probs: torch.Tensor, ids: list[int]) -> float:
    """log p(l | x) by the forward algorithm (torch's ctc_loss)."""
    if not ids:
        return float(log_probs[:, 0].sum())
    return -float(F.ctc_loss(log_probs[:, None], torch.tensor([ids]), torch.tensor([log_probs.size(0)]),
                             torch.tensor([len(ids)]), reduction="sum"))  # fmt: skip


def test_prefix_beam_search_agrees_with_pyctcdecode():
    """Both are pruned searches, so on near-ties either may miss the most probable output: they must agree on
    most of 20 utterances of 30 frames, and where they differ the two outputs must be near-ties."""
    pyctcdecode = pytest.importorskip("pyctcdecode")
    labels = ["", "a", "b", "c", "d"]
    decoder = pyctcdecode.build_ctcdecoder(labels)
    agree = 0
    for seed in range(20):
        log_probs = random_log_probs(30, len(labels), seed, sharpness=5.0)
        ours = prefix_beam_search(log_probs, beam=16)[0].ids
        theirs = decoder.decode(log_probs.float().numpy(), beam_width=16)
        agree += "".join(labels[i] for i in ours) == theirs
        gap = exact_log_prob(log_probs, list(ours)) - exact_log_prob(log_probs, [labels.index(c) for c in theirs])
        assert abs(gap) < 0.5, (seed, gap)
    assert agree >= 18


class BigramLM(torch.nn.Module):
    """A stand-in for a CharLM: p(next | previous) from a fixed table; the state is the previous token."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table  # (V, V) log-probabilities
        self.vocab_size = table.size(0)

    def step(self, token: torch.Tensor, state=None):
        return self.table[token], token.float().view(1, -1, 1)  # (n, V), (1, n, 1)


class Vocab:
    def __init__(self, chars: str) -> None:
        self.index = {c: i for i, c in enumerate(chars)}


def test_lm_fusion_reranks_as_the_weights_say():
    # the acoustics slightly prefer "ab" to "ba"; the LM (after a newline) strongly prefers "ba"
    p = torch.tensor([[0.05, 0.55, 0.40], [0.9, 0.05, 0.05], [0.05, 0.40, 0.55]], dtype=torch.float64)  # blank a b
    log_probs = p.log()
    table = torch.full((3, 3), math.log(1 / 3), dtype=torch.float64)  # LM ids: "\n" a b
    table[0] = torch.tensor([0.1, 0.1, 0.8]).log()  # after "\n": b
    table[2] = torch.tensor([0.1, 0.8, 0.1]).log()  # after b: a
    table[1] = torch.tensor([0.8, 0.1, 0.1]).log()  # after a: the end
    scorer = CharLMScorer(BigramLM(table), Vocab("\nab"), ["a", "b"])
    plain = prefix_beam_search(log_probs, beam=8, lm=scorer, lm_weight=0.0, n_best=8)
    fused = prefix_beam_search(log_probs, beam=8, lm=scorer, lm_weight=1.0, n_best=8)
    assert plain[0].ids == (1, 2) and fused[0].ids == (2, 1)
    for h in fused:  # score = log p_ctc + alpha log p_lm (including the end) + beta |l|, with alpha 1, beta 0
        lm = sum(float(table[a, b]) for a, b in zip((0, *h.ids), (*h.ids, 0), strict=True))
        assert h.lm == pytest.approx(lm) and h.score == pytest.approx(h.ctc + lm)
    # a large enough insertion penalty or bonus makes the shortest or the longest output win
    assert prefix_beam_search(log_probs, beam=8, lm=scorer, lm_weight=1.0, insertion_bonus=-20.0)[0].ids == ()
    assert len(prefix_beam_search(log_probs, beam=8, lm=scorer, lm_weight=1.0, insertion_bonus=20.0)[0].ids) == 3


# --- features and audio ---------------------------------------------------------------------------------------


def numpy_log_mel(x: np.ndarray, c: FeatureConfig) -> np.ndarray:
    """The log-mel of rnnkit.features written with NumPy: zero-padded frames, a centred Hann window, rfft."""
    pad = c.n_fft // 2
    x = np.pad(x.astype(np.float64), pad)
    w = np.zeros(c.n_fft)
    left = (c.n_fft - c.win_length) // 2
    w[left : left + c.win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(c.win_length) / c.win_length)
    frames = np.stack([x[t * c.hop_length : t * c.hop_length + c.n_fft] * w for t in range(c.frames(len(x) - 2 * pad))])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, K)
    return np.log(power @ mel_filterbank(c.n_fft // 2 + 1, c.n_mels, c.sample_rate).double().numpy().T + 1e-6)


def test_log_mel_matches_numpy_and_puts_a_sine_in_its_band():
    c = FeatureConfig()
    t = np.arange(8000) / c.sample_rate
    x = 0.5 * np.sin(2 * np.pi * 1000.0 * t)
    ours = log_mel(torch.tensor(x, dtype=torch.float64), c).numpy()
    assert ours.shape == (c.frames(8000), 80) == (51, 80)
    np.testing.assert_allclose(ours, numpy_log_mel(x, c), rtol=1e-6, atol=1e-6)
    F_ = mel_filterbank(c.n_fft // 2 + 1, c.n_mels, c.sample_rate)
    bin_1k = round(1000 * c.n_fft / c.sample_rate)
    assert int(ours[25].argmax()) == int(F_[:, bin_1k].argmax())  # the band whose filter peaks nearest 1 kHz


def test_resampling_is_band_limited_and_keeps_a_tone():
    t8 = np.arange(8000) / 8000
    up = resample(np.sin(2 * np.pi * 440 * t8).astype(np.float32), 8000)
    t16 = np.arange(16000) / 16000
    np.testing.assert_allclose(up[500:-500], np.sin(2 * np.pi * 440 * t16)[500:-500], atol=2e-3)
    # a tone above the new Nyquist frequency (6 kHz at 16 kHz -> 8 kHz) is removed, not folded to 2 kHz
    down = resample(np.sin(2 * np.pi * 6000 * t16).astype(np.float32), 16000, 8000)
    assert np.abs(down[200:-200]).max() < 0.02


@pytest.mark.parametrize(("rate", "target"), [(8000, 16000), (44100, 16000), (22050, 16000), (48000, 16000)])
def test_resampling_agrees_with_scipy_resample_poly(rate, target):
    signal = pytest.importorskip("scipy.signal")
    g = np.random.default_rng(0)
    t = np.arange(rate // 2) / rate
    x = sum(np.sin(2 * np.pi * f * t + g.uniform(0, 6)) for f in (200, 1000, 2200)).astype(np.float32) / 3
    ours = resample(x, rate, target)
    theirs = signal.resample_poly(x, target // math.gcd(rate, target), rate // math.gcd(rate, target))
    assert ours.shape == theirs.shape
    edge = target // 50  # the two filters differ in length and in how they roll off near the Nyquist frequency:
    # compare tones well inside the pass band, away from the ends
    np.testing.assert_allclose(ours[edge:-edge], theirs[edge:-edge], atol=5e-3)


def test_audio_is_mixed_down_and_resampled(tmp_path):
    sf = pytest.importorskip("soundfile")
    stereo = np.stack([np.full(4410, 0.5), np.full(4410, -0.1)], axis=1)
    sf.write(tmp_path / "s.flac", stereo, 44100)
    x = read_audio(tmp_path / "s.flac")
    assert x.shape == (1600,) and abs(float(np.median(x)) - 0.2) < 1e-3


def test_error_rates_match_jiwer():
    jiwer = pytest.importorskip("jiwer")
    refs = ["the cat sat", "on the mat", "a b c d", "hello"]
    hyps = ["the cat sad", "on mat", "a b x c d", "yellow there"]
    ours = error_rates(hyps, refs)
    assert ours["wer"] == pytest.approx(jiwer.wer(refs, hyps))
    assert ours["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    assert ours["n"] == 4


# --- end to end on DTMF digits -----------------------------------------------------------------------------------


def write_dataset(folder, sizes, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in dtmf_files(sizes, seed).items():
        path = folder / (name if name.startswith("wav/") else f"{name}.tsv")
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


@pytest.fixture(scope="module")
def dtmf_run(tmp_path_factory):
    pytest.importorskip("soundfile")
    root = tmp_path_factory.mktemp("dtmf")
    data = write_dataset(root / "data", {"train": 120, "val": 24})
    run = root / "run"
    status = main(["train", "ctc", "--data", str(data / "train.tsv"), "--val", str(data / "val.tsv"), "--out",
                   str(run), "--hidden-size", "48", "--num-layers", "1", "--max-steps", "90",
                   "--max-minutes", "0", "--eval-every", "45", "--lr", "0.01", "--warmup-steps", "20",
                   "--dropout", "0", "--batch-size", "16"])  # fmt: skip
    assert status == 0
    return data, run


def test_dtmf_digits_are_learned_to_a_low_error(dtmf_run, capsys):
    data, run = dtmf_run
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--data", str(data / "val.tsv"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["task"] == "ctc" and got["n"] == 24 and got["decoding"] == "greedy"
    assert got["cer"] < 0.1, got
    assert (run / "ctc.png").stat().st_size > 0 and json.loads((run / "symbols.json").read_text())["blank"] == 0


def test_predict_writes_rows_in_input_order_and_beam_search_with_an_lm_runs(dtmf_run, tmp_path, capsys):
    data, run = dtmf_run
    lines = (data / "val.tsv").read_text().splitlines()[1:6]
    manifest = data / "some.tsv"
    manifest.write_text("".join(f"{line.split(chr(9))[0]}\n" for line in lines))  # audio only
    out = tmp_path / "pred.tsv"
    assert main(["predict", "--run", str(run), "--data", str(manifest), "--out", str(out), "--beam", "4"]) == 0
    rows = [r.split("\t") for r in out.read_text().splitlines()]
    assert [r[0] for r in rows] == [line.split("\t")[0] for line in lines]
    assert sum(r[1] == line.split("\t")[1] for r, line in zip(rows, lines, strict=True)) >= 3
    text = data / "transcripts.txt"
    text.write_text("".join(line.split("\t")[1] + "\n" for line in (data / "train.tsv").read_text().splitlines()[1:]))
    lm = tmp_path / "lm"
    assert (
        main(
            [
                "train",
                "lm",
                "--data",
                str(text),
                "--out",
                str(lm),
                "--hidden-size",
                "16",
                "--embedding-size",
                "8",
                "--max-steps",
                "3",
                "--max-minutes",
                "0",
                "--bptt",
                "16",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--data", str(data / "val.tsv"), "--beam", "4", "--lm", str(lm),
                 "--lm-weight", "0.3", "--json"]) == 0  # fmt: skip
    got = json.loads(capsys.readouterr().out)
    assert got["decoding"].startswith("beam 4 + LM") and 0 <= got["cer"] < 0.3


def _wav(path, x, rate=8000):
    path.write_bytes(wav_bytes(np.asarray(x, dtype=np.float32), rate))


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ("a.wav\n", "line 1: expected audio<TAB>transcript, found no tab"),
        ("a.wav\t \n", "line 1: empty transcript"),
        ("audio\ttranscript\n", "holds no utterances"),
        ("missing.wav\t1 2\n", "line 1: " + "{dir}/missing.wav: no such file"),
        ("silent.wav\t1 2\n", "line 1: {dir}/silent.wav: is silent"),
        ("empty.wav\t1 2\n", "line 1: {dir}/empty.wav: holds no samples"),
        ("junk.wav\t1 2\n", "line 1: {dir}/junk.wav: not a readable audio file"),
    ],
)
def test_bad_manifests_are_one_line_and_write_nothing(manifest, expected, tmp_path, capsys):
    pytest.importorskip("soundfile")
    _wav(tmp_path / "a.wav", np.sin(np.arange(800)))
    _wav(tmp_path / "silent.wav", np.zeros(800))
    _wav(tmp_path / "empty.wav", np.zeros(0))
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    (tmp_path / "m.tsv").write_text(manifest)
    status = main(["train", "ctc", "--data", str(tmp_path / "m.tsv"), "--out", str(tmp_path / "run")])
    assert expected.format(dir=tmp_path) in one_error_line(capsys, status)
    assert not (tmp_path / "run").exists()


def test_a_missing_soundfile_names_the_extra(tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_soundfile(name, *args, **kwargs):
        if name == "soundfile":
            raise ImportError("No module named 'soundfile'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_soundfile)
    (tmp_path / "m.tsv").write_text("a.wav\t1\n")
    status = main(["train", "ctc", "--data", str(tmp_path / "m.tsv"), "--out", str(tmp_path / "run")])
    assert "pip install 'rnnkit[speech]'" in one_error_line(capsys, status)


def test_too_short_utterances_are_dropped_with_a_count_or_an_error(tmp_path, capsys):
    pytest.importorskip("soundfile")
    for i in range(4):
        _wav(tmp_path / f"{i}.wav", np.sin(np.arange(8000 if i else 800) * 0.3))  # 0.1 s: 11 frames, 3 steps
    (tmp_path / "m.tsv").write_text("".join(f"{i}.wav\t1 2 3 4 5\n" for i in range(4)))
    d = {"data": str(tmp_path / "m.tsv"), "val_fraction": 0.0}
    task = CTCTask(CTCConfig.from_dict({"model": {"n_mels": 16}, "data": d}))
    task.prepare(None)
    assert task.describe()["dropped_too_short"] == 1 and task.describe()["train_utterances"] == 3
    status = main(["train", "ctc", "--data", d["data"], "--out", str(tmp_path / "r"), "--too-short", "error"])
    assert "line 1: 3 frames after subsampling cannot align a transcript that needs 9" in one_error_line(capsys, status)


def test_npz_features_train_and_unknown_symbols_are_counted(tmp_path, capsys):
    g = np.random.default_rng(0)
    X = g.normal(size=(12, 20, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, lengths=np.full(12, 20), targets=np.array(["ab", "ba", "a b"] * 4))
    np.savez(tmp_path / "e.npz", X=X[:2], targets=np.array(["abz", "zz"]))
    assert main(["train", "ctc", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "r"), "--max-steps", "2",
                 "--max-minutes", "0", "--hidden-size", "8"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", "--run", str(tmp_path / "r"), "--data", str(tmp_path / "e.npz"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["unknown_symbols"] == 3 and got["n"] == 2


def test_the_dtmf_generator_writes_wav_files_a_manifest_reads(tmp_path):
    files = dtmf_files({"val": 3}, seed=5)
    assert files["val"].splitlines()[0] == "audio\ttranscript" and len(files["val"].splitlines()) == 4
    name, digits = files["val"].splitlines()[1].split("\t")
    with wave.open(__import__("io").BytesIO(files[name])) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
    assert set(digits) <= set("0123456789") and 3 <= len(digits) <= 6
