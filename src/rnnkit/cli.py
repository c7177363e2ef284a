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
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from rnnkit import __version__
from rnnkit.cliargs import add_config_flags, build_config, config_overrides, float_flag, int_flag, load_toml
from rnnkit.errors import CheckpointError, RnnkitError
from rnnkit.io import check_output, read_input

log = logging.getLogger("rnnkit.cli")


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
    from rnnkit.distributed import is_main_process
    from rnnkit.tasks import TASKS

    task_cls = TASKS[args.task]
    if args.out is None:
        if args.resume:
            raise UsageError("--resume needs --out DIR (the run folder to continue)")
        out = Path("runs") / time.strftime(f"{task_cls.name}-%Y%m%d-%H%M%S")
    else:
        if not args.out.strip():
            raise UsageError("--out must name a folder, got an empty string")
        out = Path(args.out)
    saved = None  # --resume continues the run as it was configured: only the flags given change it
    if args.resume and (out / "config.json").is_file():
        try:
            saved = json.loads(read_input(out / "config.json", expected="a run's config.json").decode("utf-8"))
        except ValueError as e:
            raise CheckpointError(f"{out / 'config.json'}: not a run's config ({e})") from None
        if not isinstance(saved, dict) or not all(isinstance(v, dict) for v in saved.values()):
            raise CheckpointError(f"{out / 'config.json'}: not a run's config (expected sections of settings)")
    config = build_config(args.config, config_overrides(args, task_cls.Config), task_cls.Config, saved)
    task = task_cls(config)
    progress = _Progress()
    try:
        result = rnnkit.train.train(task, out, resume=args.resume, on_event=progress, plots=args.plots)
    finally:
        progress.close()
    if not is_main_process():  # under torchrun every rank runs this; rank 0 alone reports (and wrote the files)
        return 0
    primary = task.primary
    print(
        f"val {primary}: best {result.best.get(primary, float('nan')):.4f}, "
        f"last {result.last.get(primary, float('nan')):.4f} ({result.steps} steps, "
        f"{result.items_per_second:.0f} {task.unit}/s, {result.elapsed_s:.1f} s, {result.precision}, "
        f"stopped: {result.stopped_because})"
    )
    print(f"run folder: {result.run_dir}")
    if result.info.get("validates_on_training_set"):
        fraction = getattr(config.data, "val_fraction", 0)
        why = "--val-fraction 0" if not fraction else f"--val-fraction {fraction:g} held out nothing of data this small"
        print(f"note: no validation data ({why}, and no --val): the metrics above are on the training set")
    for line in task.after_training(result.run_dir):
        print(line)
    return 0


# --- tune ---------------------------------------------------------------------------------------------------------


