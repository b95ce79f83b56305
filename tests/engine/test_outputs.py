"""Run outputs: TensorBoard events, progress lines, recipe.toml, metrics.jsonl, summary.json."""

from __future__ import annotations

import io
import json
import os
import re
import tomllib

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.cli.main import main
from engine.config.recipe import read_recipe, resolve
from engine.config.registry import Registry
from engine.loop import Trainer
from engine.rundir.directory import RunDir
from engine.testing import TOY, TOY_PLUGINS, make_recipe, train, without_timings


def _records(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in RunDir(run_dir).read_text("metrics.jsonl").splitlines()]


def _scalars(tb_dir: str) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(tb_dir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _expected(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], float(np.float32(r[key]))) for r in records if key in r]  # TensorBoard stores float32


# --- TensorBoard --------------------------------------------------------------------------------


def test_tensorboard_events_hold_the_metrics_jsonl_values(gpt_run):
    records = _records(gpt_run)
    scalars = _scalars(os.path.join(gpt_run, "tensorboard"))
    assert scalars["train/loss"] == _expected(records, "train/loss")
    assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6]
    assert scalars["val/accuracy"] == _expected(records, "val/accuracy")
    assert [s for s, _ in scalars["val/accuracy"]] == [3, 6]
    assert scalars["val/loss"] == _expected(records, "val/loss")
    assert scalars["train/loss/ce"] == _expected(records, "train/loss/ce")


def test_memory_out_writes_readable_event_files(tmp_path):
    result = train(TOY, steps=4, eval_interval=2)
    assert result.run_dir.startswith("memory://")
    run_dir = RunDir(result.run_dir)
    names = run_dir.list("tensorboard")
    assert names and all(n.startswith("events.out.tfevents.") for n in names)
    for name in names:  # copy out of the in-memory filesystem for TensorBoard's reader
        (tmp_path / name).write_bytes(run_dir.read_bytes(f"tensorboard/{name}"))
    scalars = _scalars(str(tmp_path))
    assert scalars["train/loss"] == _expected(result.metrics, "train/loss")
    assert scalars["val/accuracy"] == _expected(result.metrics, "val/accuracy")


# --- progress -----------------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run_with_stream(stream, steps: int = 6):
    recipe, registry = make_recipe(TOY, steps=steps, log_interval=2, eval_interval=3)
    Trainer(recipe, registry, stream=stream).run()
    return stream.getvalue()


def test_progress_off_a_terminal_is_plain_periodic_lines():
    text = _run_with_stream(io.StringIO())
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "hookmix plan: 4 plugins (in order)"
    progress = [line for line in lines if line.startswith("step ")]
    steps = [
        int(re.match(r"step (\d+)/6 \(\d+%\) \| ETA \S+ \| train/loss [\d.]+", line).group(1)) for line in progress
    ]
    assert steps == [2, 3, 4, 6, 6]  # log records at 2, 4, 6; evaluations at 3 and 6
    assert "val/accuracy" in progress[-1]


def test_progress_on_a_terminal_redraws_one_line():
    text = _run_with_stream(FakeTTY())
    assert text.startswith("\r\x1b[Khookmix plan: 4 plugins (in order)\n")
    draws = re.findall(r"\r\[([#.]{24})\] step (\d+)/6 [^\r\n]*\x1b\[K", text)
    assert draws, text
    assert draws[-1] == ("#" * 24, "6")
    assert text.endswith("\x1b[K\n")  # close() ends the bar's line
    assert not re.search(r"\nstep \d+/6", text)  # no plain lines on a terminal


def test_quiet_prints_nothing():
    recipe, registry = make_recipe(TOY, steps=2)
    stream = io.StringIO()
    Trainer(recipe, registry, stream=stream, quiet=True).run()
    assert stream.getvalue() == ""


# --- run directory files ------------------------------------------------------------------------


def test_metrics_and_summary_names(gpt_run):
    records = _records(gpt_run)
    train_keys = {k for r in records if "train/loss" in r for k in r}
    assert train_keys == {
        "step",
        "train/loss",
        "train/loss/ce",
        "train/lr",
        "perf/samples_per_second",
        "perf/tokens_per_second",
    }  # no perf/mfu: no peak known on a CPU
    eval_keys = {k for r in records if "val/loss" in r for k in r}
    assert eval_keys == {"step", "val/loss", "val/accuracy"}
    assert [r["step"] for r in records] == [2, 3, 4, 6, 6]
    summary = json.loads(RunDir(gpt_run).read_text("summary.json"))
    assert set(summary) == {"steps", "wall_seconds", "plugins", "metrics"}
    assert summary["steps"] == 6
    hookmix = {"distribution": "hookmix", "version": "0.2.0"}
    assert summary["plugins"] == {
        "tinyshakespeare": hookmix,
        "gpt": hookmix,
        "adamw": hookmix,
        "cross_entropy": hookmix,
    }
    assert summary["metrics"]["val/accuracy"] == records[-1]["val/accuracy"]
    assert summary["metrics"]["train/loss"] == records[-2]["train/loss"]
    assert sorted(os.listdir(os.path.join(gpt_run, "checkpoints"))) == ["step-00000003.pt", "step-00000006.pt"]


