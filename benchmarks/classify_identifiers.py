"""Which standard-library package defines this Python identifier? rnnkit's classifier beside char n-gram baselines.

The data come from the running Python's own standard library (nothing is downloaded): every identifier that the
``.py`` files of six packages define or use (``ast``: names of functions, classes, arguments, assigned names and
attributes), 3 to 40 characters, dunder names left out, and every identifier found in more than one of the six
dropped, so each has one answer. A stratified share (``--test-share``, drawn with ``--seed``) of each package is the
test part. The packages are ones a new user might pick to try a text classifier on short, code-like strings:
asyncio, email, importlib, multiprocessing, unittest and xml. No setting was chosen on this data: rnnkit runs at the
classify task's defaults, and the baselines take the settings chosen on the word-to-language data
(``classify_words.py``): naive Bayes on char 1-5-gram counts (alpha 0.1) and logistic regression on sublinear
TF-IDF of the same n-grams (C = 10). It is issue 23's "tried as a new user would" row, kept as a benchmark.

    .venv/bin/python benchmarks/classify_identifiers.py                  # rnnkit for 2 minutes, and the baselines
    .venv/bin/python benchmarks/classify_identifiers.py --skip-rnnkit    # the baselines only

Needs scikit-learn (the ``[bench]`` or ``[dev]`` extra). Tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import ast
import random
import sys
import sysconfig
import tempfile
from collections import Counter
from pathlib import Path

from _classify_common import evaluate_classifier, fmt, limit_threads, log, markdown_table, train_classifier
from classify_words import run_baselines, write_tsv

PACKAGES = ("asyncio", "email", "importlib", "multiprocessing", "unittest", "xml")
MIN_CHARS, MAX_CHARS = 3, 40


def identifiers(package: str) -> set[str]:
    """Every identifier the package's .py files define or use (its tests folder left out)."""
    root = Path(sysconfig.get_paths()["stdlib"]) / package
    names: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if "test" in path.relative_to(root).parts[:-1]:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
    return {n for n in names if MIN_CHARS <= len(n) <= MAX_CHARS and not (n.startswith("__") and n.endswith("__"))}


def build_split(test_share: float, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]], Counter]:
    """(train rows, test rows, identifiers per package): identifiers of one package only, split per package."""
    found = {p: identifiers(p) for p in PACKAGES}
    seen = Counter(n for names in found.values() for n in names)
    rng = random.Random(seed)
    train, test, counts = [], [], Counter()
    for package, names in found.items():
        own = sorted(n for n in names if seen[n] == 1)
        rng.shuffle(own)
        k = round(len(own) * test_share)
        test += [(n, package) for n in own[:k]]
        train += [(n, package) for n in own[k:]]
        counts[package] = len(own)
    rng.shuffle(train)
    return train, test, counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0, help="rnnkit's training budget (default 2)")
    p.add_argument("--test-share", type=float, default=0.2, help="share of each package held out (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="the split's and rnnkit's seed (default 0)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP/torch threads (default 2)")
    p.add_argument("--workdir", help="folder for the data and the run (default: a temp dir)")
    p.add_argument("--skip-rnnkit", action="store_true", help="the baselines only")
    args = p.parse_args(argv)
    if not 0 < args.test_share < 1:
        p.error(f"--test-share must be in (0, 1), got {args.test_share}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="classify-identifiers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    train, test, counts = build_split(args.test_share, args.seed)
    write_tsv(workdir / "train.tsv", train)
    write_tsv(workdir / "test.tsv", test)
    log(f"{len(train)} training and {len(test)} test identifiers: {dict(counts)}")
    with limit_threads(args.threads):
        rows = [[name, fmt(acc, 4), fmt(f1, 4), fmt(s, 1)] for name, acc, f1, s in run_baselines(train, test)]
        if not args.skip_rnnkit:
            options = ["--tokens", "chars", "--seed", str(args.seed), "--max-minutes", str(args.minutes), "--no-plots"]
            summary, wall = train_classifier(workdir / "train.tsv", workdir / "rnnkit-run", options)
            result = evaluate_classifier(workdir / "rnnkit-run", workdir / "test.tsv")
            name = (f"rnnkit, classify defaults ({args.minutes:g} min budget; {summary.get('steps')} steps, "
                    f"stopped: {summary.get('stopped_because')})")  # fmt: skip
            rows.append([name, fmt(result.get("accuracy"), 4), fmt(result.get("macro_f1"), 4), fmt(wall, 1)])
    print(f"## Python identifiers to their standard-library package (Python {sys.version.split()[0]})\n")
    print(f"{len(train)} training and {len(test)} test identifiers; per package: "
          + ", ".join(f"{p} {counts[p]}" for p in PACKAGES) + "\n")  # fmt: skip
    print(markdown_table(["model", "test accuracy", "macro-F1", "train s"], rows))
    print(f"\n{args.threads} thread(s); rnnkit's time is train + eval wall time.")
    given = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"Reproduce: .venv/bin/python benchmarks/classify_identifiers.py {given}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
