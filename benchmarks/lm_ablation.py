"""Each recurrent regulariser on and off at the same step budget: held-out bpc of the character LM.

    python benchmarks/lm_ablation.py --steps 1200            # all rows, on the first 1 M chars of the corpus
    python benchmarks/lm_ablation.py --steps 200 --rows none,zoneout

Every row trains ``rnnkit train lm`` with the same model (a 2-layer LSTM, H = 256, E = 256, tied weights), data,
seed and number of optimiser steps (``--max-steps``), and differs only in its regularisers; the held-out text (the
last 5 % of the text, never trained on) is then scored with the state carried through it, as
benchmarks/lm_vs_compressors.py does. A step budget makes the rows comparable whatever else runs on the machine;
the time column is what the row cost here (zoneout and locked dropout between layers run on the fused LSTM, the
others on oneDNN). The text is capped (``--max-chars``, 1 M by default) so that the budget
covers several epochs: regularisers earn their keep where a model can overfit, not in its first pass over 9 M
characters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _classify_common import THREAD_VARS, fmt, log, markdown_table, train_run
from rnnkit.checkpoint import load_run
from rnnkit.data import split_text
from rnnkit.metrics import evaluate_text
from rnnkit.tasks.language_model import load_text

BASE = [
    "--mode",
    "lstm",
    "--num-layers",
    "2",
    "--hidden-size",
    "256",
    "--embedding-size",
    "256",
    "--tie-weights",
    "true",
    "--clip",
    "0.25",
    "--max-minutes",
    "0",
    "--eval-every",
    "500",
    "--device",
    "cpu",
]
ROWS = {
    "none": [],
    "zoneout": ["--zoneout", "0.1"],
    "weight-drop": ["--weight-drop", "0.25"],
    "locked dropout": [
        "--dropout-input",
        "0.1",
        "--dropout",
        "0.2",
        "--locked-dropout",
        "true",
        "--dropout-output",
        "0.1",
    ],
    "AWD (weight-drop + locked)": ["--config", "examples/awd_lm.toml"],
    "AWD + zoneout": ["--config", "examples/awd_lm.toml", "--zoneout", "0.1"],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps per row")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of: {', '.join(ROWS)}")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per training run")
    p.add_argument(
        "--max-chars", type=int, default=1_000_000, help="the corpus's first N chars (5 %% held out; 0 = all of it)"
    )
    p.add_argument("--out", default="runs/bench-ablation", help="folder for the runs")
    args = p.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        print(f"lm_ablation: error: --rows: unknown {unknown}; choose from {list(ROWS)}", file=sys.stderr)
        return 2
    for var in THREAD_VARS:  # the training runs are child processes: torch reads these at start-up
        os.environ[var] = str(args.threads)
    table, test_text = [], None
    for name in rows:
        out = Path(args.out) / "".join(c if c.isalnum() else "-" for c in name.lower())
        budget = ["--max-steps", str(args.steps), "--max-chars", str(args.max_chars)]
        summary, wall = train_run("lm", out, [*BASE, *budget, *ROWS[name]])
        run = load_run(out, "last")
        if test_text is None:
            _, test_text = split_text(load_text(run.config), run.config.data.val_fraction)
        t0 = time.perf_counter()
        m = evaluate_text(run.model, run.vocab, test_text, batch_size=16, bptt=256, device="cpu")
        log(f"{name}: held-out bpc {m['bpc']:.4f} ({time.perf_counter() - t0:.0f} s to score)")
        table.append(
            [
                name,
                str(summary.get("steps")),
                fmt(m["bpc"]),
                f"{wall / 60:.1f}",
                json.dumps({k: v for k, v in run.config.model.rnn_options().items() if v}),
            ]
        )
    print(f"{args.steps} steps per row, {len(test_text):,} held-out chars, {args.threads} threads")
    print(f"training text: the first {args.max_chars:,} chars of the corpus less the held-out tail")
    print(markdown_table(["regularisers", "steps", "held-out bpc", "minutes", "RNN options"], table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
