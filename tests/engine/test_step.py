"""The training step (engine/step.py): each setting does what it should, in the loop's order, bit for bit."""

from __future__ import annotations

import contextlib
import copy
import io
import traceback

import pytest
import torch

from engine import Plugin, TrainingFailure, hookimpl
from engine.loop import Trainer
from engine.step import bind_step
from engine.testing import TOY, make_recipe, train


def _set_up(plugins, **run) -> Trainer:
    recipe, registry = make_recipe(plugins, steps=run.pop("steps", 4), **run)
    trainer = Trainer(recipe, registry, stream=io.StringIO())
    trainer.setup()
    return trainer


def _by_hand(trainer: Trainer, steps: int, accum: int = 1, clip: float = 0.0, bf16: bool = False):
    """The toy run's steps as a plain PyTorch loop on a copy of its freshly built model: (model, losses)."""
    state = trainer.state
    model = copy.deepcopy(state.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # toy_sgd's defaults
    generator = torch.Generator().set_state(state.generator.get_state())
    losses = []
    for _ in range(steps):
        for _ in range(accum):
            batch = state.data.train_batch(generator)
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                loss = torch.nn.functional.cross_entropy(model(batch["input"]), batch["target"])
            losses.append(loss.detach())
            (loss / accum if accum > 1 else loss).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, losses


@pytest.mark.parametrize(
    "settings",
    [{}, {"grad_accum": 3}, {"grad_clip": 0.05}, {"precision": "bf16"}, {"grad_accum": 2, "grad_clip": 0.05}],
    ids=["plain", "accumulation", "clipping", "bf16", "accumulation+clipping"],
)
def test_the_step_trains_bit_for_bit_like_a_plain_loop_with_the_same_settings(settings):
    trainer = _set_up(TOY, **settings)
    model, losses = _by_hand(
        trainer,
        steps=4,
        accum=settings.get("grad_accum", 1),
        clip=settings.get("grad_clip", 0.0),
        bf16=settings.get("precision") == "bf16",
    )
    records = trainer.state._train_log.terms
    for _ in range(4):
        trainer.train_step()
    assert trainer.state.step == 4
    assert [r[0] for r in records] == [step for step in range(1, 5) for _ in range(settings.get("grad_accum", 1))]
    assert all(torch.equal(r[2][0], loss) for r, loss in zip(records, losses, strict=True))  # each micro-batch's
    for key, value in model.state_dict().items():
        assert torch.equal(trainer.state.model.state_dict()[key], value), key


EVENTS: list[tuple] = []


class _Scheduler:
    def step(self) -> None:
        EVENTS.append(("scheduler",))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, saved: dict) -> None:
        pass


class Recorder(Plugin):
    """Records each per-step hook it implements, with what the step promises there."""

    name = "recorder"

    @hookimpl
    def hookmix_forward(self, model, batch, state):
        EVENTS.append(("forward", state.micro, torch.is_autocast_enabled("cpu")))
        return {"logits": model(batch["input"])}

    @hookimpl
    def hookmix_aux_outputs(self, outputs, state):
        EVENTS.append(("aux_outputs", state.micro))
        return {"seen": True}

    @hookimpl
    def hookmix_loss_terms(self, outputs, state):
        EVENTS.append(("loss_terms", state.micro, outputs["seen"], torch.is_autocast_enabled("cpu")))

    @hookimpl
    def hookmix_before_backward(self, loss, state):
        EVENTS.append(("before_backward", state.micro, torch.is_autocast_enabled("cpu")))

    @hookimpl
    def hookmix_after_backward(self, model, state):
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        EVENTS.append(("after_backward", state.micro, bool(norm > 0.01)))

    @hookimpl(wrapper=True)
    def hookmix_optimizer_step(self, optimizer, state):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"]]
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        EVENTS.append(("optimizer_step", state.step, bool(norm <= 0.01 + 1e-6)))  # clipped before the step
        return (yield)

    @hookimpl
    def hookmix_after_optimizer_step(self, state):
        EVENTS.append(("after_optimizer_step", state.step, torch.is_grad_enabled()))

    @hookimpl
    def hookmix_lr_scheduler(self, optimizer):
        return _Scheduler()


