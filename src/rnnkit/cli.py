"""The ``rnnkit`` command: train, sample, eval, predict, export, bench, gradflow. The package's only printing module.

Errors the user can fix (bad config, data, paths, run folders, arguments) print ONE line ``rnnkit: error: ...`` on
stderr and exit with status 2; Ctrl-C prints one line saying what was saved and exits 130. Any
other exception is a bug and keeps its traceback.

``rnnkit train TASK`` (``lm``, ``classify``) writes to ``--out`` (default: a new timestamped folder
``runs/TASK-YYYYmmdd-HHMMSS``, so no run is ever overwritten; ``--resume`` needs an explicit ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from rnnkit import __version__
from rnnkit.cliargs import add_config_flags, build_config, config_overrides, float_flag, int_flag
from rnnkit.errors import CheckpointError, DataError, RnnkitError
from rnnkit.io import check_output

log = logging.getLogger("rnnkit.cli")

SAMPLE_CHARS = 300


class UsageError(Exception):
    """A usage error found by argparse: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --len is not --length: a typo stays an error
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, no usage block
        raise UsageError(message)


def _eprint(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --- train ---------------------------------------------------------------------------------------------------------


class _Progress:
    """The trainer's on_event -> a tqdm bar on a TTY stderr, else one plain stderr line per evaluation."""

    def __init__(self) -> None:
        self.bar = None
        self.tty = sys.stderr.isatty()
        self.unit = "items"

    def __call__(self, event: dict) -> None:
        kind = event.get("kind")
        if kind == "start":
            self.unit = event.get("unit", "items")
            if self.tty:
                from tqdm import tqdm

                total = event.get("max_steps") or None
                self.bar = tqdm(
                    total=total, initial=event.get("step") or 0, file=sys.stderr, unit="step", dynamic_ncols=True
                )
        elif kind == "step" and self.bar is not None:
            self.bar.update((event.get("step") or 0) - self.bar.n)
            post = {"loss": _f(event.get("loss"))}
            if event.get("bpc") is not None:
                post["bpc"] = _f(event["bpc"])
            post[f"{self.unit}/s"] = _f(event.get("items_per_s"), 0)
            if event.get("eta_s") is not None:
                post["eta"] = f"{event['eta_s']:.0f}s"
            self.bar.set_postfix(post, refresh=False)
        elif kind == "eval":
            vals = " ".join(
                f"val {key[4:]} {_f(value)}"
                for key, value in event.items()
                if key.startswith("val_") and key != "val_chars" and isinstance(value, float)
            )
            line = (
                f"step {event.get('step')}: {vals} {_f(event.get('items_per_s'), 0)} {self.unit}/s"
                f" {_f(event.get('elapsed_s'), 0)} s"
            )
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                _eprint(line)
        elif kind == "end":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _f(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cmd_train(args: argparse.Namespace) -> int:
    import rnnkit.train
    from rnnkit.tasks import TASKS

    task_cls = TASKS[args.task]
    config = build_config(args.config, config_overrides(args, task_cls.Config), task_cls.Config)
    if args.out is None:
        if args.resume:
            raise UsageError("--resume needs --out DIR (the run folder to continue)")
        out = Path("runs") / time.strftime(f"{task_cls.name}-%Y%m%d-%H%M%S")
    else:
        if not args.out.strip():
            raise UsageError("--out must name a folder, got an empty string")
        out = Path(args.out)
    task = task_cls(config)
    progress = _Progress()
    try:
        result = rnnkit.train.train(task, out, resume=args.resume, on_event=progress)
    finally:
        progress.close()
    primary = task.primary
    print(
        f"val {primary}: best {result.best.get(primary, float('nan')):.4f}, "
        f"last {result.last.get(primary, float('nan')):.4f} ({result.steps} steps, "
        f"{result.items_per_second:.0f} {task.unit}/s, {result.elapsed_s:.1f} s, {result.precision}, "
        f"stopped: {result.stopped_because})"
    )
    print(f"run folder: {result.run_dir}")
    if args.task == "lm":
        from rnnkit.checkpoint import load_run
        from rnnkit.sampling import sample_text

        run = load_run(result.run_dir, "best")
        with run.autocast():
            text = sample_text(
                run.model, run.vocab, "", SAMPLE_CHARS, temperature=0.8, generator=torch.Generator().manual_seed(0)
            )
        print(f"sample (best checkpoint, temperature 0.8, seed 0):\n{text}")
    elif result.info.get("validates_on_training_set"):
        print("note: no validation data (--val-fraction 0 and no --val): the metrics above are on the training set")
    return 0


# --- sample / eval / predict ---------------------------------------------------------------------------------------
# Each runs the model under run.autocast(): the precision it trained at, so eval reproduces training's metrics.


def cmd_sample(args: argparse.Namespace) -> int:
    from rnnkit.checkpoint import load_run
    from rnnkit.sampling import generate

    run = load_run(args.run, args.checkpoint, task="lm", purpose="sample")
    gen = torch.Generator().manual_seed(args.seed)
    run.vocab.encode(args.prompt)  # a prompt the model cannot read fails before anything is printed
    out = sys.stdout
    if args.echo_prompt:
        out.write(args.prompt)
    chars = generate(
        run.model,
        run.vocab,
        args.prompt,
        args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=gen,
    )
    with run.autocast():  # the generator runs the model as it is iterated
        for ch in chars:
            out.write(ch)
            out.flush()
    out.write("\n")
    out.flush()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rnnkit.checkpoint import load_run

    run = load_run(args.run, args.checkpoint)
    evaluate = {"classify": _eval_classify, "forecast": _eval_forecast, "seq2seq": _eval_seq2seq}
    with run.autocast():
        return evaluate.get(run.task.name, _eval_lm)(args, run)


def _eval_lm(args: argparse.Namespace, run) -> int:
    from rnnkit.data import read_text
    from rnnkit.metrics import evaluate_dynamic, evaluate_text

    text = read_text(args.data)
    if args.dynamic_lr > 0:
        ids = run.vocab.encode(text, tensor=True, strict=False)  # (N,)
        rows = args.batch_size or 2
        m = evaluate_dynamic(run.model, ids, lr=args.dynamic_lr, decay=args.dynamic_decay, batch_size=rows, bptt=32)
        m["unknown"] = run.vocab.count_unknown(text)
    else:
        rows = args.batch_size or 16
        m = evaluate_text(run.model, run.vocab, text, batch_size=rows, bptt=run.config.train.bptt)
    how = f"dynamic, lr {args.dynamic_lr:g}" if args.dynamic_lr > 0 else "static"
    if args.json:
        print(
            json.dumps(
                {
                    "task": "lm",
                    "loss": m["loss"],
                    "bpc": m["bpc"],
                    "chars": m["chars"],
                    "unknown_chars": m["unknown"],
                    "run": str(args.run),
                    "checkpoint": str(run.path),
                    "step": run.step,
                    "dynamic_lr": args.dynamic_lr,
                }
            )
        )
    else:
        unknown = f", {m['unknown']} not in the vocabulary (scored as U+FFFD)" if m["unknown"] else ""
        print(
            f"{args.data}: {m['chars']} chars{unknown}, loss {m['loss']:.4f} nats/char, {m['bpc']:.4f} bits/char "
            f"({how}; run {args.run}, {run.path.name}, step {run.step})"
        )
    return 0


def _eval_classify(args: argparse.Namespace, run) -> int:
    from rnnkit.data.labelled import read_examples

    task = run.task
    data = task.encode(read_examples(args.data))
    m = task.scores(run.model, data)
    recall = dict(zip(task.labels, m["recall"], strict=True))
    if args.json:
        print(
            json.dumps(
                {
                    "task": "classify",
                    "accuracy": m["accuracy"],
                    "macro_f1": m["macro_f1"],
                    "loss": m["loss"],
                    "n": m["n"],
                    "recall": recall,
                    "unknown_tokens": data.unknown_tokens,
                    "run": str(args.run),
                    "checkpoint": str(run.path),
                    "step": run.step,
                }
            )
        )
    else:
        print(
            f"{args.data}: {m['n']} examples, accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, "
            f"loss {m['loss']:.4f} (run {args.run}, {run.path.name}, step {run.step})"
        )
        width = max(len(label) for label in task.labels)
        for label, r in recall.items():
            print(f"  recall {label:{width}s} {r:.4f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from rnnkit.checkpoint import load_run

    run = load_run(args.run, args.checkpoint, purpose="predict")
    predict = {"classify": _predict_classify, "forecast": _forecast, "seq2seq": _predict_seq2seq}
    if run.task.name not in predict:
        raise CheckpointError(f"{args.run} is a {run.task.title} run; predict needs a classify, forecast or seq2seq "
                              "run (sample generates from a language model)")  # fmt: skip
    with run.autocast():
        return predict[run.task.name](args, run)


def _predict_classify(args: argparse.Namespace, run) -> int:
    import csv
    import io

    from rnnkit.data.labelled import read_examples
    from rnnkit.io import atomic_write

    task = run.task
    check_output(args.out, force=args.force)
    labels, probs = task.predict(run.model, read_examples(args.data, labels="optional"))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["label", *(f"p_{label}" for label in task.labels)])
    for label, row in zip(labels, probs.tolist(), strict=True):
        writer.writerow([label, *(f"{p:.6f}" for p in row)])
    if args.out is None:
        sys.stdout.write(buf.getvalue())
    else:
        atomic_write(args.out, buf.getvalue())
        _eprint(f"wrote {len(labels)} predictions to {args.out}")
    return 0


# --- forecast -----------------------------------------------------------------------------------------------------


def _run_forecast(args: argparse.Namespace, task, model, series: list, horizon: int | None, future) -> dict:
    """``task.forecast`` with the command's --quantiles, --num-samples and --seed, and a progress bar on a TTY."""
    from rnnkit.tasks.forecasting import parse_quantiles

    levels = parse_quantiles(args.quantiles, "--quantiles") if getattr(args, "quantiles", None) else None
    bar = None
    if sys.stderr.isatty() and len(series) > 256:
        from tqdm import tqdm

        bar = tqdm(total=len(series), file=sys.stderr, unit="series", desc="forecast", dynamic_ncols=True)
    try:
        return task.forecast(model, series, horizon=horizon, levels=levels, num_samples=args.num_samples,
                             future=future, seed=args.seed, progress=bar.update if bar else None)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()


def _read_future(task, path: str | None, history, horizon: int) -> dict | None:
    """Covariates over the forecast steps, {id: (h, C)}, from a CSV like the history (values may be empty)."""
    if not task.covariates:
        return None
    if path is None:
        raise UsageError(
            f"this run reads covariates {', '.join(task.covariates)}: give their values over the forecast steps "
            "with --future FILE (id,time,value,covariates; value may be empty)"
        )
    from rnnkit.data.series import check_continues, read_series

    future = read_series(path, values=False, axis=task.axis)  # only the covariates: value cells may be empty
    task.check_compatible(future)
    check_continues(history, future, horizon)
    return {s.id: s.covariates[:horizon] for s in future.series}


def _forecast(args: argparse.Namespace, run) -> int:
    import csv
    import io

    from rnnkit.io import atomic_write
    from rnnkit.metrics import plot_forecasts

    task = run.task
    check_output(args.out, force=args.force)
    check_output(getattr(args, "plot", None), force=args.force, suffix=".png", flag="--plot")
    history = task.read(args.data)
    h = getattr(args, "horizon", None) or task.horizon
    future = _read_future(task, getattr(args, "future", None), history, h)
    f = _run_forecast(args, task, run.model, history.series, h, future)
    shown = sorted(f["quantiles"]) if args.quantiles else list(task.config.model.levels())
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "time", "forecast", *(f"q{q:g}" for q in shown)])
    for i, s in enumerate(history.series):
        for k in range(h):
            writer.writerow([s.id, history.axis.format(f["times"][i, k]), f"{f['median'][i, k]:.6g}",
                             *(f"{f['quantiles'][q][i, k]:.6g}" for q in shown)])  # fmt: skip
    if args.out is None:
        sys.stdout.write(buf.getvalue())
    else:
        atomic_write(args.out, buf.getvalue())
        _eprint(f"wrote {h} steps of {len(history.series)} series to {args.out}")
    if getattr(args, "plot", None):
        plot_forecasts(history.series, f, history.axis, Path(args.plot), title=f"{args.run}: forecasts")
        _eprint(f"plot: {args.plot}")
    return 0