def cmd_tune(args: argparse.Namespace) -> int:
    from rnnkit import tune as tuning
    from rnnkit.tasks import TASKS

    optuna = tuning.require_optuna()  # before any work: one line naming the extra to install
    task_cls = TASKS[args.task]
    if not args.out.strip():
        raise UsageError("--out must name a folder, got an empty string")
    overrides = config_overrides(args, task_cls.Config)
    config = build_config(args.config, overrides, task_cls.Config)
    pinned = {key for values in overrides.values() for key in values}  # what the user set is not searched
    if args.config is not None:
        pinned |= {key for values in load_toml(args.config, task_cls.Config).values() for key in values}
    if not args.verbose:  # each trial's end is printed below; Optuna's own lines (and tracebacks) only with -v
        optuna.logging.set_verbosity(optuna.logging.ERROR)
    primary = task_cls(config).primary

    def on_trial(t: dict[str, Any]) -> None:
        params = " ".join(f"{k}={_number(v) if isinstance(v, float) else v}" for k, v in t["params"].items())
        if t["state"] == "COMPLETE":
            what = f"val {primary} {t['value']:.4f} ({t['steps']} steps, {t['minutes']:.1f} min)"
        elif t["state"] == "PRUNED":
            what = f"pruned at step {t['steps']} (val {primary} {_f(t['last'], 4)})"
        else:
            what = f"failed ({t['error'] or 'see -v'})"
        best = "" if t["best_number"] is None else f"; best: trial {t['best_number']}, {t['best_value']:.4f}"
        print(f"trial {t['number']}: {what}{best}  [{params}]", flush=True)

    try:
        result = tuning.tune(
            task_cls, config, args.out, trials=args.trials, pinned=pinned, storage=args.storage,
            study_name=args.study, pruner=args.pruner, total_minutes=args.study_minutes,
            trial_minutes=args.trial_minutes, on_trial=on_trial,
        )  # fmt: skip
    except KeyboardInterrupt:
        _eprint(f"rnnkit: interrupted: {args.out} holds the study so far; the same command continues it (a trial "
                "that was running runs again first)")  # fmt: skip
        return 130
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(result.counts.items()))
    print(f"study {result.study}: {result.finished} of {args.trials} trials finished ({counts})")
    if result.best_number is not None:
        print(f"best: trial {result.best_number}, val {result.primary} {result.best_value:.4f}")
    print("wrote " + ", ".join(str(path) for path in result.files))
    for note in result.notes:
        print(f"note: {note}")
    if result.best_number is not None:
        print(f"reproduce: rnnkit train {task_cls.name} --config {Path(args.out) / 'best.toml'}")
    return 0


# --- the tasks' inference commands (eval, predict, sample, forecast) -----------------------------------------------
# Built from the tasks' declarations (rnnkit.tasks.base.Command): this module names no task. Each runs the model
# under run.autocast(): the precision it trained at, so eval reproduces training's metrics.


def _inference_commands() -> dict[str, dict[str, Any]]:
    """{command: {"tasks": [task classes answering it], "kinds": {their kinds}, "help": ..., "flags": {dest: Flag}}}."""
    from rnnkit.tasks import TASKS

    commands: dict[str, dict[str, Any]] = {}
    for task_cls in TASKS.values():
        for c in task_cls.commands:
            entry = commands.setdefault(c.name, {"tasks": [], "kinds": set(), "help": c.help, "flags": {}})
            entry["kinds"].add(c.kind)  # each task's own: the run's task decides how the result is shown
            entry["tasks"].append(task_cls)
            for flag in c.flags:
                entry["flags"].setdefault(flag.dest, flag)
    return commands


def _add_flag(group, flag, required: bool) -> None:
    kwargs: dict[str, Any] = {"help": flag.help, "default": argparse.SUPPRESS, "required": required}
    if flag.action:
        kwargs["action"] = flag.action
    else:
        metavar = flag.metavar or {int: "N", float: "X"}.get(type(flag.default), "VALUE")
        kwargs.update(type=flag.type or str, metavar=metavar)
    if flag.default not in (None, False, "") and "default" not in flag.help:
        kwargs["help"] = f"{flag.help} (default: {flag.default})"
    group.add_argument(flag.name, **kwargs)


def _add_inference_parsers(sub) -> None:
    for name, entry in _inference_commands().items():
        titles = _titles(entry["tasks"])
        p = sub.add_parser(name, help=f"{entry['help']} (under a {titles} run)")
        p.add_argument("--run", required=True, metavar="DIR", help="run folder")
        p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
        if "scores" in entry["kinds"]:
            p.add_argument("--json", action="store_true", help="print one JSON object")
        if "table" in entry["kinds"]:
            p.add_argument("--out", default=None, metavar="FILE", help="write the rows here (.csv or .tsv; default: "
                           "standard output)")  # fmt: skip
        p.add_argument("--force", action="store_true", help="overwrite the files the command writes")
        declared = [{f.dest: f for f in t.command(name).flags} for t in entry["tasks"]]
        shared = [dest for dest in declared[0] if all(dest in d for d in declared[1:])] if len(declared) > 1 else []
        for dest in shared:  # flags every task declares: one entry, each task's help
            helps = {d[dest].help for d in declared}
            flag = declared[0][dest]
            if len(helps) > 1:
                helps = "; ".join(f"{t.title}: {d[dest].help}" for t, d in zip(entry["tasks"], declared, strict=True))
                flag = dataclasses.replace(flag, help=helps)
            _add_flag(p, flag, all(d[dest].required for d in declared))
        added = set(shared)
        for task_cls, flags in zip(entry["tasks"], declared, strict=True):
            own = [f for dest, f in flags.items() if dest not in added]
            if own:
                group = p.add_argument_group(f"{task_cls.title} runs")
                for flag in own:
                    _add_flag(group, flag, False)
                    added.add(flag.dest)
        p.set_defaults(func=cmd_inference)


