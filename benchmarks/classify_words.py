"""Which language is this word? rnnkit's sequence classifier beside character n-gram baselines on real words.

The data are real words from the ``wordfreq`` frequency lists of 12 languages (en de fr es it nl pt pl sv da nb
ca): the top ``--top-n`` words of each list, lowercased, letters only (``str.isalpha``), 3 to 20 letters, and every
word found in more than one of the 12 filtered lists dropped, so each word has exactly one answer. From what is
left, 6,000 training and 1,500 test words per language are drawn with ``--seed`` (72,000 / 18,000 in all) and
written as ``text<TAB>label`` to ``train.tsv`` and ``test.tsv`` in ``--workdir``.

On that one split it measures test accuracy, macro-F1 and training time of

* multinomial naive Bayes on character n-gram counts (``CountVectorizer(analyzer="char_wb", ngram_range=(1, 5))``,
  ``alpha=0.1``);
* logistic regression on sublinear TF-IDF of the same n-grams (``C=10``, lbfgs);
* rnnkit: ``rnnkit train classify`` at the task's defaults (the settings below override them) for ``--minutes``
  CPU-minutes, ``--val-fraction`` of train.tsv held out to choose ``best.pt`` and stop early, then ``rnnkit eval
  --json`` on test.tsv.

The baseline settings were chosen on a validation split carved out of train.tsv (never on test.tsv): n-grams up to
5 beat 4 and matched 6; alpha 0.01-0.1 beat 0.3-1; C=10 beat 1 and 3 and matched 30. A speed section then trains
rnnkit for ``--speed-steps`` steps with length bucketing on and off and prints examples/s and the padding share of
each (from each run's summary.json). Issue 23's target: rnnkit at the defaults at least 1 accuracy point above
the logistic regression within 10 CPU-minutes.

    .venv/bin/python benchmarks/classify_words.py                      # everything, rnnkit for 10 minutes
    .venv/bin/python benchmarks/classify_words.py --skip-rnnkit        # the baselines only (about 2 minutes)
    .venv/bin/python benchmarks/classify_words.py --minutes 1 --workdir /tmp/words

Needs the benchmark extras (wordfreq, scikit-learn). Tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _classify_common import (
    add_settings,
    evaluate_classifier,
    fmt,
    given_settings,
    limit_threads,
    log,
    markdown_table,
    summary_value,
    train_classifier,
)

LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pt", "pl", "sv", "da", "nb", "ca")
TRAIN_PER_LANGUAGE = 6_000
TEST_PER_LANGUAGE = 1_500
MIN_LETTERS, MAX_LETTERS = 3, 20
SPEED_VAL_ROWS = 256


def language_words(language: str, top_n: int) -> list[str]:
    """The top-``top_n`` words of one wordfreq list, lowercased, letters only, 3-20 letters, de-duplicated."""
    import wordfreq

    seen: dict[str, None] = {}  # insertion-ordered set: keeps frequency order
    for word in wordfreq.top_n_list(language, top_n):
        word = word.lower()
        if word.isalpha() and MIN_LETTERS <= len(word) <= MAX_LETTERS:
            seen.setdefault(word, None)
    return list(seen)


def build_split(top_n: int, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict[str, int]]:
    """(train, test, words left per language): words unique to one language, drawn per language with ``seed``."""
    lists = {lang: language_words(lang, top_n) for lang in LANGUAGES}
    owners = Counter(word for words in lists.values() for word in words)
    rng = random.Random(seed)
    train: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    left: dict[str, int] = {}
    need = TRAIN_PER_LANGUAGE + TEST_PER_LANGUAGE
    for lang in LANGUAGES:
        unique = sorted(word for word in lists[lang] if owners[word] == 1)  # sorted: the draw depends on seed only
        left[lang] = len(unique)
        if len(unique) < need:
            raise SystemExit(
                f"--top-n {top_n} leaves {len(unique)} words for {lang!r}, need {need}; raise --top-n "
                "(the Danish list is the shortest, about 29k words)"
            )
        drawn = rng.sample(unique, need)
        train += [(word, lang) for word in drawn[:TRAIN_PER_LANGUAGE]]
        test += [(word, lang) for word in drawn[TRAIN_PER_LANGUAGE:]]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test, left


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")


def read_tsv(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in path.read_text(encoding="utf-8").splitlines()]


Result = tuple[str, float | None, float | None, float]  # model, test accuracy, macro-F1, train seconds


def run_baselines(train: list[tuple[str, str]], test: list[tuple[str, str]]) -> list[Result]:
    """Fit naive Bayes and logistic regression on char n-grams; one result each."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline

    x_train, y_train = zip(*train, strict=True)
    x_test, y_test = zip(*test, strict=True)
    models = {
        "char 1-5-gram counts + MultinomialNB (alpha=0.1)": make_pipeline(
            CountVectorizer(analyzer="char_wb", ngram_range=(1, 5)), MultinomialNB(alpha=0.1)
        ),
        "char 1-5-gram TF-IDF + LogisticRegression (C=10)": make_pipeline(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 5), sublinear_tf=True),
            LogisticRegression(C=10.0, max_iter=1000),
        ),
    }
    rows = []
    for name, model in models.items():
        log(f"fitting {name} ...")
        start = time.perf_counter()
        model.fit(x_train, y_train)
        fit_s = time.perf_counter() - start
        predicted = model.predict(x_test)
        accuracy = accuracy_score(y_test, predicted)
        macro_f1 = f1_score(y_test, predicted, average="macro")
        log(f"  accuracy {accuracy:.4f}  macro-F1 {macro_f1:.4f}  fit {fit_s:.1f} s")
        rows.append((name, float(accuracy), float(macro_f1), fit_s))
    return rows