def cmd_forecast(args: argparse.Namespace) -> int:
    from rnnkit.checkpoint import load_run

    run = load_run(args.run, args.checkpoint, task="forecast", purpose="forecast")
    with run.autocast():
        return _forecast(args, run)


def _eval_forecast(args: argparse.Namespace, run) -> int:
    from rnnkit.data.series import check_continues
    from rnnkit.metrics import forecast_scores, plot_forecasts

    task = run.task
    if args.actuals is None:
        raise UsageError("eval of a forecast run needs --actuals FILE (the values that followed --data)")
    check_output(getattr(args, "plot", None), force=args.force, suffix=".png", flag="--plot")
    history = task.read(args.data)
    actuals = task.read(args.actuals)
    check_continues(history, actuals)
    lengths = {len(s) for s in actuals.series}
    if len(lengths) > 1:
        raise DataError(f"{args.actuals}: the series hold different numbers of steps ({min(lengths)} to "
                        f"{max(lengths)}); give each series the same horizon")  # fmt: skip
    h = lengths.pop()
    future = {s.id: s.covariates for s in actuals.series} if task.covariates else None
    f = _run_forecast(args, task, run.model, history.series, h, future)
    truth = actuals.by_id()
    y = [truth[s.id].values for s in history.series]
    m = forecast_scores([s.values for s in history.series], y, list(f["median"]), task.season,
                        {q: list(v) for q, v in f["quantiles"].items()})  # fmt: skip
    if getattr(args, "plot", None):
        plot_forecasts(history.series, f, history.axis, Path(args.plot), actuals={s.id: truth[s.id].values
                       for s in history.series}, title=f"{args.run} on {args.actuals}")  # fmt: skip
    if args.json:
        print(json.dumps({"task": "forecast", **m, "horizon": h, "season_length": task.season, "run": str(args.run),
                          "checkpoint": str(run.path), "step": run.step}))  # fmt: skip
    else:
        print(
            f"{args.actuals}: {m['series']} series x {h} steps, sMAPE {m['smape']:.3f}, MASE {m['mase']:.4f} "
            f"(m = {task.season}), MAE {m['mae']:.4g}, RMSE {m['rmse']:.4g}, quantile loss {m['quantile_loss']:.4g}, "
            f"80 % interval coverage {m['coverage_80']:.3f} (run {args.run}, {run.path.name}, step {run.step})"
        )
    return 0