def test_every_per_step_hook_fires_in_the_loops_order_with_what_the_step_promises():
    trainer = _set_up([*TOY, Recorder], grad_accum=2, grad_clip=0.01, precision="bf16")
    EVENTS.clear()
    trainer.train_step()
    micro_batch = [
        ("forward", None, True),  # inside autocast
        ("aux_outputs", None),
        ("loss_terms", None, True, True),  # the aux outputs merged into outputs; inside autocast
        ("before_backward", None, False),  # the backward outside autocast
        ("after_backward", None, True),  # gradients before clipping
    ]
    expected = [tuple(m if v is None else v for v in event) for m in (0, 1) for event in micro_batch]
    expected += [
        ("optimizer_step", 0, True),  # clipped; the step counter moves after the optimizer step
        ("after_optimizer_step", 1, False),  # without autograd, the counter already moved
        ("scheduler",),
    ]
    assert EVENTS == expected
    assert trainer.state._train_log.values["train/grad_norm"]  # the norm before clipping, logged


class _FakeWrapper:
    """Stands in for DDP/FSDP: records whether the forward ran inside it and when gradients were not synced."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, fn):
        self.calls.append("forward")
        return fn()

    @contextlib.contextmanager
    def no_sync(self):
        self.calls.append("no_sync")
        yield
        self.calls.append("sync again")


def test_with_a_wrapper_the_forward_runs_inside_it_and_only_the_last_micro_batch_syncs():
    trainer = _set_up(TOY, grad_accum=3)
    trainer.wrapper = wrapper = _FakeWrapper()
    train_step = bind_step(trainer)
    train_step()
    assert wrapper.calls == ["no_sync", "forward", "sync again"] * 2 + ["forward"]
    one = _set_up(TOY)
    one.wrapper = wrapper = _FakeWrapper()
    bind_step(one)()
    assert wrapper.calls == ["forward"]


def test_post_step_hooks_see_gathered_weights_when_a_plugin_needs_them():
    views: list[str] = []

    @contextlib.contextmanager
    def full_weights():
        views.append("gathered")
        yield {}
        views.append("written back")

    for gather in (False, True):
        trainer = _set_up([*TOY, Recorder])
        trainer.gather = gather
        trainer.state.full_weights = full_weights
        EVENTS.clear()
        bind_step(trainer)()
        assert ("after_optimizer_step", 1, False) in EVENTS
    assert views == ["gathered", "written back"]  # once, for the run that gathers


class Forward(Plugin):
    """A model plugin's forward hook (the default's, as a plugin)."""

    name = "forward"

    @hookimpl
    def hookmix_forward(self, model, batch):
        return {"logits": model(batch["input"])}


def test_a_forward_hook_and_the_default_forward_give_the_same_losses():
    forwarded = train([*TOY, Forward], steps=2, log_interval=1)
    default = train(TOY, steps=2, log_interval=1)
    loss = [[r["train/loss"] for r in result.metrics if "train/loss" in r] for result in (forwarded, default)]
    assert loss[0] == loss[1] and len(loss[0]) == 2  # the same forward either way: the same losses, bit for bit


class Sometimes(Plugin):
    """The only loss plugin, and it returns nothing on step 2."""

    name = "sometimes"

    @hookimpl
    def hookmix_loss_terms(self, outputs, state):
        return None if state.step == 1 else {"sum": outputs["logits"].sum()}


def test_a_step_without_loss_terms_fails_naming_the_step():
    trainer = _set_up(["toy_data", "toy_model", "toy_sgd", Sometimes])
    trainer.train_step()
    with pytest.raises(TrainingFailure, match=r"^step 2: no plugin returned a loss term for this batch"):
        trainer.train_step()


class Boom(Plugin):
    """A loss plugin that raises."""

    name = "boom"

    @hookimpl
    def hookmix_loss_terms(self, outputs):
        raise RuntimeError("boom")


def test_a_traceback_through_the_step_shows_the_steps_source_lines():
    trainer = _set_up([*TOY, Boom])
    with pytest.raises(RuntimeError, match="boom") as failure:
        trainer.train_step()
    frames = traceback.extract_tb(failure.value.__traceback__)
    step = [f for f in frames if f.filename.endswith("engine/step.py")]
    assert [f.name for f in step] == ["train_step", "micro_batch", "forward_and_loss_terms"]
    assert step[0].line == "micro_batch(batch, step)"
    assert step[1].line == "terms = compute_terms(batch)"
    assert step[2].line == "return loss_terms(batch, outputs, state)"