SETTINGS = ("--mode", "--embedding-size", "--hidden-size", "--num-layers", "--bidirectional", "--pooling", "--dropout",
            "--batch-size", "--lr", "--eval-every")  # fmt: skip


def rnnkit_options(args: argparse.Namespace) -> list[str]:
    """The script's rnnkit flags as ``rnnkit train classify`` options (budget and stopping not included): the
    classify task's defaults but for the settings given on the command line."""
    options = ["--tokens", "chars", "--seed", str(args.seed), "--device", args.device]
    return [*options, *given_settings(args, SETTINGS), *args.rnnkit_arg]


def run_rnnkit(args: argparse.Namespace, workdir: Path) -> Result:
    """Train for ``--minutes`` with ``--val-fraction`` held out for model selection, evaluate on test.tsv."""
    run_dir = workdir / "rnnkit-run"
    options = [
        *rnnkit_options(args),
        "--val-fraction", str(args.val_fraction),
        "--max-minutes", str(args.minutes),
        "--no-plots",
    ]  # fmt: skip
    summary, wall = train_classifier(workdir / "train.tsv", run_dir, options)
    result = evaluate_classifier(run_dir, workdir / "test.tsv")
    log(
        f"  rnnkit: accuracy {result.get('accuracy')}  macro-F1 {result.get('macro_f1')}  n {result.get('n')}  "
        f"steps {summary.get('steps')}  stopped because {summary.get('stopped_because')}"
    )
    given = " ".join(given_settings(args, SETTINGS))
    name = f"rnnkit, classify defaults{' + ' + given if given else ''} ({args.minutes:g} min budget)"
    return name, summary_value(result, "accuracy"), summary_value(result, "macro_f1"), wall