# --- seq2seq -------------------------------------------------------------------------------------------------------


def _predict_seq2seq(args: argparse.Namespace, run) -> int:
    from rnnkit.io import atomic_write
    from rnnkit.tasks.seq2seq import EncodedPairs

    task = run.task
    check_output(args.out, force=args.force)
    pairs = task.read(args.data, "none")
    data = EncodedPairs(task, pairs)
    if args.n_best > args.beam:
        raise UsageError(f"--n-best must be <= --beam, got {args.n_best} and {args.beam}")
    outputs = task.decode(run.model, data, beam=args.beam, n_best=args.n_best)
    join = "" if task.config.data.target_tokens == "chars" else " "
    text = "".join(f"{src}\t{join.join(o)}\n" for src, out in zip(pairs.texts, outputs, strict=True) for o in out)
    if data.unknown:
        _eprint(f"{data.unknown} source token(s) not in the run's vocabulary (read as the unknown symbol)")
    if args.out is None:
        sys.stdout.write(text)
    else:
        atomic_write(args.out, text)
        _eprint(f"wrote {len(outputs)} predictions to {args.out}")
    return 0


def _eval_seq2seq(args: argparse.Namespace, run) -> int:
    from rnnkit.tasks.seq2seq import EncodedPairs, merge_references

    task = run.task
    data = EncodedPairs(task, merge_references(task.read(args.data, "alternatives")))  # a source once, all its targets
    m = task.scores(run.model, data, beam=args.beam, text=True)
    if args.json:
        print(json.dumps({"task": "seq2seq", **m, "beam": args.beam, "unknown_tokens": data.unknown,
                          "run": str(args.run), "checkpoint": str(run.path), "step": run.step}))  # fmt: skip
    else:
        text = f", BLEU {m['bleu']:.2f}, chrF {m['chrf']:.2f}" if "bleu" in m else ""
        print(f"{args.data}: {m['n']} sources, WER {m['wer']:.4f}, TER {m['ter']:.4f}, exact {m['exact']:.4f}{text} "
              f"(beam {args.beam}; run {args.run}, {run.path.name}, step {run.step})")  # fmt: skip
    return 0


