"""CTC speech recognition on synthetic speech: held-out voices, held-out words, and a second synthesizer.

    python benchmarks/ctc_speech.py                       # the full run (about 15 minutes of training)
    python benchmarks/ctc_speech.py --train 300 --minutes 1 --lm-minutes 0.3 --test 40    # a quick look

Speech is rendered with espeak-ng (``apt-get install espeak-ng``) and flite (``apt-get install flite``); the script
says which is missing and stops cleanly without them. Nothing is downloaded.

- Texts: digit strings (1 to 7 digits, spoken as words: "three one four") and dictionary words (1 to 3 words an
  utterance), the words being the most frequent lower-case words of the comments of the Python standard library
  (an installed word list; no dictionary package is installed here). The words are split so that the test words
  are never in a training transcript.
- Voices: espeak-ng's English accents crossed with its voice variants, with a random speed and pitch each. Whole
  accents and some variants are held out: the test voices pair a held-out accent or a held-out variant.
- Half of the training utterances get white noise at 10 to 30 dB SNR.
- Test sets: digits by held-out voices; held-out words by held-out voices; digits by flite's voices (out of domain).

It trains ``rnnkit train ctc`` (the default model) for ``--minutes``, an rnnkit character LM on the training
transcripts for ``--lm-minutes``, and reports CER and WER with greedy decoding, prefix beam search, and beam search
with the LM; the training time; and the inference speed as seconds of audio per CPU second on one thread (features,
acoustic model and greedy decoding).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-gb-scotland", "en-029")
HELD_OUT_ACCENTS = ("en-gb-scotland", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
HELD_OUT_VARIANTS = ("m5", "f4")
FLITE_VOICES = ("kal", "awb", "rms", "slt")


def missing_tools() -> list[str]:
    missing = [f"{tool} (apt-get install {tool})" for tool in ("espeak-ng", "flite") if shutil.which(tool) is None]
    try:
        import soundfile  # noqa: F401
    except (ImportError, OSError):
        missing.append("soundfile (pip install 'rnnkit[speech]')")
    return missing


def word_list(n: int) -> list[str]:
    """The ``n`` most frequent lower-case words (3 to 9 letters) of the comments of the Python standard library."""
    from rnnkit.data.text import default_corpus

    counts: Counter[str] = Counter()
    for line in default_corpus(4_000_000).splitlines():
        line = line.strip()
        if line.startswith("#"):
            counts.update(re.findall(r"(?<![A-Za-z_])[a-z]{3,9}(?![A-Za-z_0-9])", line))
    return [w for w, _ in counts.most_common(n) if w not in DIGITS]


def espeak(text: str, voice: str, rng: random.Random) -> tuple[np.ndarray, int]:
    cmd = ["espeak-ng", "-v", voice, "-s", str(rng.randint(140, 200)), "-p", str(rng.randint(25, 75)), "--stdout",
           text]  # fmt: skip
    return _decode(subprocess.run(cmd, capture_output=True, check=True).stdout)


def flite(text: str, voice: str, rng: random.Random) -> tuple[np.ndarray, int]:
    out = Path(f"/tmp/rnnkit-flite-{voice}-{rng.random():.12f}.wav")
    try:
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(out)], capture_output=True, check=True)
        return _decode(out.read_bytes())
    finally:
        out.unlink(missing_ok=True)


def _decode(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile

    x, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return x, rate


def digits_text(rng: random.Random) -> str:
    return " ".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 7)))


def words_text(rng: random.Random, words: list[str]) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))


def render(folder: Path, name: str, items: list[tuple[str, str, str]], seed: int, noisy: float = 0.0) -> Path:
    """Render (text, synthesizer, voice) items into WAV files and a manifest ``name.tsv``; a share ``noisy`` of them
    with white noise at 10-30 dB SNR."""
    import soundfile

    (folder / "wav").mkdir(parents=True, exist_ok=True)

    def one(k: int) -> str:
        text, synth, voice = items[k]
        rng = random.Random(seed * 1_000_003 + k)
        x, rate = (espeak if synth == "espeak-ng" else flite)(text, voice, rng)
        if rng.random() < noisy:
            snr = rng.uniform(10, 30)
            noise = np.random.default_rng(k).normal(0, np.sqrt(np.mean(x**2) / 10 ** (snr / 10)), x.shape)
            x = np.clip(x + noise, -1, 1).astype(np.float32)
        path = f"wav/{name}-{k:05d}.wav"
        soundfile.write(folder / path, x, rate, subtype="PCM_16")
        return f"{path}\t{text}\n"

    with ThreadPoolExecutor(4) as pool:  # each item is a subprocess: threads overlap them
        lines = list(pool.map(one, range(len(items))))
    manifest = folder / f"{name}.tsv"
    manifest.write_text("audio\ttranscript\n" + "".join(lines))
    return manifest


def build(folder: Path, n_train: int, n_test: int, seed: int) -> dict[str, Path]:
    rng = random.Random(seed)
    words = word_list(1500)
    rng.shuffle(words)
    test_words, train_words = words[:300], words[300:]
    voices = [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]
    seen = [v for v in voices if v.split("+")[0] not in HELD_OUT_ACCENTS and v.split("+")[1] not in HELD_OUT_VARIANTS]
    unseen = [v for v in voices if v not in seen]

    def items(n: int, voice_pool: list[str], text) -> list[tuple[str, str, str]]:
        return [(text(), "espeak-ng", rng.choice(voice_pool)) for _ in range(n)]

    digits, train_text, test_text = (
        (lambda: digits_text(rng)),
        (lambda: words_text(rng, train_words)),
        (lambda: words_text(rng, test_words)),
    )
    train = items(n_train // 2, seen, digits) + items(n_train - n_train // 2, seen, train_text)
    rng.shuffle(train)
    n_val = max(20, n_train // 20)
    val = items(n_val // 2, seen, digits) + items(n_val - n_val // 2, seen, train_text)
    flite_items = [(digits_text(rng), "flite", rng.choice(FLITE_VOICES)) for _ in range(n_test)]
    return {
        "train": render(folder, "train", train, seed, noisy=0.5),
        "val": render(folder, "val", val, seed + 1),
        "digits, held-out voices": render(folder, "test-digits", items(n_test, unseen, digits), seed + 2),
        "held-out words, held-out voices": render(folder, "test-words", items(n_test, unseen, test_text), seed + 3),
        "digits, flite (out of domain)": render(folder, "test-flite", flite_items, seed + 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=3000, help="training utterances (default: 3000)")
    p.add_argument("--test", type=int, default=200, help="utterances per test set (default: 200)")
    p.add_argument("--minutes", type=float, default=14.0, help="training budget of the CTC model (default: 14)")
    p.add_argument("--lm-minutes", type=float, default=1.0, help="training budget of the LM (default: 1)")
    p.add_argument("--beam", type=int, default=16, help="beam width (default: 16)")
    p.add_argument(
        "--lm-weights",
        default="0.3,0.5,0.8",
        help="LM weights alpha to try; the one with the lowest validation CER is reported (default: 0.3,0.5,0.8)",
    )
    p.add_argument(
        "--insertion-bonuses",
        default="0.5,1.0,1.5",
        help="insertion bonuses beta to try with each alpha, chosen likewise (default: 0.5,1.0,1.5)",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep the rendered data and the trained runs in --out, and only decode (another grid)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/ctc-speech"), help="data and runs (default: runs/ctc-speech)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads for training (default: 2)")
    p.add_argument("--model", default="", help="extra flags for rnnkit train ctc, e.g. '--hidden-size 192'")
    args = p.parse_args(argv)

    missing = missing_tools()
    if missing:
        print(f"ctc_speech: needs {', '.join(missing)}; stopping", file=sys.stderr)
        return 0
    from rnnkit.checkpoint import load_run
    from rnnkit.ctc import error_rates

    data = args.out / "data"
    run, lm = args.out / "ctc", args.out / "lm"
    if args.reuse:
        names = ["train", "val", "test-digits", "test-words", "test-flite"]
        keys = ["train", "val", "digits, held-out voices", "held-out words, held-out voices",
                "digits, flite (out of domain)"]  # fmt: skip
        sets = {key: data / f"{name}.tsv" for key, name in zip(keys, names, strict=True)}
        train_s = json.loads((run / "summary.json").read_text())["elapsed_s"]
    else:
        t0 = time.perf_counter()
        sets = build(data, args.train, args.test, args.seed)
        print(f"rendered {args.train} training and {3 * args.test} test utterances in {time.perf_counter() - t0:.0f} s")
        train_s = train_models(args, sets, run, lm)

    torch.set_num_threads(1)
    acoustic = load_run(run)
    task, model = acoustic.task, acoustic.model
    # the LM's weight and the insertion bonus are chosen on the validation utterances (training voices and words),
    # never on a test set
    val = task.read(str(sets["val"]), "required", drop_short=False)
    val_log_probs = task.posteriors(model, val, batch_size=16)[0]
    grid = [(float(a), float(b)) for a in args.lm_weights.split(",") for b in args.insertion_bonuses.split(",")]
    val_cer = {
        (a, b): error_rates(task.decode(val_log_probs, beam=args.beam, lm=str(lm), lm_weight=a, insertion_bonus=b),
                            val.texts)["cer"]
        for a, b in grid
    }  # fmt: skip
    alpha, beta = min(val_cer, key=val_cer.get)
    tried = ", ".join(f"({a}, {b}) {100 * c:.2f}" for (a, b), c in val_cer.items())
    print(f"LM weight and insertion bonus chosen on validation: alpha {alpha}, beta {beta} (val CER %: {tried})")
    decodings = {"greedy": {}, f"beam {args.beam}": {"beam": args.beam},
                 f"beam {args.beam} + LM": {"beam": args.beam, "lm": str(lm), "lm_weight": alpha,
                                            "insertion_bonus": beta}}  # fmt: skip
    rows, speed = [], []
    for name, manifest in list(sets.items())[2:]:
        encoded = task.read(str(manifest), "required", drop_short=False)
        audio_s = sum(f.size(0) for f in encoded.features) / 100  # 10 ms frames
        t0 = time.process_time()
        encoded = task.read(str(manifest), "required", drop_short=False)  # features, timed
        log_probs = task.posteriors(model, encoded, batch_size=1)[0]
        task.decode(log_probs)
        speed.append((audio_s, time.process_time() - t0))
        for label, options in decodings.items():
            m = error_rates(task.decode(log_probs, **options), encoded.texts)
            rows.append((name, label, m["cer"], m["wer"], m["n"]))

    model_flags = f" {args.model}" if args.model else ""
    print(
        f"\nCTC on synthetic speech: {args.train} training utterances, rnnkit train ctc defaults{model_flags}, "
        f"{train_s / 60:.1f} min training (wall clock, with data reading), LM {args.lm_minutes} min"
    )
    print(f"{'test set':34s} {'decoding':16s} {'CER %':>7s} {'WER %':>7s} {'n':>5s}")
    for name, label, cer, wer, n in rows:
        print(f"{name:34s} {label:16s} {100 * cer:7.1f} {100 * wer:7.1f} {n:5d}")
    audio, cpu = map(sum, zip(*speed, strict=True))
    print(
        f"\ninference (features + acoustic model + greedy, 1 thread, batch 1): {audio / cpu:.0f} s of audio per CPU s"
    )
    summary = {
        "rows": rows,
        "train_seconds": train_s,
        "audio_seconds_per_cpu_second": audio / cpu,
        "args": vars(args),
        "lm_weight": alpha,
        "insertion_bonus": beta,
        "val_cer": {f"{a},{b}": c for (a, b), c in val_cer.items()},
    }
    (args.out / "results.json").write_text(json.dumps(summary, default=str, indent=1))
    return 0


def train_models(args, sets: dict[str, Path], run: Path, lm: Path) -> float:
    """Train the acoustic model and the LM on the training transcripts; the acoustic model's training seconds."""
    rnnkit = [sys.executable, "-m", "rnnkit"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for folder in (run, lm):
        shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([*rnnkit, "train", "ctc", "--data", str(sets["train"]), "--val", str(sets["val"]), "--out", str(run),
                    "--max-minutes", str(args.minutes), "--eval-every", "250", "--seed", str(args.seed),
                    *args.model.split()], check=True, env=env)  # fmt: skip
    train_s = time.perf_counter() - t0
    transcripts = args.out / "train-transcripts.txt"
    lines = sets["train"].read_text().splitlines()[1:]
    transcripts.write_text("".join(line.split("\t")[1] + "\n" for line in lines))
    subprocess.run([*rnnkit, "train", "lm", "--data", str(transcripts), "--out", str(lm), "--max-minutes",
                    str(args.lm_minutes), "--hidden-size", "256", "--bptt", "32", "--batch-size", "16",
                    "--eval-every", "100"], check=True, stdout=subprocess.DEVNULL, env=env)  # fmt: skip
    return train_s


if __name__ == "__main__":
    sys.exit(main())
