"""Bit-exact resume, atomic checkpoints, and refusing checkpoints that need arbitrary unpickling."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import uuid

import numpy as np
import pytest
import torch
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine import BadInput, Plugin, hookimpl
from engine.cli.main import main
from engine.config.recipe import apply_overrides, read_recipe, resolve
from engine.config.registry import Registry
from engine.errors import TrainingFailure
from engine.loop import Trainer
from engine.rundir import checkpoint
from engine.rundir.directory import RunDir
from engine.testing import TOY, assert_resumes_exactly, train, without_timings


class Counter(Plugin):
    """A stateful plugin: its loss term depends on how many steps it has seen."""

    name = "counter"

    def __init__(self):
        super().__init__()
        self.seen = 0

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        return {"counter": 1e-3 * self.seen * outputs["logits"].pow(2).mean()}

    @hookimpl
    def hookmix_after_optimizer_step(self, model, state):
        self.seen += 1

    @hookimpl
    def hookmix_plugin_state(self, state):
        return {"seen": self.seen}

    @hookimpl
    def hookmix_load_plugin_state(self, plugin_state, state):
        self.seen = plugin_state["seen"]


class ForgetfulCounter(Counter):
    """The same plugin without checkpoint state: resuming it cannot be exact."""

    name = "forgetful"
    hookmix_plugin_state = None
    hookmix_load_plugin_state = None


@pytest.mark.parametrize(
    "run",
    [
        dict(eval_interval=2, checkpoint_interval=2),  # split=3 lands between checkpoints
        dict(eval_interval=3, checkpoint_interval=3, log_interval=4, grad_accum=2),  # metrics pending at the split
    ],
)
def test_toy_resumes_bit_exactly(run):
    assert_resumes_exactly([*TOY, Counter], steps=6, split=3, **run)


def test_resume_check_fails_when_plugin_state_is_not_checkpointed():
    with pytest.raises(AssertionError, match="differs after resume"):
        assert_resumes_exactly([*TOY, ForgetfulCounter], steps=6, split=3, eval_interval=2)


def test_resume_needs_the_same_plugins():
    out = f"memory://hookmix-test-{uuid.uuid4().hex}"
    train([*TOY, Counter], steps=4, out=out, stop_at=2)
    with pytest.raises(
        BadInput,
        match=r"checkpoint was written with plugin 'counter', which this run does not "
        r"enable",
    ):
        train(TOY, steps=4, out=out, resume=True)


def _checkpoint(path: str) -> dict:
    return torch.load(path, weights_only=True)


def test_cli_resume_of_tiny_gpt_matches_the_straight_run(gpt_run, gpt6, tmp_path, capsys):
    # interrupted after step 3: a recipe resolved exactly as `hookmix train` resolves it
    out = str(tmp_path / "run")
    registry = Registry()
    name, raw = read_recipe("shakespeare-gpt", registry)
    raw = apply_overrides(raw, gpt6)
    raw["run"]["out"] = out
    Trainer(resolve(name, raw, registry), registry, quiet=True).run(stop_at=3)
    assert sorted(os.listdir(f"{out}/checkpoints")) == ["step-00000003.pt"]
    assert "summary.json" in os.listdir(out)  # run(stop_at) still summarises

    assert main(["train", "--resume", out, "--quiet"]) == 0
    assert "done: 6 steps" in capsys.readouterr().out
    assert sorted(os.listdir(f"{out}/checkpoints")) == ["step-00000003.pt", "step-00000006.pt"]
    straight = _checkpoint(f"{gpt_run}/checkpoints/step-00000006.pt")
    resumed = _checkpoint(f"{out}/checkpoints/step-00000006.pt")
    assert straight["model"].keys() == resumed["model"].keys()
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for key, value in straight["optimizer"]["state"][0].items():
        assert torch.equal(value, resumed["optimizer"]["state"][0][key]), key
    assert resumed["scheduler"] == straight["scheduler"]
    with open(f"{gpt_run}/metrics.jsonl") as a, open(f"{out}/metrics.jsonl") as b:
        assert without_timings(map(json.loads, a)) == without_timings(map(json.loads, b))


# --- atomic checkpoints -----------------------------------------------------------------------


class _Crash(OSError):
    pass


def _crash_on_move(monkeypatch, step: int):
    real = LocalFileSystem.mv

    def mv(self, path1, path2, *args, **kwargs):
        if path2.endswith(f"step-{step:08d}.pt"):
            raise _Crash("simulated crash before the rename")
        return real(self, path1, path2, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "mv", mv)


def _crash_mid_write(monkeypatch, step: int):
    real = LocalFileOpener.write
    seen = []

    def write(self, data, *args, **kwargs):
        if "/checkpoints/.tmp-" in self.path:
            seen.append(self.path)
            if len(seen) == step // 2:  # checkpoints every 2 steps: the one of `step`
                real(self, data[: len(data) // 2])
                raise _Crash("No space left on device (simulated)")
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(LocalFileOpener, "write", write)


@pytest.mark.parametrize("crash", [_crash_on_move, _crash_mid_write])
def test_crash_while_checkpointing_keeps_the_previous_checkpoint(crash, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    with monkeypatch.context() as patch:
        crash(patch, 4)
        with pytest.raises(
            TrainingFailure,
            match=r"^step 4: writing the run directory failed \(.*\); the last good "
            r"checkpoint \(step 2\) is intact: `hookmix train --resume ",
        ):
            train(TOY, steps=6, out=out, checkpoint_interval=2)
    assert os.listdir(f"{out}/checkpoints") == ["step-00000002.pt"]  # no partial step-4, no temp file
    payload = checkpoint.load_latest(RunDir(out))
    assert payload["step"] == 2 and payload["format"] == checkpoint.FORMAT

    resumed = train(TOY, steps=6, out=out, checkpoint_interval=2, resume=True)
    straight = train(TOY, steps=6, checkpoint_interval=2)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed.metrics == straight.metrics
    assert sorted(os.listdir(f"{out}/checkpoints")) == ["step-00000004.pt", "step-00000006.pt"]  # keep=2
    # TensorBoard purged the steps 3-4 the crashed run had logged after its last checkpoint
    events = EventAccumulator(f"{out}/tensorboard")
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (r["step"], float(np.float32(r["train/loss"]))) for r in straight.metrics if "train/loss" in r
    ]


# --- refusing unsafe or damaged checkpoints ---------------------------------------------------


class Evil:
    """Unpickling this runs arbitrary code paths: a checkpoint holding it must be refused."""

    def __reduce__(self):
        return (Evil, ())


def _run_dir_with_checkpoint(tmp_path, tiny_gpt, data: bytes) -> str:
    out = str(tmp_path / "run")
    registry = Registry()
    name, raw = read_recipe("shakespeare-gpt", registry)
    raw = apply_overrides(raw, [*tiny_gpt, "run.steps=6"])
    raw["run"]["out"] = out
    RunDir(out).write_text_atomic("recipe.toml", resolve(name, raw, registry).to_toml())
    RunDir(out).write_bytes_atomic("checkpoints/step-00000003.pt", data)
    return out


def _evil_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"format": checkpoint.FORMAT, "step": 3, "model": {}, "payload": Evil()}, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            _evil_checkpoint(),
            r"checkpoint .*/checkpoints/step-00000003\.pt needs unpickling arbitrary Python objects "
            r"\(Unsupported global: GLOBAL [\w.]*Evil\); refusing to load it",
        ),
        (
            b"garbage, not a checkpoint\n" * 40,
            r"checkpoint .*step-00000003\.pt is unreadable \(UnpicklingError\); "
            r"it is damaged or not a hookmix checkpoint",
        ),
        (bytes(range(256)), r"checkpoint .*step-00000003\.pt is unreadable"),
        (b"", r"checkpoint .*step-00000003\.pt is unreadable \(EOFError\)"),
    ],
)
def test_resume_refuses_unsafe_or_damaged_checkpoints(data, expected, tmp_path, tiny_gpt, capsys, one_error_line):
    out = _run_dir_with_checkpoint(tmp_path, tiny_gpt, data)
    before = sorted(os.listdir(out))
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--resume", out])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert re.search(expected, line), line
    assert "\x1b" not in line  # torch's message carries ANSI codes; the CLI line must not
    assert sorted(os.listdir(out)) == before  # nothing written


def test_checkpoint_without_the_format_marker_is_refused():
    buf = io.BytesIO()
    torch.save({"step": 3, "model": {}}, buf)
    with pytest.raises(BadInput, match=r"is not a hookmix checkpoint \(format 1\)"):
        checkpoint.load_bytes(buf.getvalue(), "x.pt")