# --- export --------------------------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from rnnkit import export
    from rnnkit.checkpoint import load_run

    if not args.out.strip():
        raise UsageError("--out must name a file, got an empty string")
    if args.format == "onnx":
        export.require("onnx")  # before any work: one line naming the pip install
    run = load_run(args.run, args.checkpoint, purpose="export")
    if args.format == "torch":
        check_output(args.out, force=args.force)
        export.save_torch(run.model, args.out)
        print(f"wrote {args.out} (torch: the model with torch.nn recurrences; torch.load(weights_only=False) "
              "with rnnkit importable)")  # fmt: skip
        return 0
    graphs = run.task.export_graphs(run.model)
    paths = export.output_paths(args.out, graphs)
    for path in paths:
        check_output(path, force=args.force)
    export.export_graphs(graphs, args.out, args.format)
    runner = "onnxruntime" if args.format == "onnx" else "torch.jit.load"
    for graph, path in zip(graphs, paths, strict=True):
        print(f"wrote {path} ({args.format}{', ' + graph.name if graph.name else ''}): {graph.signature()}")
        if args.format == "torchscript" or export.available("onnxruntime"):
            print(f"  checked with {runner}: outputs within {export.max_difference(path, args.format, graph):.1e} "
                  "of the model's on an example batch")  # fmt: skip
    return 0


