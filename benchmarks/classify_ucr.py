"""UCR/UEA time-series classification: rnnkit's sequence classifier beside 1-NN DTW and MiniRocket.

Four archive datasets, read from the ``.ts`` files sktime ships (``sktime/datasets/data/<Name>/<Name>_TRAIN.ts``
and ``_TEST.ts``), with the archive's own train/test split: GunPoint, ItalyPowerDemand, ArrowHead (univariate) and
BasicMotions (6 channels). On each it measures test accuracy and time of

* 1-NN DTW, full window: sktime ``KNeighborsTimeSeriesClassifier(n_neighbors=1, distance="dtw")``; time = fit +
  predict;
* MiniRocket: sktime ``MiniRocket`` (``MiniRocketMultivariate`` for BasicMotions) + scikit-learn
  ``RidgeClassifierCV(alphas=np.logspace(-3, 3, 10))``; time = transform fit + ridge fit + predict;
* rnnkit: ``rnnkit train classify --data X_TRAIN.ts --val-fraction 0 --max-minutes M`` (``--minutes``, 2 per
  dataset by default), then ``rnnkit eval --data X_TEST.ts --json``; time = wall time of both commands. With no
  validation split the run validates on its training set, so early stopping (on by default) stops it only once
  training accuracy and loss stop improving.

Settings are chosen with ``--validate F`` (rnnkit only): each run trains on the _TRAIN file less a stratified share
F of each class and is scored on that share; the _TEST file is not read. The table of those runs is in
docs/results.md; the test split is read once per reported number, by the plain run above.

Both baselines are compiled by numba on first use: each is run once on a few rows before it is timed, so the times
are of the method, not of the compiler. Beside the measured numbers stand the published test accuracies of ROCKET
(Dempster et al. 2020) and InceptionTime (Ismail Fawaz et al. 2020) on the same splits, with their sources below.
The issue's target: rnnkit at least as accurate as 1-NN DTW on each dataset.

    .venv/bin/python benchmarks/classify_ucr.py                      # all four, rnnkit 2 minutes each
    .venv/bin/python benchmarks/classify_ucr.py --skip-rnnkit        # the baselines only (about a minute)
    .venv/bin/python benchmarks/classify_ucr.py --datasets GunPoint --minutes 1
    .venv/bin/python benchmarks/classify_ucr.py --validate 0.3 --minutes 0 --eval-every 50 \
        --rnnkit-arg=--max-steps --rnnkit-arg=300 --pooling max           # a setting on validation data only

Needs the benchmark extras (sktime, numba, scikit-learn). Tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

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

DATASETS = ("GunPoint", "ItalyPowerDemand", "ArrowHead", "BasicMotions")

# ROCKET, Dempster, Petitjean & Webb (2020), DMKD 34:1454-1495: mean test accuracy over 10 runs on the archive's
# train/test split, from angus924/rocket, results/results_ucr.csv (the 128 UCR datasets; the preprint's
# .preprint/results_ucr_bakeoff.csv has ArrowHead 0.80514286, GunPoint 1.0, ItalyPowerDemand 0.96909621).
# The paper covers univariate UCR data only, so BasicMotions (UEA, multivariate) has no published figure there.
ROCKET_PUBLISHED: dict[str, float | None] = {
    "GunPoint": 1.0,
    "ItalyPowerDemand": 0.96958212,
    "ArrowHead": 0.81428571,
    "BasicMotions": None,
}
# InceptionTime, Ismail Fawaz et al. (2020), DMKD 34:1936-1962: test accuracy of the ensemble of 5 Inception
# networks on the archive's split, from hfawaz/InceptionTime, results-InceptionTime-85.csv (the paper's 85 UCR
# datasets; its results-InceptionTime-128.csv on the 2018 archive has GunPoint 1.0, ItalyPowerDemand 0.96501458,
# ArrowHead 0.84571429). BasicMotions: results-mts.csv of the same repository (30 UEA datasets; linked only from a
# commented-out line of its README, not part of the paper), hence the dagger in the table.
INCEPTIONTIME_PUBLISHED: dict[str, float | None] = {
    "GunPoint": 1.0,
    "ItalyPowerDemand": 0.967930029154519,
    "ArrowHead": 0.8285714285714286,
    "BasicMotions": 1.0,
}
INCEPTIONTIME_REPO_ONLY = {"BasicMotions"}


def dataset_files(name: str) -> tuple[Path, Path]:
    """The sktime-bundled ``<name>_TRAIN.ts`` and ``<name>_TEST.ts``."""
    import sktime

    folder = Path(sktime.__file__).parent / "datasets" / "data" / name
    train, test = folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts"
    for path in (train, test):
        if not path.is_file():
            raise SystemExit(f"{path} not found: this sktime ({sktime.__version__}) does not bundle {name}")
    return train, test


def load_ts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(X (N, channels, T) float64, y (N,) str) from a ``.ts`` file."""
    from sktime.datasets import load_from_tsfile

    X, y = load_from_tsfile(str(path), return_data_type="numpy3D")
    return np.asarray(X, dtype=np.float64), np.asarray(y)


