"""The training step written per run (engine/step.py): only the lines a run needs, all of them valid."""

from __future__ import annotations

import builtins
import dis
import itertools
import types

from engine import Plugin, hookimpl
from engine.step import step_lines
from engine.testing import TOY, train

FLAGS = (
    "prepare",
    "wrapper",
    "autocast",
    "clip",
    "gather",
    "scheduler",
    "wrapped_step",
    "forward_hook",
    "aux_outputs",
    "before_backward",
    "after_backward",
    "after_optimizer_step",
)


def test_every_combination_of_settings_writes_a_step_that_compiles_and_binds_every_name_it_uses():
    bound = set(train(TOY, steps=1).trainer.train_step.__globals__) | set(dir(builtins))
    for accum in (1, 2):
        for values in itertools.product((False, True), repeat=len(FLAGS)):
            source = "\n".join(step_lines(accum=accum, **dict(zip(FLAGS, values)))) + "\n"
            module = compile(source, "<hookmix step>", "exec")
            step = next(c for c in module.co_consts if isinstance(c, types.CodeType))
            codes = [step, *(c for c in step.co_consts if isinstance(c, types.CodeType))]  # and terms_of
            used = {i.argval for code in codes for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"}
            assert used <= bound, f"unbound names {used - bound} in\n{source}"


class Observer(Plugin):
    """Implements one per-step hook."""

    name = "observer"

    @hookimpl
    def hookmix_after_backward(self, model):
        return None


class Forward(Plugin):
    """A model plugin's forward hook (the default's, as a plugin)."""

    name = "forward"

    @hookimpl
    def hookmix_forward(self, model, batch):
        return {"logits": model(batch["input"])}


def test_a_run_s_step_holds_only_what_the_run_needs():
    plain = train(TOY, steps=1).trainer.train_step.source
    assert "for micro" not in plain and "before_backward" not in plain and "autocast" not in plain
    assert "shapes.append(" in plain and "scheduler" not in plain and "clip" not in plain
    assert 'outputs = {"logits": model(batch["input"])}' in plain  # no model plugin's forward hook: inlined
    assert "after_backward(model, state)" in train([*TOY, Observer], steps=1).trainer.train_step.source
    forwarded = train([*TOY, Forward], steps=2, log_interval=1)
    assert "outputs = forward(model, batch, state)" in forwarded.trainer.train_step.source
    inlined = train(TOY, steps=2, log_interval=1)
    loss = [[r["train/loss"] for r in result.metrics if "train/loss" in r] for result in (forwarded, inlined)]
    assert loss[0] == loss[1] and len(loss[0]) == 2  # the same forward either way: the same losses, bit for bit
    accumulating = train(TOY, steps=1, grad_accum=2, grad_clip=1.0).trainer.train_step.source
    assert "for micro in range(accum):" in accumulating and "loss = loss / accum" in accumulating
    assert "clip_grad_norm_(params, clip)" in accumulating
