"""The hot path: no host synchronisation per step, and the deferred non-finite check still names
the first bad step and term and never lets a checkpoint hold non-finite weights."""

from __future__ import annotations

import io
import os
import sys
import uuid

import pytest
import torch

from engine import Plugin, TrainingFailure, hookimpl
from engine.config.recipe import read_recipe, resolve
from engine.config.registry import Registry
from engine.loop import Trainer
from engine.rundir.directory import RunDir
from engine.testing import TOY, make_recipe, nan_term_at

torch.set_num_threads(1)

# --- the non-finite check, deferred to metric reads -------------------------------------------


NanAtStep3 = nan_term_at(3)  # a loss term 'blowup' that is NaN during step 3 only (finite before and after)


def _trainer(plugins, **run) -> Trainer:
    recipe, registry = make_recipe(plugins, steps=run.pop("steps", 20), **run)
    return Trainer(recipe, registry, stream=io.StringIO())


def test_nan_before_the_log_interval_names_step_and_term():
    trainer = _trainer([*TOY, NanAtStep3], log_interval=10, grad_accum=2)
    with pytest.raises(TrainingFailure) as exc:
        trainer.run()
    assert str(exc.value).startswith("step 3: loss term 'blowup' is not finite (nan)")
    assert trainer.state.step == 10  # it ran on to the next metric read (log step 10), no further
    assert not RunDir(trainer.recipe.run.out).list("checkpoints")  # nothing saved after the bad step


def test_no_checkpoint_is_written_after_a_non_finite_loss():
    trainer = _trainer([*TOY, NanAtStep3], log_interval=10, checkpoint_interval=2)
    with pytest.raises(TrainingFailure) as exc:
        trainer.run()
    assert "step 3: loss term 'blowup'" in str(exc.value)
    assert "last checkpoint is from before step 3" in str(exc.value)
    # the checkpoint due at step 4 was refused: the latest one is from step 2, before the NaN
    assert RunDir(trainer.recipe.run.out).list("checkpoints") == ["step-00000002.pt"]


# --- counting host synchronisations -----------------------------------------------------------

SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCH = os.path.dirname(torch.__file__) + os.sep


class SyncCounter:
    """Counts reads of tensor values on the host made by any code but torch's own.

    Calls from torch's own Python code are not counted: e.g. the for-each AdamW reads its step
    counters, which live on the host even when the parameters are on a GPU, so they never wait
    for the device. On a GPU every counted call would block the host until the device is idle.
    """

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        for name in SYNCS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def counted(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if not caller.startswith(TORCH):
                self.calls.append(f"{name} from {os.path.relpath(caller, REPO)}:{sys._getframe(1).f_lineno}")
            return original(tensor, *args, **kwargs)

        return counted


def _syncs_per_step(trainer: Trainer, monkeypatch) -> dict[int, list[str]]:
    trainer.setup()
    counter = SyncCounter(monkeypatch)
    per_step = {}
    while trainer.state.step < trainer.recipe.run.steps:
        counter.calls.clear()
        trainer.advance()
        per_step[trainer.state.step] = list(counter.calls)
    monkeypatch.undo()
    trainer.progress.close()
    trainer.metrics_log.close()
    return per_step


def _shipped(name: str, overrides: dict) -> Trainer:
    registry = Registry()
    _, raw = read_recipe(name, registry)
    for section, values in overrides.items():
        target = raw["run"] if section == "run" else raw.setdefault("plugins", {}).setdefault(section, {})
        target.update(values)
    raw["run"]["out"] = f"memory://hookmix-sync-{uuid.uuid4().hex}"
    return Trainer(resolve(name, raw, registry), registry, stream=io.StringIO())


RUNS = {
    # the default loop with gradient clipping and accumulation on the toy setup
    "toy": lambda: _trainer(TOY, steps=12, log_interval=5, grad_clip=1.0, grad_accum=2, eval_interval=6),
    # a shipped recipe, shrunk
    "shakespeare-gpt": lambda: _shipped(
        "shakespeare-gpt",
        {
            "run": {"steps": 12, "log_interval": 5, "eval_interval": 6, "grad_clip": 1.0, "threads": 1},
            "gpt": {"n_layer": 1, "n_head": 2, "n_embd": 32},
            "tinyshakespeare": {"block_size": 16, "batch_size": 4, "eval_batches": 1},
        },
    ),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_no_host_sync_on_steps_without_a_metric_read(run, monkeypatch):
    per_step = _syncs_per_step(RUNS[run](), monkeypatch)
    quiet = {s: calls for s, calls in per_step.items() if s % 5 and s % 6 and s != 12}
    assert quiet and all(not calls for calls in quiet.values()), quiet
    assert per_step[5] and per_step[6]  # metric reads do sync: the counter sees them


class ItemEveryStep(Plugin):
    """A plugin that reads its loss on the host every step (what the counter must catch)."""

    name = "item_every_step"

    @hookimpl
    def hookmix_before_backward(self, loss):
        self.value = loss.item()


def test_the_sync_counter_catches_a_per_step_item(monkeypatch):
    per_step = _syncs_per_step(_trainer([*TOY, ItemEveryStep], steps=4, log_interval=10), monkeypatch)
    assert all(any(c.startswith("item from") for c in calls) for calls in per_step.values())
