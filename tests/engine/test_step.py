"""The training step written per run (engine/step.py): only the lines a run needs, all of them valid."""

from __future__ import annotations

import itertools

from engine import Plugin, hookimpl
from engine.step import step_lines
from engine.testing import TOY, train

FLAGS = ("prepare", "wrapper", "autocast", "clip", "gather", "scheduler", "wrapped_step", "aux_outputs",
         "before_backward", "after_backward", "after_optimizer_step")


def test_every_combination_of_settings_writes_a_step_that_compiles():
    for accum in (1, 2):
        for values in itertools.product((False, True), repeat=len(FLAGS)):
            source = "\n".join(step_lines(accum=accum, **dict(zip(FLAGS, values)))) + "\n"
            compile(source, "<hookmix step>", "exec")


class Observer(Plugin):
    """Implements one per-step hook."""

    name = "observer"

    @hookimpl
    def hookmix_after_backward(self, model):
        return None


def test_a_run_s_step_holds_only_what_the_run_needs():
    plain = train(TOY, steps=1).trainer.train_step.source
    assert "for micro" not in plain and "before_backward" not in plain and "autocast" not in plain
    assert "count(batch)" in plain and "scheduler" not in plain and "clip" not in plain
    assert "after_backward(model, state)" in train([*TOY, Observer], steps=1).trainer.train_step.source
    accumulating = train(TOY, steps=1, grad_accum=2, grad_clip=1.0).trainer.train_step.source
    assert "for micro in range(accum):" in accumulating and "loss = loss / accum" in accumulating
    assert "clip_grad_norm_(params, clip)" in accumulating
