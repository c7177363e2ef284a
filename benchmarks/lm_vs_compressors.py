"""Held-out bits per character: a trained character LM beside gzip, bzip2 and xz given the same training text.

The compressors' figure is conditional: ``8 * (|C(train + test)| - |C(train)|) / chars(test)``, the bits the
compressor spends on the held-out text once it has seen the training text (UTF-8 bytes in, chars out).

    python benchmarks/lm_vs_compressors.py --minutes 5              # train on the built-in corpus, then compare
    python benchmarks/lm_vs_compressors.py --run runs/lm-...        # compare an existing run on its own split
    python benchmarks/lm_vs_compressors.py --data FILE --minutes 2  # any UTF-8 text file
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import sys
import time
from pathlib import Path

import torch

from rnnkit.checkpoint import load_run
from rnnkit.data import split_text
from rnnkit.errors import RnnkitError
from rnnkit.metrics import evaluate_dynamic, evaluate_text
from rnnkit.precision import precision_name, resolve_precision
from rnnkit.tasks.language_model import LMConfig, load_text
from rnnkit.tasks.language_model import LMDataConfig as DataConfig
from rnnkit.tasks.language_model import LMModelConfig as ModelConfig
from rnnkit.tasks.language_model import LMTrainConfig as TrainConfig
from rnnkit.train import train_lm

COMPRESSORS = {
    "gzip -9": lambda b: gzip.compress(b, compresslevel=9, mtime=0),
    "bzip2 -9": lambda b: bz2.compress(b, compresslevel=9),
    "xz -9e": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
}


def conditional_bpc(compress, train: str, test: str) -> float:
    """Bits per character the compressor spends on ``test`` after ``train``."""
    a, b = train.encode("utf-8"), test.encode("utf-8")
    return 8 * (len(compress(a + b)) - len(compress(a))) / len(test)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="existing run folder (its config gives the text and the split)")
    p.add_argument("--data", help="UTF-8 text file (default: the built-in corpus / the run's text)")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget when no --run is given")
    p.add_argument("--max-chars", type=int, default=None, help="cap on the text (default: the config's)")
    p.add_argument("--hidden-size", type=int, default=None, help="LSTM width when training (default: the config's)")
    p.add_argument("--out", default=None, help="run folder when training (default: runs/bench-lm-<time>)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", default="auto", choices=("fp32", "bf16", "auto"), help="training precision "
                   "(default auto, the LM's); the held-out text is scored at the run's precision")  # fmt: skip
    p.add_argument("--no-compressors", action="store_true", help="leave out the gzip/bzip2/xz rows")
    p.add_argument(
        "--dynamic-lr",
        default="0.001",
        help="comma-separated step sizes for dynamic evaluation rows (default 0.001; 0 or '' = none)",
    )
    args = p.parse_args(argv)
    try:
        if args.run:
            run = load_run(args.run, "best")
            data = run.config.data
            if args.data is not None or args.max_chars is not None:
                data = DataConfig(
                    data=args.data or data.data,
                    val_fraction=data.val_fraction,
                    max_chars=data.max_chars if args.max_chars is None else args.max_chars,
                )
            config = LMConfig(run.config.model, data, run.config.train)
            run_dir = Path(args.run)
        else:
            data = DataConfig(data=args.data, **({} if args.max_chars is None else {"max_chars": args.max_chars}))
            train = TrainConfig(
                max_minutes=args.minutes, max_steps=0, device=args.device, eval_chars=50_000, precision=args.precision
            )
            model = ModelConfig() if args.hidden_size is None else ModelConfig(hidden_size=args.hidden_size)
            config = LMConfig(model, data, train)
            run_dir = Path(args.out or time.strftime("runs/bench-lm-%Y%m%d-%H%M%S"))
            result = train_lm(config, run_dir)
            print(f"trained {result.steps} steps in {result.elapsed_s:.0f} s ({result.items_per_second:.0f} chars/s)")
            run = load_run(run_dir, "best")
        text = load_text(config)
        train_text, test_text = split_text(text, config.data.val_fraction)
        device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
        run.model.to(device)
        t0 = time.perf_counter()
        with run.autocast():
            m = evaluate_text(run.model, run.vocab, test_text, batch_size=16, bptt=256, device=device)
        eval_s = time.perf_counter() - t0
        dynamic = []
        for lr in [float(v) for v in args.dynamic_lr.split(",") if v.strip() and float(v) > 0]:
            t0 = time.perf_counter()
            ids = run.vocab.encode(test_text, tensor=True)
            d = evaluate_dynamic(run.model, ids, lr=lr, batch_size=2, bptt=32, device=device)
            dynamic.append((lr, d["bpc"], time.perf_counter() - t0))
    except (RnnkitError, OSError) as e:
        print(f"lm_vs_compressors: error: {e}", file=sys.stderr)
        return 2
    used = precision_name(resolve_precision(config.train.precision, device))
    source = config.data.data or "built-in corpus (Python stdlib source)"
    print(f"text: {source}; {len(train_text):,} training chars, {len(test_text):,} held-out chars")
    print(
        f"model: {config.model.mode} H={config.model.hidden_size} L={config.model.num_layers}, run {run_dir}, "
        f"step {run.step} ({run.path.name}); precision {used}; eval {eval_s:.1f} s on {device}"
    )
    print()
    print(f"{'method':<22}{'held-out bpc':>14}{'time s':>9}")
    print(f"{'rnnkit char LM':<22}{m['bpc']:>14.3f}{eval_s:>9.1f}")
    for lr, bpc, seconds in dynamic:
        print(f"{f'  dynamic eval lr {lr:g}':<22}{bpc:>14.3f}{seconds:>9.1f}", flush=True)
    for name, compress in {} if args.no_compressors else COMPRESSORS.items():
        t0 = time.perf_counter()
        bpc = conditional_bpc(compress, train_text, test_text)
        print(f"{name + ' (given train)':<22}{bpc:>14.3f}{time.perf_counter() - t0:>9.1f}", flush=True)
    print()
    print("note: gzip only looks back 32 KB and bzip2 works in independent 900 KB blocks, so both barely use the")
    print("training text; xz's dictionary (64 MB at -9) can see all of it. The model's first held-out char is context")
    print("only; the model is scored on the held-out text with its state carried through it. Dynamic evaluation")
    print("scores each 32-char chunk (2 rows), then takes one RMS-normalised gradient step on it, so like the")
    print("compressors it adapts to the text it has already coded (rnnkit.metrics.evaluate_dynamic).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