# --- bench / gradflow ----------------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from rnnkit import bench

    return bench.run(args, lambda line: print(line, flush=True))


def cmd_gradflow(args: argparse.Namespace) -> int:
    from rnnkit.diagnostics import compare_gradient_flow, plot_gradient_flow, summary

    check_output(args.out, force=args.force, suffix=".png")
    curves = compare_gradient_flow(
        ("elman", "lstm", "gru"), hidden_size=args.hidden_size, seq_len=args.seq_len, seed=args.seed
    )
    path = plot_gradient_flow(curves, args.out)
    print(f"vanishing factor ||dL/dh_0|| / ||dL/dh_T-1|| over T={args.seq_len}, H={args.hidden_size}:")
    for mode, ratio in summary(curves).items():
        print(f"  {mode:6s} {ratio:.3e}")
    print(f"plot: {path}")
    return 0


# --- parser --------------------------------------------------------------------------------------------------------


def _forecast_flags(p: argparse.ArgumentParser, *, out: bool) -> None:
    """Flags of forecast, and of predict and eval on a forecast run."""
    g = p.add_argument_group("forecast runs")
    if out:
        g.add_argument("--horizon", type=int_flag(1, 100_000), default=None,
                       help="steps to forecast (default: the run's horizon)")  # fmt: skip
        g.add_argument("--future", default=None, metavar="FILE.csv",
                       help="covariates over the forecast steps, when the run has covariates")  # fmt: skip
    g.add_argument("--quantiles", default=None, metavar="Q,Q,...",
                   help="quantile levels to write/score (default: the run's, e.g. 0.1,0.5,0.9)")  # fmt: skip
    g.add_argument("--num-samples", type=int_flag(1, 100_000), default=None,
                   help="sampled paths per series (default: the run's)")  # fmt: skip
    g.add_argument("--seed", type=int_flag(0), default=0, help="sampling seed (default: 0)")
    g.add_argument("--plot", default=None, metavar="FILE.png", help="draw a few series and their forecasts")
    if not out and not any(a.dest == "beam" for a in p._actions):
        group = p.add_argument_group("seq2seq runs")
        group.add_argument("--beam", type=int_flag(1, 64), default=1, help="beam width (default: 1 = greedy)")
        group.add_argument(
            "--n-best", type=int_flag(1, 64), default=1, help="predict: the N best outputs a source, best first"
        )
    if not out and not any(a.dest == "force" for a in p._actions):
        g.add_argument("--force", action="store_true", help="overwrite --plot if it exists")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rnnkit", description="Recurrent neural networks from the equations.")
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    from rnnkit.tasks import TASKS

    train = sub.add_parser("train", help="train a model")
    train_sub = train.add_subparsers(dest="task", required=True, parser_class=Parser)
    helps = {"lm": "character language model", "classify": "sequence classifier (text or time series)",
             "forecast": "global probabilistic forecaster of time series (DeepAR-style)",
             "seq2seq": "encoder-decoder with attention on source<TAB>target pairs"}  # fmt: skip
    for name, task_cls in TASKS.items():
        p = train_sub.add_parser(
            name,
            help=helps.get(name, name),
            description=f"Train a {helps.get(name, name)}. Precedence: defaults < --config TOML < flags.",
        )
        p.add_argument(
            "--out", default=None, metavar="DIR", help=f"run folder (default: a new runs/{name}-YYYYmmdd-HHMMSS)"
        )
        p.add_argument("--config", default=None, metavar="FILE.toml", help="TOML file with [model] [data] [train]")
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
        add_config_flags(p, task_cls.Config)
        p.set_defaults(func=cmd_train)

    sample = sub.add_parser("sample", help="generate text from a trained run (streamed)")
    sample.add_argument("--run", required=True, metavar="DIR", help="run folder")
    sample.add_argument("--prompt", default="", help="text to continue (default: empty, starts after a newline)")
    sample.add_argument("--echo-prompt", action="store_true", help="print the prompt before the continuation")
    sample.add_argument("--length", type=int_flag(0), default=500, help="characters to generate (default: 500)")
    sample.add_argument(
        "--temperature",
        type=float_flag(0, float("inf"), low_open=False),
        default=0.8,
        help="softmax temperature, 0 = greedy (default 0.8)",
    )
    sample.add_argument("--top-k", type=int_flag(0), default=0, help="keep the k likeliest chars (0 = off)")
    sample.add_argument(
        "--top-p", type=float_flag(0, 1, low_open=True), default=1.0, help="nucleus mass in (0, 1] (default: 1 = off)"
    )
    sample.add_argument("--seed", type=int_flag(0), default=0, help="sampling seed (default: 0)")
    sample.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    sample.set_defaults(func=cmd_sample)

    ev = sub.add_parser("eval", help="score a file under a trained run (bpc for an LM; accuracy, F1 for a classifier)")
    ev.add_argument("--run", required=True, metavar="DIR", help="run folder")
    ev.add_argument(
        "--data", required=True, metavar="FILE", help="UTF-8 text (LM) or labelled examples (classifier) to score"
    )
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    ev.add_argument(
        "--batch-size",
        type=int_flag(1),
        default=None,
        help="rows scored at once (default: 16; 2 with --dynamic-lr, where few rows adapt best)",
    )
    ev.add_argument(
        "--dynamic-lr",
        type=float_flag(0, 1e3, low_open=False),
        default=0.0,
        help="dynamic evaluation: RMS-normalised step size on each chunk after it is scored, e.g. 0.001 "
        "(default: 0 = static)",
    )
    ev.add_argument(
        "--dynamic-decay",
        type=float_flag(0, 1, low_open=False),
        default=0.0,
        help="pull back toward the trained weights per step",
    )
    ev.add_argument("--actuals", default=None, metavar="FILE.csv",
                    help="forecast runs: the values that followed --data (same CSV layout)")  # fmt: skip
    _forecast_flags(ev, out=False)
    ev.set_defaults(func=cmd_eval)

    for name, help_text, data_help, func in (
        ("predict", "one CSV row of results per input of a file, under a classify or forecast run",
         "classify: .tsv, .csv, .ts or .npz (labels ignored); forecast: the history CSV", cmd_predict),
        ("forecast", "forecasts of every series of a history CSV, under a forecast run (CSV)",
         "history: id,time,value[,covariates] rows", cmd_forecast),
    ):  # fmt: skip
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--run", required=True, metavar="DIR", help="run folder")
        p.add_argument("--data", required=True, metavar="FILE", help=data_help)
        p.add_argument("--out", default=None, metavar="FILE.csv", help="write the CSV here (default: standard output)")
        p.add_argument("--force", action="store_true", help="overwrite --out (and --plot) if they exist")
        p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
        _forecast_flags(p, out=name == "forecast")
        p.set_defaults(func=func)

    from rnnkit import export as export_module

    ex = sub.add_parser(
        "export",
        help="a run's model as ONNX, TorchScript or torch.nn, runnable without rnnkit",
        description="Export a run's whole model (see rnnkit.export for each task's graph). "
        "A seq2seq run writes two graphs: FILE's name with .encoder and .decoder before its suffix.",
    )
    ex.add_argument("--run", required=True, metavar="DIR", help="run folder")
    ex.add_argument(
        "--format",
        required=True,
        choices=export_module.FORMATS,
        help="onnx (onnxruntime and others; needs the [export] extra), torchscript (torch.jit.load), "
        "torch (the model with torch.nn recurrences, torch.save'd)",
    )
    ex.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    ex.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    ex.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    ex.set_defaults(func=cmd_export)

    bench = sub.add_parser("bench", help="RNN backend speed table")
    try:
        from rnnkit import bench as bench_module
    except ImportError:
        bench_module = None
    if bench_module is not None:
        bench_module.add_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    gf = sub.add_parser("gradflow", help="gradient flow of Elman, LSTM and GRU through time (PNG + ratios)")
    gf.add_argument("--seq-len", type=int_flag(1, 100_000), default=100, help="time steps T (default: 100)")
    gf.add_argument("--hidden-size", type=int_flag(1, 4096), default=64, help="hidden units H (default: 64)")
    gf.add_argument("--out", default="gradflow.png", metavar="FILE.png", help="plot path (default: gradflow.png)")
    gf.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    gf.add_argument("--seed", type=int_flag(0), default=0, help="seed (default: 0)")
    gf.set_defaults(func=cmd_gradflow)
    return parser