def run_speed(args: argparse.Namespace, workdir: Path) -> str:
    """Same model, fixed steps, length bucketing on and off: examples/s and padding share of each."""
    # summary.json's items_per_s is examples over the session's wall time, the closing validation included; a
    # small --val keeps that validation to a blink (--val-fraction 0 would validate on all 72,000 training words).
    val = workdir / "speed-val.tsv"
    write_tsv(val, read_tsv(workdir / "train.tsv")[:SPEED_VAL_ROWS])
    rows, summaries = [], []
    for bucket in ("true", "false"):
        run_dir = workdir / f"rnnkit-speed-bucket-{bucket}"
        options = [
            *rnnkit_options(args),
            "--val", str(val),
            "--eval-every", str(args.speed_steps),
            "--max-steps", str(args.speed_steps),
            "--max-minutes", "0",
            "--bucket", bucket,
        ]  # fmt: skip
        summary, _ = train_classifier(workdir / "train.tsv", run_dir, options)
        summaries.append(summary)
        rows.append(
            [
                bucket,
                str(summary.get("steps", "n/a")),
                fmt(summary_value(summary, "items_per_s"), 0),
                fmt(summary_value(summary, "padding_share"), 3),
                fmt(summary_value(summary, "elapsed_s"), 1),
            ]
        )
    table = markdown_table(["--bucket", "steps", "examples/s", "padding share", "train s"], rows)
    on, off = (summary_value(s, "items_per_s") for s in summaries)
    ratio = f"{on / off:.2f}x" if on and off else "n/a"
    return f"{table}\n\nexamples/s with bucketing / without: {ratio}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="rnnkit training budget in minutes (default 10)")
    p.add_argument("--skip-rnnkit", action="store_true", help="baselines only: no rnnkit training or speed runs")
    p.add_argument("--skip-baselines", action="store_true", help="rnnkit only (to iterate on its settings)")
    p.add_argument("--workdir", default=None, help="folder for train.tsv, test.tsv and the runs (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0, help="seed of the word draw and of rnnkit (default 0)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP/torch threads (default 2)")
    p.add_argument("--top-n", type=int, default=25_000, help="words read from each frequency list (default 25000)")
    p.add_argument(
        "--speed-steps", type=int, default=500, help="steps of each bucketing speed run (default 500; 0 skips)"
    )
    g = add_settings(p, SETTINGS)
    g.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu: the target is CPU-minutes)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="train share held out for selection (0.1)")
    g.add_argument(
        "--rnnkit-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra rnnkit option, repeatable, e.g. --rnnkit-arg=--weight-decay --rnnkit-arg=0.1",
    )
    args = p.parse_args(argv)

    with limit_threads(args.threads), tempfile.TemporaryDirectory(prefix="classify-words-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        log(f"reading the top {args.top_n} words of {len(LANGUAGES)} wordfreq lists ...")
        train, test, left = build_split(args.top_n, args.seed)
        write_tsv(workdir / "train.tsv", train)
        write_tsv(workdir / "test.tsv", test)
        log(f"wrote {workdir / 'train.tsv'} ({len(train)}) and {workdir / 'test.tsv'} ({len(test)})")

        rows = [] if args.skip_baselines else run_baselines(train, test)
        speed = None
        if not args.skip_rnnkit:
            rows.append(run_rnnkit(args, workdir))
            if args.speed_steps > 0:
                speed = run_speed(args, workdir)

    print(f"## Which language is this word? ({len(LANGUAGES)} languages)\n")
    print(
        f"Data: wordfreq top {args.top_n} words per language, lowercased, letters only, {MIN_LETTERS}-{MAX_LETTERS} "
        "letters, words in more than one list dropped; words left per language: "
        + ", ".join(f"{lang} {n}" for lang, n in left.items())
        + "."
    )
    print(
        f"Split (seed {args.seed}): {len(train)} train / {len(test)} test "
        f"({TRAIN_PER_LANGUAGE} / {TEST_PER_LANGUAGE} per language). "
        f"{args.threads} thread(s).\n"
    )
    table = [[name, fmt(acc, 4), fmt(f1, 4), fmt(secs, 1)] for name, acc, f1, secs in rows]
    print(markdown_table(["model", "test accuracy", "macro-F1", "train time (s)"], table))
    if len(rows) == 3 and rows[2][1] is not None:
        margin = 100 * (rows[2][1] - max(rows[0][1], rows[1][1]))
        print(
            f"\nrnnkit minus the better baseline: {margin:+.1f} accuracy points "
            "(issue 23: at least +1.0 over logistic regression)"
        )
    if not args.skip_rnnkit:
        print(
            f"\nrnnkit holds out {args.val_fraction:g} of train.tsv for model selection; its time is the wall time "
            "of `rnnkit train classify` (process start-up included)."
        )
    if speed is not None:
        print(f"\n### Length bucketing ({args.speed_steps} steps each)\n")
        print(speed)
    print("\nReproduce: .venv/bin/python benchmarks/classify_words.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
