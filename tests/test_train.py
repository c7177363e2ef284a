"""Trainer and config: the run folder, exact resume, budgets, early stopping, schedule, errors."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from rnnkit import config
from rnnkit.checkpoint import load_checkpoint, load_run
from rnnkit.errors import CheckpointError, ConfigError, DataError
from rnnkit.metrics import evaluate_text
from rnnkit.tasks.language_model import LMConfig, load_text
from rnnkit.tasks.language_model import LMDataConfig as DataConfig
from rnnkit.tasks.language_model import LMModelConfig as ModelConfig
from rnnkit.tasks.language_model import LMTrainConfig as TrainConfig
from rnnkit.train import lr_at, train_lm

TEXT = "".join(f"def f{i % 7}(x):\n    return x * {i % 5} + {i % 3}\n" for i in range(120))


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "code.txt"
    p.write_text(TEXT)
    return p


def _config(text_file, model=None, **train) -> LMConfig:
    t = {"batch_size": 4, "bptt": 12, "max_steps": 8, "max_minutes": 0, "eval_every": 4, "log_every": 2}
    t = t | {"precision": "fp32"} | train  # the LM's default is auto; these tests compare with fp32 library calls
    m = {"mode": "gru", "embedding_size": 8, "hidden_size": 16} | (model or {})
    return LMConfig(ModelConfig(**m), DataConfig(data=str(text_file), val_fraction=0.1), TrainConfig(**t))


pytestmark = pytest.mark.usefixtures("one_thread")


# --- config ---------------------------------------------------------------------------------------------------


def test_config_round_trip_and_unknown_keys():
    cfg = LMConfig.from_dict({"model": {"hidden_size": 32, "mode": "elman"}, "train": {"max_steps": 5}})
    assert cfg.model.hidden_size == 32 and cfg.train.max_steps == 5 and cfg.data == DataConfig()
    assert LMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown config section 'optim'"):
        LMConfig.from_dict({"optim": {}})
    with pytest.raises(ConfigError, match="unknown config key 'hidden' in section 'model'"):
        LMConfig.from_dict({"model": {"hidden": 3}})


def test_config_fields_are_unique_and_documented_with_help():
    names = [f for section in (ModelConfig, DataConfig, TrainConfig) for f in dataclasses.fields(section)]
    assert len({f.name for f in names}) == len(names)
    assert all(f.metadata.get("help") for f in names)


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        (ModelConfig, {"hidden_size": 0}, r"hidden_size must be an integer in \[1, 1048576\], got 0"),
        (ModelConfig, {"dropout": 1.0}, r"dropout must be a number in \[0.0, 1.0\), got 1.0"),
        (
            ModelConfig,
            {"mode": "transformer"},
            r"mode must be one of elman, lstm, gru, .*, got 'transformer'",
        ),
        (TrainConfig, {"max_steps": -1}, "max_steps must be an integer >= 0, got -1"),
        (TrainConfig, {"lr": 0.0}, r"lr must be a number in \(0.0, inf\), got 0.0"),
        (TrainConfig, {"max_steps": 0, "max_minutes": 0}, "max_steps, max_epochs or max_minutes must be > 0"),
        (TrainConfig, {"batch_size": 2.5}, r"batch_size must be an integer in \[1, 16777216\], got 2.5"),
        (DataConfig, {"val_fraction": 0.9}, r"val_fraction must be a number in \(0.0, 0.5\], got 0.9"),
    ],
)
def test_config_errors_name_field_range_and_value(section, values, message):
    with pytest.raises(ConfigError, match=message):
        section(**values)


def test_replace_revalidates():
    with pytest.raises(ConfigError, match="num_layers"):
        dataclasses.replace(ModelConfig(), num_layers=0)


# --- schedule -------------------------------------------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1, max_steps=100, max_minutes=0)
    assert lr_at(cfg, 0, 0) == pytest.approx(0.25 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0))))
    assert lr_at(cfg, 50, 0) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert lr_at(cfg, 100, 0) == pytest.approx(0.1)
    timed = TrainConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.0, max_steps=0, max_minutes=2)
    assert lr_at(timed, 10**6, 60.0) == pytest.approx(0.5)  # time budget only: progress = elapsed / budget


# --- training -------------------------------------------------------------------------------------------------


def test_run_folder_events_and_metrics(text_file, tmp_path):
    events = []
    cfg = _config(text_file)
    result = train_lm(cfg, tmp_path / "run", on_event=events.append)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "vocab.json", "last.pt", "best.pt", "metrics.jsonl", "loss.png"} <= files
    assert LMConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())) == cfg
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("eval") == 2
    for e in events:
        assert {"step", "max_steps", "items_per_s", "unit", "elapsed_s", "eta_s", "lr"} <= set(e)
        assert e["unit"] == "chars"
    assert all({"loss", "bpc", "epoch"} <= set(e) for e in events if e["kind"] == "step")
    assert all({"val_loss", "val_bpc", "val_chars", "best_val_bpc"} <= set(e) for e in events if e["kind"] == "eval")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "step"] == [2, 4, 6, 8]
    evals = [r for r in lines if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8]
    assert evals[-1]["val_bpc"] == pytest.approx(evals[-1]["val_loss"] / math.log(2))
    assert result.steps == 8 and result.stopped_because == "max_steps"
    assert result.best["bpc"] == pytest.approx(min(r["val_bpc"] for r in evals))
    # the reported validation loss is that of the best model on the held-out text, recomputed from scratch
    run = load_run(result.run_dir, "best")
    val_text = load_text(cfg)[-int(len(TEXT) * 0.1) :]
    again = evaluate_text(run.model, run.vocab, val_text, batch_size=4, bptt=12)
    assert again["loss"] == pytest.approx(result.best["loss"], rel=1e-6)


def test_evaluate_text_equals_one_full_pass():
    from rnnkit.data import Vocab
    from rnnkit.tasks import CharLM

    vocab = Vocab.from_text(TEXT)
    torch.manual_seed(1)
    model = CharLM(len(vocab), ModelConfig(mode="lstm", embedding_size=4, hidden_size=8)).eval()
    text = TEXT[:300]
    ids = vocab.encode(text, tensor=True)
    logits, _ = model(ids[None, :-1])  # (1, N-1, V)
    by_hand = torch.nn.functional.cross_entropy(logits[0], ids[1:]).item()
    got = evaluate_text(model, vocab, text, batch_size=1, bptt=37)  # chunks with carried state
    assert got["chars"] == 299 and got["loss"] == pytest.approx(by_hand, rel=1e-5)
    assert got["bpc"] == pytest.approx(by_hand / math.log(2), rel=1e-5)


def test_learns_a_periodic_text(tmp_path):
    p = tmp_path / "abc.txt"
    p.write_text("abcdefgh" * 400)
    cfg = _config(p, model={"hidden_size": 24}, max_steps=60, eval_every=60, bptt=16, lr=1e-2, warmup_steps=5)
    result = train_lm(cfg, tmp_path / "run", plots=False)
    assert result.best["bpc"] < 0.3  # uniform over 8 symbols is 3 bits/char


def test_resume_gives_the_same_parameters(text_file, tmp_path):
    """N steps, Ctrl-C, resume, M more steps == N + M uninterrupted steps (dropout > 0: RNG state matters)."""
    cfg = _config(text_file, model={"mode": "lstm", "num_layers": 2, "dropout": 0.3}, max_steps=10, eval_every=4)
    train_lm(cfg, tmp_path / "straight", plots=False)

    def interrupt(event):
        if event["kind"] == "step" and event["step"] == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lm(cfg, tmp_path / "resumed", on_event=interrupt, plots=False)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 6  # saved on Ctrl-C
    with pytest.raises(ConfigError, match="--resume"):
        train_lm(cfg, tmp_path / "resumed", plots=False)
    result = train_lm(cfg, tmp_path / "resumed", resume=True, plots=False)
    assert result.steps == 10
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, sa in a["optimizer"]["state"].items():
        assert all(torch.equal(sa[n], b["optimizer"]["state"][k][n]) for n in sa)
    assert a["metrics"]["best_val_loss"] == b["metrics"]["best_val_loss"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(x)["step"] for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]


def test_early_stopping_and_time_budget(text_file, tmp_path):
    # a learning rate of 1e-30 cannot move float32 weights: validation never improves after the first eval
    cfg = _config(text_file, lr=1e-30, max_steps=100, eval_every=2, patience=2)
    result = train_lm(cfg, tmp_path / "patience", plots=False)
    assert result.stopped_because == "patience" and result.steps == 6
    cfg = _config(text_file, max_steps=0, max_minutes=0.002, eval_every=10**6)
    result = train_lm(cfg, tmp_path / "timed", plots=False)
    assert result.stopped_because == "max_minutes" and result.steps >= 1 and result.elapsed_s >= 0.12


def test_evaluation_by_time_only_where_time_is_the_budget():
    base = dict(max_minutes=6, max_steps=0, eval_time_share=0.1)
    assert TrainConfig(**base).eval_seconds() == pytest.approx(36.0)  # a tenth of a time-only budget
    assert TrainConfig(**base | {"max_steps": 100}).eval_seconds() == 0.0  # a step budget stays repeatable
    assert TrainConfig(**base | {"max_epochs": 2}).eval_seconds() == 0.0
    assert TrainConfig(**base | {"eval_time_share": 0.0}).eval_seconds() == 0.0
    assert TrainConfig().eval_time_share == 0.0 and config.TrainConfig().eval_time_share == 0.1  # the LM's: steps only
    with pytest.raises(ConfigError, match=r"eval_time_share must be a number in \[0.0, 1.0\], got -1"):
        TrainConfig(eval_time_share=-1)


def test_a_run_slower_than_its_eval_every_is_still_evaluated_by_time(text_file, tmp_path):
    def evaluated_steps(name, **train):
        steps = []
        on_event = lambda e: e["kind"] == "eval" and steps.append(e["step"])  # noqa: E731
        train_lm(_config(text_file, eval_every=10**6, **train), tmp_path / name, plots=False, on_event=on_event)
        return steps

    # eval_every beyond the budget: without evaluations by time only the closing one would happen
    by_time = evaluated_steps("by-time", max_steps=0, max_minutes=0.01, eval_time_share=1e-6)  # due after every step
    assert len(by_time) >= 2 and by_time == list(range(1, len(by_time) + 1))
    assert len(evaluated_steps("by-steps", max_steps=0, max_minutes=0.01, eval_time_share=0.0)) == 1  # the closing one


def test_bad_data_fails_before_writing(tmp_path):
    out = tmp_path / "run"
    for content, message in [(None, "no such file"), (b"", "empty"), (b"\x00\x01", "NUL"), (b"\xff\xfe", "UTF-8")]:
        p = tmp_path / "data.txt"
        p.unlink(missing_ok=True)
        if content is not None:
            p.write_bytes(content)
        with pytest.raises(DataError, match=message):
            train_lm(_config(p), out, plots=False)
        assert not out.exists()
    p.write_text("x = 1\n" * 5)  # 27 training characters: less than one batch of 4 rows x 12 steps
    with pytest.raises(DataError, match="shorter than one batch"):
        train_lm(_config(p), out, plots=False)
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"no last\.pt"):
        train_lm(_config(p), out, resume=True, plots=False)


def test_resume_with_another_model_is_refused(text_file, tmp_path):
    train_lm(_config(text_file, max_steps=2), tmp_path / "run", plots=False)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="another model config"):
        train_lm(_config(text_file, model={"hidden_size": 32}, max_steps=4), tmp_path / "run", resume=True, plots=False)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_a_kill_between_checkpoint_writes_leaves_a_resumable_run(text_file, tmp_path, monkeypatch):
    """The first evaluation writes last.pt and best.pt; dying after the first write must leave last.pt."""
    import rnnkit.train

    real_save = rnnkit.train.save_checkpoint
    written = []

    def save_then_die(path, payload):
        real_save(path, payload)
        written.append(path.name)
        if len(written) == 1:
            raise KeyboardInterrupt  # stands for a SIGKILL right after the first file

    monkeypatch.setattr(rnnkit.train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_lm(_config(text_file, max_steps=8, eval_every=4, checkpoint_every=0), tmp_path / "run", plots=False)
    assert written[0] == "last.pt"
    monkeypatch.setattr(rnnkit.train, "save_checkpoint", real_save)
    result = train_lm(
        _config(text_file, max_steps=8, eval_every=4, checkpoint_every=0), tmp_path / "run", resume=True, plots=False
    )
    assert result.steps == 8 and (tmp_path / "run" / "best.pt").is_file()


def test_resuming_a_finished_run_with_a_smaller_budget_rewrites_nothing(text_file, tmp_path):
    train_lm(_config(text_file, max_steps=4, eval_every=2), tmp_path / "run", plots=False)
    config = (tmp_path / "run" / "config.json").read_bytes()
    result = train_lm(_config(text_file, max_steps=2, eval_every=2), tmp_path / "run", resume=True, plots=False)
    assert result.steps == 4 and result.stopped_because == "max_steps"
    assert (tmp_path / "run" / "config.json").read_bytes() == config  # still the budget that ran


def test_a_model_too_big_for_memory_is_refused_before_it_is_built(text_file, tmp_path):
    with pytest.raises(ConfigError, match=r"the model has [\d,]+ parameters: .* GiB available on cpu"):
        train_lm(_config(text_file, model={"hidden_size": 2**20}, max_steps=2), tmp_path / "run", plots=False)
    assert not (tmp_path / "run").exists()


def test_checkpoint_last_on_a_folder_with_only_best_says_so(text_file, tmp_path):
    train_lm(_config(text_file, max_steps=2, eval_every=2), tmp_path / "run", plots=False)
    (tmp_path / "run" / "last.pt").unlink()
    with pytest.raises(CheckpointError, match=r"holds no last\.pt, only best\.pt \(use --checkpoint best\)"):
        load_run(tmp_path / "run", "last")


def test_an_epoch_budget_is_a_step_budget_of_whole_passes(text_file, tmp_path):
    from rnnkit.tasks.language_model import LMTask

    cfg = _config(text_file, max_steps=0, max_minutes=0, max_epochs=1.5, eval_every=1000)
    task = LMTask(cfg)
    task.prepare(None)
    per_epoch = len(task.batches(0, 1))
    result = train_lm(cfg, tmp_path / "run", plots=False)
    assert result.steps == math.ceil(1.5 * per_epoch) and result.stopped_because == "max_epochs"
    capped = train_lm(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=3)), tmp_path / "capped", plots=False
    )
    assert capped.steps == 3 and capped.stopped_because == "max_steps"  # the smaller budget wins
    with pytest.raises(ConfigError, match="max_steps, max_epochs or max_minutes must be > 0"):
        _config(text_file, max_steps=0, max_minutes=0, max_epochs=0)


def test_resume_after_cleaning_a_leftover_temporary_keeps_the_run_state(text_file, tmp_path):
    """Regression (issue 20): the cleanup loop's variable once shadowed the count of evaluations without
    improvement, so a resume that removed a leftover temporary file stored a path in last.pt, and the next
    evaluation without improvement raised TypeError (or the next resume failed)."""
    run = tmp_path / "run"
    # lr 1e-30 cannot move float32 weights: every evaluation after the first is one without improvement
    train_lm(_config(text_file, lr=1e-30, max_steps=2, eval_every=2), run, plots=False)
    leftover = run / ".last.pt.abcdefgh.tmp"
    leftover.write_bytes(b"half a checkpoint")  # what a write killed mid-way leaves
    result = train_lm(_config(text_file, lr=1e-30, max_steps=4, eval_every=2), run, resume=True, plots=False)
    assert not leftover.exists() and result.steps == 4
    metrics = load_checkpoint(run / "last.pt")["metrics"]
    assert metrics["evals_without_improvement"] == 1 and type(metrics["evals_without_improvement"]) is int
    result = train_lm(_config(text_file, lr=1e-30, max_steps=6, eval_every=2), run, resume=True, plots=False)
    assert result.steps == 6
    assert load_checkpoint(run / "last.pt")["metrics"]["evals_without_improvement"] == 2


def test_a_corrupt_run_state_is_a_checkpoint_error(text_file, tmp_path):
    from rnnkit.checkpoint import save_checkpoint

    run = tmp_path / "run"
    train_lm(_config(text_file, max_steps=2, eval_every=2), run, plots=False)
    payload = load_checkpoint(run / "last.pt")
    payload["metrics"]["evals_without_improvement"] = "runs/x/.last.pt.tmp"
    save_checkpoint(run / "last.pt", payload)
    with pytest.raises(CheckpointError, match="run state is incomplete or corrupt"):
        train_lm(_config(text_file, max_steps=4, eval_every=2), run, resume=True, plots=False)


def test_callbacks_see_every_event_in_order_and_can_stop_the_run(text_file, tmp_path):
    from rnnkit.callbacks import Callback

    class Recorder(Callback):
        def __init__(self):
            self.seen = []

        def on_start(self, trainer, event):
            self.seen.append(("start", trainer.state.step))

        def on_log(self, trainer, event):
            self.seen.append(("log", event["step"]))

        def on_eval(self, trainer, event, improved):
            self.seen.append(("eval", event["step"]))
            if event["step"] == 4:
                trainer.stop("enough")

        def on_checkpoint(self, trainer, event):
            self.seen.append(("checkpoint", event["step"]))

        def on_end(self, trainer, event):
            self.seen.append(("end", event["step"]))

    from rnnkit.tasks.language_model import LMTask
    from rnnkit.train import train

    recorder = Recorder()
    result = train(LMTask(_config(text_file, max_steps=8, eval_every=2, log_every=2)), tmp_path / "run",
                   callbacks=[recorder])  # fmt: skip
    assert result.stopped_because == "enough" and result.steps == 4
    # the built-in Checkpoints callback runs first: each evaluation's last.pt is written before the recorder hears it
    assert recorder.seen == [("start", 0), ("log", 2), ("checkpoint", 2), ("eval", 2),
                             ("log", 4), ("checkpoint", 4), ("eval", 4), ("end", 4)]  # fmt: skip
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4
