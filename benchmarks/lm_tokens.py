"""Characters, words or BPE pieces at the same budget: held-out bits per character of the LM for each ``--tokens``.

    python benchmarks/lm_tokens.py --minutes 10                 # the same wall-clock budget per row
    python benchmarks/lm_tokens.py --steps 300 --max-chars 1000000 --hidden-size 128

Every row trains ``rnnkit train lm`` with the same model, data, seed and budget and differs only in its tokens
(``--tokens chars``, ``words``, ``bpe``; each tokenizer learned on the training text). The held-out text (the last
5 % of the text, never trained on) is then scored with the state carried through it. Bits per character compare
across rows: each row's total nats over the characters its scored tokens hold, / ln 2; the per-token loss and
perplexity do not (a word token carries more text than a character). A time budget (``--minutes``) charges each
row for what its tokens cost (a 4096-word softmax costs more per step than a 100-character one, but each step
covers about three times the text); a step budget (``--steps``) gives words and BPE more text per step. Timings
depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _classify_common import THREAD_VARS, fmt, log, markdown_table, train_run
from rnnkit.checkpoint import load_run
from rnnkit.data import split_text
from rnnkit.metrics import evaluate_text
from rnnkit.tasks.language_model import load_text

ROWS = ("chars", "words", "bpe")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=0.0, help="training minutes per row (0 = use --steps)")
    p.add_argument("--steps", type=int, default=0, help="optimiser steps per row (0 = use --minutes)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of: {', '.join(ROWS)}")
    p.add_argument("--words-vocab", type=int, default=4096, help="--vocab-size of the words row")
    p.add_argument("--bpe-vocab", type=int, default=1024, help="--vocab-size of the bpe row")
    p.add_argument("--hidden-size", type=int, default=256, help="LSTM width of every row")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per training run")
    p.add_argument(
        "--max-chars", type=int, default=2_000_000, help="the corpus's first N chars (5 %% held out; 0 = all of it)"
    )
    p.add_argument("--out", default="runs/bench-tokens", help="folder for the runs")
    args = p.parse_args(argv)
    if (args.minutes > 0) == (args.steps > 0):
        print("lm_tokens: error: give one budget, --minutes M or --steps N", file=sys.stderr)
        return 2
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        print(f"lm_tokens: error: --rows: unknown {unknown}; choose from {list(ROWS)}", file=sys.stderr)
        return 2
    for var in THREAD_VARS:  # the training runs are child processes: torch reads these at start-up
        os.environ[var] = str(args.threads)
    sizes = {
        "chars": [],
        "words": ["--vocab-size", str(args.words_vocab)],
        "bpe": ["--vocab-size", str(args.bpe_vocab)],
    }
    budget = (
        ["--max-steps", str(args.steps), "--max-minutes", "0"] if args.steps else ["--max-minutes", f"{args.minutes}"]
    )
    common = ["--hidden-size", str(args.hidden_size), "--max-chars", str(args.max_chars), "--eval-every", "100000",
              "--device", "cpu", *budget]  # fmt: skip
    table, test_text = [], None
    for name in rows:
        out = Path(args.out) / name
        summary, wall = train_run("lm", out, ["--tokens", name, *sizes[name], *common])
        run = load_run(out, "last")
        if test_text is None:
            _, test_text = split_text(load_text(run.config), run.config.data.val_fraction)
        m = evaluate_text(run.model, run.task.tokenizer, test_text, batch_size=16, bptt=256, device="cpu")
        log(f"{name}: held-out bpc {m['bpc']:.4f}, {m['tokens']} tokens")
        table.append([name, str(len(run.task.tokenizer)), str(summary.get("steps")), f"{m['chars'] / m['tokens']:.2f}",
                      fmt(m["bpc"]), fmt(m["loss"]), fmt(m["ppl"], 1), f"{wall / 60:.1f}"])  # fmt: skip
    what = f"{args.steps} steps" if args.steps else f"{args.minutes:g} minutes"
    print(f"{what} per row, H={args.hidden_size}, {len(test_text):,} held-out chars, {args.threads} threads")
    print(f"training text: the first {args.max_chars:,} chars of the corpus less the held-out tail")
    headers = ["tokens", "vocab", "steps", "chars/token", "held-out bpc", "loss/token", "ppl/token", "minutes"]
    print(markdown_table(headers, table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