def test_toy_metric_names_include_each_loss_term():
    result = train(TOY, steps=2, grad_clip=1.0)
    assert set(result.metrics[0]) == {"step", "train/loss", "train/loss/toy_ce", "train/lr", "train/grad_norm"}
    assert set(result.metrics[-1]) == {"step", "val/loss", "val/accuracy"}


def test_recipe_toml_is_resolved_and_reproduces_the_run(gpt_run, tmp_path, capsys):
    saved = os.path.join(gpt_run, "recipe.toml")
    registry = Registry()
    name, raw = read_recipe(saved, registry)
    assert name == "recipe" and raw["name"] == "shakespeare-gpt"
    recipe = resolve(name, raw, registry)
    assert recipe.name == "shakespeare-gpt"
    assert recipe.plugin_configs["gpt"].n_embd == 32 and recipe.plugin_configs["adamw"].warmup_steps == 50
    assert recipe.to_toml() == open(saved).read()  # every default is filled in: a fixed point

    again = str(tmp_path / "again")
    assert main(["train", saved, "--quiet", "--out", again]) == 0
    assert without_timings(_records(gpt_run)) == without_timings(_records(again))
    capsys.readouterr()


def test_existing_run_directory_is_refused_and_left_untouched(gpt_run, capsys, one_error_line):
    def snapshot():
        files = {}
        for root, _, names in os.walk(gpt_run):
            for n in names:
                path = os.path.join(root, n)
                files[path] = (open(path, "rb").read(), os.stat(path).st_mtime_ns)
        return files

    before = snapshot()
    code = main(["train", os.path.join(gpt_run, "recipe.toml")])  # its run.out is gpt_run itself
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert line == (
        f"hookmix: error: run directory {gpt_run} already holds a run; pass --out NEW_DIR, or --resume {gpt_run}"
    )
    assert snapshot() == before


def test_toy_recipe_round_trip_reproduces_metrics():
    first = train(TOY, steps=3, eval_interval=2, grad_accum=2)
    registry = Registry(dict(TOY_PLUGINS))
    raw = tomllib.loads(RunDir(first.run_dir).read_text("recipe.toml"))
    raw["run"]["out"] = first.run_dir + "-again"
    Trainer(resolve("test", raw, registry), registry, quiet=True).run()
    assert without_timings(_records(first.run_dir + "-again")) == first.metrics


def test_records_reach_the_disk_before_every_checkpoint_and_once_a_second(tmp_path, monkeypatch):
    """metrics.jsonl and the event file are buffered (a flush per record costs a small model's step
    ~1 %) but flushed before each checkpoint: what a kill can lose lies after the last checkpoint."""
    from engine.rundir.metrics_log import MetricsLog

    monkeypatch.setattr(MetricsLog, "FLUSH_SECONDS", 1e9)  # only the checkpoint flushes
    out = str(tmp_path / "run")
    recipe, registry = make_recipe(TOY, steps=8, out=out, log_interval=1, checkpoint_interval=4)
    trainer = Trainer(recipe, registry, stream=io.StringIO())
    trainer.setup()

    def on_disk() -> list[int]:
        return [json.loads(line)["step"] for line in open(f"{out}/metrics.jsonl").read().splitlines()]

    events = lambda: sum(os.path.getsize(p) for p in (tmp_path / "run" / "tensorboard").iterdir())  # noqa: E731
    trainer.advance()
    trainer.advance()
    assert on_disk() == []  # steps 1-2 logged, still in the buffer
    size = events()
    trainer.advance()
    trainer.advance()  # step 4: checkpoint
    assert on_disk() == [1, 2, 3, 4] and events() > size
    monkeypatch.setattr(MetricsLog, "FLUSH_SECONDS", 0.0)  # now every record is due
    trainer.advance()
    assert on_disk() == [1, 2, 3, 4, 5]
    trainer._close(failed=False)