def one_nn_dtw(threads: int):
    from sktime.classification.distance_based import KNeighborsTimeSeriesClassifier

    # distance_params=None: the full warping window (no Sakoe-Chiba band)
    return KNeighborsTimeSeriesClassifier(n_neighbors=1, distance="dtw", n_jobs=threads)


class MiniRocketRidge:
    """MiniRocket features -> ``RidgeClassifierCV``, as in Dempster et al. (2021).

    Composed by hand: scikit-learn 1.9's ``Pipeline`` fails on sktime transformers (its callback context expects
    ``_parent_callback_ctx`` on each step).
    """

    def __init__(self, channels: int, seed: int, threads: int):
        from sklearn.linear_model import RidgeClassifierCV
        from sktime.transformations.rocket import MiniRocket, MiniRocketMultivariate

        transform = MiniRocket if channels == 1 else MiniRocketMultivariate
        self.transform = transform(random_state=seed, n_jobs=threads)
        self.ridge = RidgeClassifierCV(alphas=np.logspace(-3, 3, 10))

    def fit(self, X: np.ndarray, y: np.ndarray) -> MiniRocketRidge:
        self.ridge.fit(self.transform.fit_transform(X), y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.ridge.predict(self.transform.transform(X))


def timed_accuracy(make, X_train, y_train, X_test, y_test) -> tuple[float, float]:
    """(test accuracy, fit + predict seconds) of a fresh ``make()``; a first untimed run on one row per class
    compiles numba (and fills its cache), so the time is of the method, not of the compiler."""
    warm = np.unique(y_train, return_index=True)[1]
    make().fit(X_train[warm], y_train[warm]).predict(X_test[:4])
    model = make()
    start = time.perf_counter()
    predicted = model.fit(X_train, y_train).predict(X_test)
    seconds = time.perf_counter() - start
    return float(np.mean(predicted == y_test)), seconds


def rnnkit_options(args: argparse.Namespace) -> list[str]:
    """The split, budget, seed and device, then only the settings given: the rest are the classify task's defaults."""
    options = ["--val-fraction", str(args.validate or 0), "--max-minutes", str(args.minutes), "--seed", str(args.seed),
               "--device", args.device]  # fmt: skip
    return [*options, *given_settings(args, SETTINGS), *args.rnnkit_arg]


def run_rnnkit(args: argparse.Namespace, train: Path, test: Path, run_dir: Path) -> tuple[float | None, float, str]:
    """(test accuracy, seconds of train + eval, steps and why it stopped) of one rnnkit run on the archive split."""
    start = time.perf_counter()
    summary, _ = train_classifier(train, run_dir, rnnkit_options(args))
    result = evaluate_classifier(run_dir, test)
    seconds = time.perf_counter() - start
    log(
        f"  rnnkit: accuracy {result.get('accuracy')} (n {result.get('n')}), {summary.get('steps')} steps, "
        f"{fmt(summary_value(summary, 'items_per_s'), 0)} examples/s, stopped because {summary.get('stopped_because')}"
    )
    return summary_value(result, "accuracy"), seconds, f"{summary.get('steps')} ({summary.get('stopped_because')})"


SETTINGS = ("--mode", "--hidden-size", "--num-layers", "--bidirectional", "--pooling", "--dropout", "--batch-size",
            "--lr", "--eval-every", "--patience", "--scaling")  # fmt: skip


def validate_rnnkit(args: argparse.Namespace, names: list[str]) -> int:
    """``--validate F``: rnnkit trained on each _TRAIN file less a stratified share F of each class, scored on that
    share (the run's own validation split); the _TEST file is not read. For choosing settings."""
    rows = []
    with limit_threads(args.threads), tempfile.TemporaryDirectory(prefix="classify-ucr-val-") as tmp:
        workdir = Path(args.workdir or tmp)
        for name in names:
            train_path, _ = dataset_files(name)
            summary, wall = train_classifier(train_path, workdir / name, rnnkit_options(args))
            best, last = summary.get("best") or {}, summary.get("last") or {}
            accuracy = (fmt(summary_value(best, "accuracy")), fmt(summary_value(last, "accuracy")))
            rows.append([name, *accuracy, fmt(summary_value(best, "loss")), str(summary.get("steps")),
                         str(summary.get("stopped_because")), fmt(wall, 1)])  # fmt: skip
    headers = ["dataset", "val accuracy (best.pt)", "val accuracy (last)", "val loss (best.pt)", "steps",
               "stopped because", "time s"]  # fmt: skip
    print(f"## rnnkit on a validation split of the _TRAIN files ({args.validate:g} of each class; _TEST not read)\n")
    print(markdown_table(headers, rows))
    print("\nReproduce: .venv/bin/python benchmarks/classify_ucr.py " + " ".join(argv_seen))
    return 0


argv_seen: list[str] = []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS, help="(default: all four)")
    p.add_argument("--minutes", type=float, default=2.0, help="rnnkit training budget per dataset (default 2)")
    p.add_argument("--skip-rnnkit", action="store_true", help="baselines only")
    p.add_argument("--skip-baselines", action="store_true", help="rnnkit only (to iterate on its settings)")
    p.add_argument("--workdir", default=None, help="folder for the rnnkit runs (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0, help="seed of MiniRocket's kernels and of rnnkit (default 0)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP/numba/torch threads (default 2)")
    g = add_settings(p, SETTINGS)
    g.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    g.add_argument(
        "--rnnkit-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra rnnkit option, repeatable, e.g. --rnnkit-arg=--weight-decay --rnnkit-arg=0.1",
    )
    p.add_argument("--validate", type=float, default=None, metavar="F",
                   help="choose settings: rnnkit only, trained on the _TRAIN file less a stratified share F, scored "
                        "on that share; the _TEST file is not read")  # fmt: skip
    args = p.parse_args(argv)
    argv_seen[:] = argv if argv is not None else sys.argv[1:]
    if args.validate is not None:
        return validate_rnnkit(args, args.datasets)

    warnings.filterwarnings("ignore", category=FutureWarning)  # sktime's deprecation notices, not ours to fix
    rows, pairs = [], []  # pairs: (1-NN DTW, rnnkit) accuracies, for the target line
    with limit_threads(args.threads), tempfile.TemporaryDirectory(prefix="classify-ucr-") as tmp:
        if not args.skip_baselines:  # only the baselines need numba
            import numba

            numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in args.datasets:
            train_path, test_path = dataset_files(name)
            X_train, y_train = load_ts(train_path)
            X_test, y_test = load_ts(test_path)
            n_train, channels, length = X_train.shape
            log(f"{name}: {n_train} train / {len(X_test)} test, {channels} channel(s), length {length}")
            dtw = rocket = rnn = None
            dtw_s = rocket_s = rnn_s = None
            steps = "n/a"
            if not args.skip_baselines:
                dtw, dtw_s = timed_accuracy(lambda: one_nn_dtw(args.threads), X_train, y_train, X_test, y_test)
                log(f"  1-NN DTW: accuracy {dtw:.4f}  {dtw_s:.2f} s")
                rocket, rocket_s = timed_accuracy(
                    lambda c=channels: MiniRocketRidge(c, args.seed, args.threads), X_train, y_train, X_test, y_test
                )
                log(f"  MiniRocket: accuracy {rocket:.4f}  {rocket_s:.2f} s")
            if not args.skip_rnnkit:
                rnn, rnn_s, steps = run_rnnkit(args, train_path, test_path, workdir / name)
            if dtw is not None and rnn is not None:
                pairs.append((dtw, rnn))
            dagger = "†" if name in INCEPTIONTIME_REPO_ONLY else ""
            rows.append(
                [
                    name,
                    f"{n_train}/{len(X_test)}",
                    str(length) if channels == 1 else f"{length} x {channels} ch",
                    fmt(dtw),
                    fmt(rocket),
                    fmt(rnn),
                    steps,
                    fmt(ROCKET_PUBLISHED[name]),
                    fmt(INCEPTIONTIME_PUBLISHED[name]) + dagger,
                    " / ".join(fmt(s, 1) for s in (dtw_s, rocket_s, rnn_s)),
                ]
            )

    headers = [
        "dataset",
        "train/test",
        "length",
        "1-NN DTW",
        "MiniRocket",
        "rnnkit",
        "rnnkit steps (stopped by)",
        "ROCKET (published)",
        "InceptionTime (published)",
        "time s (DTW / MiniRocket / rnnkit)",
    ]
    print("## UCR/UEA classification: test accuracy on the archive splits\n")
    print(markdown_table(headers, rows))
    print(
        f"\n{args.threads} thread(s). rnnkit: the classify defaults, {args.minutes:g} min per dataset, no validation "
        "split (--val-fraction 0), time = train + eval wall time. Baseline time = fit + predict, after a numba warm-up."
    )
    if pairs:
        wins = sum(rnn >= dtw for dtw, rnn in pairs)
        print(f"rnnkit >= 1-NN DTW on {wins} of {len(pairs)} datasets (target: all).")
    print(
        "Published: ROCKET from angus924/rocket results/results_ucr.csv (mean of 10 runs); InceptionTime from "
        "hfawaz/InceptionTime results-InceptionTime-85.csv; † results-mts.csv of that repository (not in the paper)."
    )
    print("\nReproduce: .venv/bin/python benchmarks/classify_ucr.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
