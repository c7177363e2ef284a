"""Bach chorales: rnnkit's Bernoulli and RNN-NADE heads beside per-key baselines, NLL per frame on held-out pieces.

The data is rnnkit's built-in ``bach-chorales``: music21's bundled chorales (the distinct four-part ones, about 330),
split by piece 70/15/15 (train/val/test), read as a roll of one frame per quarter note as in the JSB Chorales
benchmark (Boulanger-Lewandowski et al. 2012). The first use parses every chorale with music21 (minutes) and caches
them as MIDI files in rnnkit's cache folder. The keys are the training pieces' pitch range; validation and test
notes outside it are left out of every method's score alike (their count is printed).

* per-key frequencies: each key on with its training frequency, independent of everything (add-a smoothing, a
  chosen on validation);
* per-key Markov: each key on with probability p(v_t,k | v_t-1,k), its own two-state chain (add-a, chosen on
  validation), the frame before the first one empty as for rnnkit;
* rnnkit, ``--head bernoulli`` and ``--head nade``: ``rnnkit train music --resolution 1`` for ``--minutes`` each per
  setting, best checkpoint by validation NLL; with several ``--hidden-sizes`` the one with the best validation NLL
  is the one scored on test. Test is read once per row. The default ``--options`` (lr 0.01, NADE of 64 units) beat
  lr 0.003 with 128 NADE units on validation in short runs (docs/guide/music.md).

NLL per frame is in nats, summed over the keys and averaged over the frames (what the literature reports); frame
accuracy is Bay et al. (2009)'s sum TP / sum (TP + FP + FN). Published JSB Chorales figures (other pieces, an
88-key roll; context only): GRU 8.54, LSTM 8.67, tanh RNN 9.10 (Chung et al. 2014), RNN-NADE 5.56
(Boulanger-Lewandowski et al. 2012).

    .venv/bin/python benchmarks/music_chorales.py --minutes 15                # the full run (about 32 minutes)
    .venv/bin/python benchmarks/music_chorales.py --minutes 1 --heads nade    # a quick look

Needs music21 (``pip install music21``). The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from _classify_common import evaluate_classifier, fmt, limit_threads, log, markdown_table, train_run

PUBLISHED = (
    ("GRU (Chung et al. 2014)", 8.54),
    ("LSTM (Chung et al. 2014)", 8.67),
    ("tanh RNN (Chung et al. 2014)", 9.10),
    ("RNN-NADE (Boulanger-Lewandowski et al. 2012)", 5.56),
)
SMOOTHING = (0.01, 0.1, 0.5, 1.0, 2.0)


def load(split: str):
    """The rolls (T_i, 128) bool of one split at one frame per quarter note."""
    from rnnkit.data.music import read_pieces

    pieces, _ = read_pieces(f"bach-chorales:{split}")
    return [p.roll(1).frames for p in pieces]


def frequencies_nll(train, rolls, a: float) -> float:
    """NLL per frame of ``rolls`` (T_i, K) under per-key frequencies of ``train``, add-a smoothed."""
    x = np.concatenate(train)
    p = (x.sum(0) + a) / (len(x) + 2 * a)  # (K,)
    v = np.concatenate(rolls)
    return float(-(v * np.log(p) + (1 - v) * np.log(1 - p)).sum(1).mean())


def _transitions(rolls):
    """Each frame with the one before it (empty before the first): (N, K) previous, (N, K) current."""
    prev = np.concatenate([np.vstack([np.zeros((1, r.shape[1]), bool), r[:-1]]) for r in rolls])
    return prev, np.concatenate(rolls)


def markov_nll(train, rolls, a: float) -> float:
    """NLL per frame under each key's own two-state chain p(v_t,k | v_t-1,k), add-a smoothed."""
    prev, cur = _transitions(train)
    on = [((cur & (prev == s)).sum(0) + a) / ((prev == s).sum(0) + 2 * a) for s in (False, True)]  # p(1 | s), (K,)
    prev, cur = _transitions(rolls)
    p = np.where(prev, on[1], on[0])  # (N, K)
    return float(-(cur * np.log(p) + (1 - cur) * np.log(1 - p)).sum(1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget per head and setting (minutes)")
    parser.add_argument("--heads", default="bernoulli,nade", help="rnnkit heads to train (comma-separated)")
    parser.add_argument("--hidden-sizes", default="128", help="GRU widths to try per head; chosen on validation")
    parser.add_argument("--options", default="--mode gru --dropout 0.3 --nade-size 64 --lr 0.01 --batch-size 16 "
                        "--eval-every 50", help="more rnnkit train flags, the same for every run")  # fmt: skip
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch / BLAS threads (1: these small batches lose more to threads waiting on each other than they gain)",
    )
    args = parser.parse_args()
    handle = limit_threads(args.threads)  # noqa: F841 - kept alive for the whole run

    log("reading bach-chorales (the first time, music21 parses every chorale: minutes)")
    train, val, test = (load(s) for s in ("train", "val", "test"))
    used = np.flatnonzero(np.concatenate(train).any(0))
    low, high = int(used[0]), int(used[-1])
    outside = {s: int(sum(r[:, :low].sum() + r[:, high + 1 :].sum() for r in rolls)) for s, rolls in
               (("val", val), ("test", test))}  # fmt: skip
    train, val, test = ([r[:, low : high + 1] for r in rolls] for rolls in (train, val, test))
    log(f"pieces: train {len(train)}, val {len(val)}, test {len(test)}; keys {low}..{high} ({high - low + 1}); "
        f"note-frames outside them: val {outside['val']}, test {outside['test']}")  # fmt: skip

    rows = []
    for name, nll in (("per-key frequencies", frequencies_nll), ("per-key Markov (1st order)", markov_nll)):
        a = min(SMOOTHING, key=lambda a: nll(train, val, a))
        rows.append([f"{name}, add-{a:g}", fmt(nll(train, val, a)), fmt(nll(train, test, a)), "-", "-"])

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="music-chorales-"))
    for head in args.heads.split(","):
        tried = []
        for hidden in args.hidden_sizes.split(","):
            run = out / f"{head}-h{hidden}"
            flags = ["--data", "bach-chorales", "--val", "bach-chorales:val", "--resolution", "1", "--head", head,
                     "--hidden-size", hidden, "--max-minutes", str(args.minutes), *args.options.split()]  # fmt: skip
            summary, wall = train_run("music", run, flags)
            tried.append((summary["best"]["nll_per_frame"], hidden, run, wall, summary["steps"]))
            log(f"{head} h{hidden}: val {summary['best']['nll_per_frame']:.3f} after {summary['steps']} steps")
        val_nll, hidden, run, wall, steps = min(tried)
        test_scores = evaluate_classifier(run, "bach-chorales:test")  # any task's eval --json
        rows.append([f"rnnkit GRU({hidden}) --head {head}, {steps} steps", fmt(val_nll),
                     fmt(test_scores["nll_per_frame"]), fmt(test_scores["frame_accuracy"]), f"{wall:.0f}"])  # fmt: skip
    for name, value in PUBLISHED:
        rows.append([f"published JSB: {name}", "-", fmt(value), "-", "-"])
    print(f"Bach chorales (music21), one frame per quarter note, keys {low}..{high}; {args.minutes:g} min per rnnkit "
          f"run; NLL in nats per frame")  # fmt: skip
    print(markdown_table(["method", "val NLL", "test NLL", "test frame acc.", "train s"], rows))


if __name__ == "__main__":
    main()