def _oserror_line(e: OSError) -> str:
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        _eprint(f"rnnkit: error: {e}")
        return 2
    except SystemExit as e:  # --help / --version
        return int(e.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # the one-time build of the C++ loops takes ~20 s: say so rather than seem to hang
        logging.getLogger("rnnkit.kernels.extension").setLevel(logging.INFO)
    try:
        return args.func(args)
    except BrokenPipeError:  # `rnnkit predict ... | head`: the reader left; stop quietly, as a SIGPIPE'd tool does
        # the flush at exit would fail again on the closed pipe; a stdout without a descriptor has nothing to flush
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (RnnkitError, UsageError) as e:
        _eprint(f"rnnkit: error: {e}")
        return 2
    except OSError as e:
        _eprint(f"rnnkit: error: {_oserror_line(e)}")
        return 2
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("rnnkit"):
            _eprint(f"rnnkit: error: this command needs {e.name}, which is not installed")
            return 2
        raise
    except KeyboardInterrupt as e:
        saved = getattr(e, "saved", None)
        if saved is not None:
            _eprint(f"rnnkit: interrupted at step {e.step}: saved {saved}; continue with --out {saved.parent} --resume")
        elif getattr(e, "step", None) is not None:
            _eprint(f"rnnkit: interrupted at step {e.step}; no checkpoint written on the way out (--resume continues "
                    "from the last one written, if any)")  # fmt: skip
        else:
            _eprint("rnnkit: interrupted (nothing was saved)")
        return 130