def _titles(tasks) -> str:
    names = [t.title for t in tasks]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def cmd_inference(args: argparse.Namespace) -> int:
    from rnnkit.checkpoint import load_run

    entry = _inference_commands()[args.command]
    run = load_run(args.run, args.checkpoint, purpose=args.command)
    task = run.task
    command = task.command(args.command)
    if command is None:
        answers = ", ".join(c.name for c in task.commands)
        raise CheckpointError(f"{args.run} is a {task.title} run; {args.command} needs a {_titles(entry['tasks'])} "
                              f"run ({task.title} runs answer {answers})")  # fmt: skip
    own = {f.dest: f for f in command.flags}
    for dest, flag in entry["flags"].items():
        if dest not in own and hasattr(args, dest):
            raise UsageError(f"{flag.name} does not apply to a {task.title} run ({args.run})")
    options = {dest: getattr(args, dest, f.default) for dest, f in own.items()}
    missing = [f"{f.name} {f.metavar or ''}".strip() for f in command.flags if f.required and not hasattr(args, f.dest)]
    if missing:
        raise UsageError(f"{args.command} of a {task.title} run needs {' and '.join(missing)}")
    out = getattr(args, "out", None)
    if out is not None and not out.strip():
        raise UsageError("--out must name a file, got an empty string")
    check_output(out, force=args.force)
    for f in command.flags:  # files the command will write: checked before any work
        if f.output and options[f.dest] is not None:
            check_output(options[f.dest], force=args.force, suffix=f.output, flag=f.name)
    with run.autocast():
        result = getattr(task, command.method)(run.model, **options)
        if command.kind == "scores":
            _print_scores(args, run, result)
        elif command.kind == "table":
            _write_table(result, out)
        elif command.kind == "files":
            for note in result.notes:
                _eprint(note)
            for path in result.paths:
                print(f"wrote {path}")
        else:
            for piece in result:  # the model runs as the text is read: streamed under the run's autocast
                sys.stdout.write(piece)
                sys.stdout.flush()
    return 0


def _print_scores(args: argparse.Namespace, run, scores: dict[str, Any]) -> None:
    """One JSON object with --json, else one line: the scalar scores, then where they came from."""
    files = scores.pop("files", [])
    where = {"run": str(args.run), "checkpoint": str(run.path), "step": run.step}
    if args.json:
        print(json.dumps({"task": run.task.name, **scores, **where}))
    else:
        shown = ", ".join(f"{key} {_number(value)}" for key, value in scores.items() if _is_number(value))
        print(f"{args.data}: {shown} ({run.task.title} run {args.run}, {run.path.name}, step {run.step})")
    for path in files:
        _eprint(f"wrote {path}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula (OWASP)


def _cell(value: Any) -> str:
    """A table cell as text, safe to open in a spreadsheet (OWASP's CSV-injection advice): text that starts with
    = + - @ TAB or CR gets a leading single quote, so ``=HYPERLINK(...)`` or ``=cmd|...`` in a label or an id
    is shown, not run. Numbers are left as they are: ``-1.5``, ``+3``, ``-1e-05`` (anything ``float()`` reads)
    cannot be a formula, and a forecast of negative values must stay numeric."""
    text = str(value)
    if not text.startswith(_FORMULA) or isinstance(value, int | float):
        return text
    try:
        float(text)
        return text
    except ValueError:
        return "'" + text


def _write_table(table, out: str | None) -> None:
    """The rows as CSV (quoted as the csv module does) or TSV (tab-joined): --out's suffix decides, else the
    task's format; written whole (atomically) to --out, or to standard output. Every cell goes through ``_cell``
    (no spreadsheet formulas)."""
    import csv
    import io

    from rnnkit.io import atomic_write_many

    tsv = (
        out.lower().endswith(".tsv") if out and Path(out).suffix.lower() in (".csv", ".tsv") else table.format == "tsv"
    )
    buf, count = io.StringIO(), 0
    writer = csv.writer(buf, delimiter="\t" if tsv else ",", lineterminator="\n")
    if table.header is not None:
        writer.writerow([_cell(v) for v in table.header])
    for row in table.rows:
        row = [_cell(v) for v in row]
        if tsv:
            buf.write("\t".join(str(v) for v in row) + "\n")
        else:
            writer.writerow(row)
        count += 1
    files = dict(table.files)  # rendered in memory, like the rows: a full disk now leaves none of them written
    if out is not None:
        files[out] = buf.getvalue()
    atomic_write_many(files)
    for note in table.notes:
        _eprint(note)
    if out is None:
        sys.stdout.write(buf.getvalue())
    else:
        _eprint(f"wrote {count} rows to {out}")


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


# --- datasets ------------------------------------------------------------------------------------------------------


def cmd_datasets(args: argparse.Namespace) -> int:
    """The built-in datasets: any --data takes NAME or NAME:SPLIT where it takes a file."""
    from rnnkit.datasets import catalogue

    rows = catalogue()
    if args.json:
        print(json.dumps([row._asdict() for row in rows]))
        return 0
    for row in rows:
        print(f"{row.name} ({row.task}): {row.description}")
        print(f"  --data {row.splits.replace(', ', ' | ')}")
        print(f"  {row.size}")
        print(f"  source: {row.source}")
    return 0


# --- bench / gradflow ----------------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from rnnkit import bench

    return bench.run(args, lambda line: print(line, flush=True))


def cmd_gradflow(args: argparse.Namespace) -> int:
    import torch

    from rnnkit.checkpoint import load_run
    from rnnkit.diagnostics import compare_gradient_flow, model_gradient_flow, plot_gradient_flow, summary

    check_output(args.out, force=args.force, suffix=".png")
    if args.run is not None:
        run = load_run(args.run, purpose="gradflow")
        run.task.prepare(run.task.artefacts())  # the run's own data, read again with the vocabulary it kept
        batch = run.task.validation_batch()
        device = torch.device("cpu")
        curves = model_gradient_flow(run.model, lambda model: run.task.loss(model, batch, None, device)[0])
        what, loss = f"{args.run}, the task's loss on one validation batch", "the task's loss on a validation batch"
    else:
        curves = compare_gradient_flow(args.mode, hidden_size=args.hidden_size, seq_len=args.seq_len, seed=args.seed,
                                       num_layers=args.num_layers, bidirectional=args.bidirectional)  # fmt: skip
        what, loss = f"T={args.seq_len}, H={args.hidden_size}, loss of the last states", "sum of the final states"
    path = plot_gradient_flow(curves, args.out, loss=loss)
    print(f"vanishing factor ||dL/dh_first|| / ||dL/dh_last|| ({what}):")
    width = max(map(len, curves))
    for name, ratio in summary(curves).items():
        print(f"  {name:{width}s} {ratio:.3e}")
    print(f"plot: {path}")
    return 0


# --- parser --------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rnnkit", description="Recurrent neural networks from the equations.")
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    from rnnkit.tasks import TASKS

    train = sub.add_parser("train", help="train a model")
    train_sub = train.add_subparsers(dest="task", required=True, parser_class=Parser)
    for name, task_cls in TASKS.items():
        p = train_sub.add_parser(
            name,
            help=task_cls.help or name,
            description=f"Train a {task_cls.help or name}. Precedence: defaults < --config TOML < flags.",
        )
        p.add_argument(
            "--out", default=None, metavar="DIR", help=f"run folder (default: a new runs/{name}-YYYYmmdd-HHMMSS)"
        )
        p.add_argument("--config", default=None, metavar="FILE.toml", help="TOML file with [model] [data] [train]")
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
        p.add_argument(
            "--no-plots", dest="plots", action="store_false",
            help="leave out the PNGs drawn at the end (loss.png and the task's own); for sweeps and batch jobs",
        )  # fmt: skip
        add_config_flags(p, task_cls.Config)
        p.set_defaults(func=cmd_train)

    from rnnkit.tune import PRUNERS

    tune = sub.add_parser("tune", help="search a task's settings with Optuna (needs the [tune] extra)")
    tune_sub = tune.add_subparsers(dest="task", required=True, parser_class=Parser)
    for name, task_cls in TASKS.items():
        p = tune_sub.add_parser(
            name,
            help=task_cls.help or name,
            description=f"Tune a {task_cls.help or name}: each trial is an rnnkit train run (FOLDER/trials/NNNN) "
            "with settings drawn from the task's search space; a setting given as a flag or in --config is kept, "
            "not searched. Writes FOLDER/best.toml (for rnnkit train --config), trials.csv and plots.",
        )
        p.add_argument("--out", required=True, metavar="FOLDER", help="the study's folder (run again to continue)")
        p.add_argument(
            "--trials", required=True, type=int_flag(1, 100_000), metavar="N",
            help="finished trials (complete or pruned) the study should hold",
        )  # fmt: skip
        minutes = float_flag(0, 1e6, low_open=True)
        p.add_argument(
            "--max-minutes", dest="study_minutes", type=minutes, default=None, metavar="M",
            help="the study's time budget: each trial trains for M/N minutes, none starts after M",
        )  # fmt: skip
        p.add_argument(
            "--trial-minutes", type=minutes, default=None, metavar="X",
            help="each trial's training budget (minutes; default: M/N, else the config's max_minutes)",
        )  # fmt: skip
        p.add_argument(
            "--storage", default=None, metavar="URL",
            help="an Optuna RDB storage (postgresql://..., mysql://...) that several machines share "
            "(default: sqlite:///FOLDER/study.db)",
        )  # fmt: skip
        p.add_argument("--study", default=None, metavar="NAME", help=f"the study's name (default: {name})")
        p.add_argument("--pruner", choices=PRUNERS, default="median", help="stops trials early at their evaluations "
                       "(median, hyperband or none; default: median)")  # fmt: skip
        p.add_argument("--config", default=None, metavar="FILE.toml", help="TOML file with [model] [data] [train]")
        add_config_flags(p, task_cls.Config, exclude=("max_minutes",))
        p.set_defaults(func=cmd_tune)

    _add_inference_parsers(sub)

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

    ds = sub.add_parser("datasets", help="the built-in datasets (use NAME or NAME:SPLIT wherever --data takes a file)")
    ds.add_argument("--json", action="store_true", help="print one JSON list")
    ds.set_defaults(func=cmd_datasets)

    bench = sub.add_parser("bench", help="RNN backend speed table")
    try:
        from rnnkit import bench as bench_module
    except ImportError:
        bench_module = None
    if bench_module is not None:
        bench_module.add_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    from rnnkit.recurrent import MODES

    gf = sub.add_parser("gradflow", help="gradient flow through time, per layer and direction (PNG + ratios)")
    gf.add_argument(
        "--mode",
        nargs="+",
        choices=MODES,
        default=["elman", "lstm", "gru"],
        metavar="MODE",
        help=f"cells to compare, fresh and untrained (default: elman lstm gru; any of {', '.join(MODES)})",
    )
    gf.add_argument("--num-layers", type=int_flag(1, 64), default=1, help="stacked layers (default: 1)")
    gf.add_argument("--bidirectional", action="store_true", help="both directions")
    gf.add_argument("--run", metavar="RUN", help="a trained run instead: its model and loss on its validation data")
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
