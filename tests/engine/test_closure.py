"""The loss closure (plugin API 1.1, engine/step.py): ``optimizer.step(closure)`` semantics, what a re-evaluation
records (nothing twice), where clipping applies, ``hookmix_on_train_batch``, and the two plugins that prove it:
``sam`` (a wrapper that re-evaluates at perturbed weights) and ``lbfgs`` (an optimizer that requires the closure).

Exactness: the hand-written loops below do the same float operations in the same order as the engine and the
plugins (the norm of ``torch.nn.utils.get_total_norm`` is the norm of the per-tensor norms, as written here), so
the comparisons are bit for bit (``torch.equal``), not within a tolerance.
"""

from __future__ import annotations

import contextlib
import copy
import io

import pytest
import torch
import torch.nn.functional as F

from engine import BadInput, Plugin, hookimpl
from engine.loop import Trainer
from engine.step import bind_step, needs_closure
from engine.testing import TOY, assert_resumes_exactly, make_recipe, train

DATA = {"num_train": 400, "num_test": 100, "batch_size": 400}  # LBFGS is a full-batch method: the whole split
MLP = ["mnist1d", "mlp", "lbfgs", "cross_entropy"]
MLP_CONFIG = {"mnist1d": DATA, "mlp": {"hidden": [32]}, "lbfgs": {"max_iter": 5}}


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    """A private HOOKMIX_CACHE: the MNIST-1D split is generated once for this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOOKMIX_CACHE", str(tmp_path_factory.mktemp("hookmix_cache")))
        yield


def _set_up(plugins, config=None, **run) -> Trainer:
    recipe, registry = make_recipe(plugins, config, steps=run.pop("steps", 4), **run)
    trainer = Trainer(recipe, registry, stream=io.StringIO())
    trainer.setup()
    return trainer


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


# --- sam: one step equals a hand-written SAM step ------------------------------------------------------


def _sam_by_hand(trainer: Trainer, steps: int, rho: float, adaptive: bool, accum: int = 1) -> torch.nn.Module:
    """SAM (Foret et al.; ASAM, Kwon et al.) on the toy run as a plain PyTorch loop, from a copy of its model."""
    state = trainer.state
    model = copy.deepcopy(state.model)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)  # toy_sgd's defaults
    generator = torch.Generator().set_state(state.generator.get_state())

    def gradient(batches):
        optimizer.zero_grad(set_to_none=True)
        for batch in batches:
            loss = F.cross_entropy(model(batch["input"]), batch["target"])
            (loss / accum if accum > 1 else loss).backward()

    for _ in range(steps):
        batches = [state.data.train_batch(generator) for _ in range(accum)]
        gradient(batches)
        with torch.no_grad():
            scaled = [p.abs() * p.grad if adaptive else p.grad for p in params]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in scaled]))
            scale = rho / (norm + 1e-12)
            ascent = [p * p * p.grad * scale if adaptive else p.grad * scale for p in params]
            saved = [p.clone() for p in params]
            for p, e in zip(params, ascent):
                p.add_(e)
        gradient(batches)  # the gradient at the perturbed weights, on the same batches
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)
        optimizer.step()
    return model


@pytest.mark.parametrize(
    "config,accum",
    [({}, 1), ({"adaptive": True, "rho": 0.5}, 1), ({}, 3)],
    ids=["sam", "asam", "sam-accumulation"],
)
def test_sam_steps_equal_hand_written_sam_steps(config, accum):
    trainer = _set_up([*TOY, "sam"], {"sam": config}, grad_accum=accum)
    model = _sam_by_hand(trainer, 3, config.get("rho", 0.05), config.get("adaptive", False), accum)
    for _ in range(3):
        trainer.train_step()
    _weights_equal(trainer.state.model, model)
    plain = train(TOY, steps=3, grad_accum=accum)  # and SAM moved somewhere else than the base optimizer
    assert not torch.equal(plain.model[1].weight, trainer.state.model[1].weight)


def test_sam_resumes_exactly():
    assert_resumes_exactly([*TOY, "sam"], steps=4, split=2)  # 4 straight vs 2 + resume 2: bit for bit


def test_sam_refuses_an_optimizer_that_requires_its_closure():
    with pytest.raises(BadInput, match=r"sam wraps an optimizer .* LBFGS requires its own loss closure"):
        train(["toy_data", "toy_model", "lbfgs", "toy_ce", "sam"], steps=1)


# --- what a re-evaluation records, sees and costs -------------------------------------------------------

EVENTS: list[tuple] = []


class Watch(Plugin):
    """Records the per-micro-batch hooks, the batches the forward sees, autocast, and logs one value per backward."""

    name = "watch"

    @hookimpl
    def hookmix_forward(self, model, batch, state):
        EVENTS.append(("forward", state.micro, id(batch), torch.is_autocast_enabled("cpu"), model.training))
        return {"logits": model(batch["input"])}

    @hookimpl
    def hookmix_on_train_batch(self, batch, outputs, state):
        EVENTS.append(("on_train_batch", state.micro, id(batch), torch.is_grad_enabled(), "logits" in outputs))

    @hookimpl
    def hookmix_after_backward(self, model, state):
        EVENTS.append(("after_backward", state.micro))
        state.log("watch/backward", 1.0)


class Probe(Plugin):
    """An inner optimizer_step wrapper (listed after sam): the gradient norm the optimizer steps on."""

    name = "probe"

    @hookimpl(wrapper=True)
    def hookmix_optimizer_step(self, optimizer, state):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"]]
        EVENTS.append(("optimizer_step", float(torch.nn.utils.get_total_norm(grads))))
        return (yield)


def test_a_re_evaluation_runs_the_same_micro_batches_and_records_them_once():
    trainer = _set_up([*TOY, Watch, "sam"], grad_accum=2, precision="bf16")
    EVENTS.clear()
    trainer.train_step()
    first, again = EVENTS[:6], EVENTS[6:]  # the engine's pass over both micro-batches, then sam's closure
    ids = [e[2] for e in first if e[0] == "forward"]
    assert [e[:2] for e in first] == [
        ("forward", 0),
        ("on_train_batch", 0),
        ("after_backward", 0),
        ("forward", 1),
        ("on_train_batch", 1),
        ("after_backward", 1),
    ]
    assert [e[3:] for e in first if e[0] == "on_train_batch"] == [(False, True)] * 2  # under no_grad, outputs seen
    # the closure: the same batch objects (drawn once), under autocast, backward hooks again, no observers
    assert again == [("forward", 0, ids[0], True, True), ("after_backward", 0)] + [
        ("forward", 1, ids[1], True, True),
        ("after_backward", 1),
    ]
    log = trainer.state._train_log
    assert [r[0] for r in log.terms] == [1, 1]  # one loss record per micro-batch: the first evaluation's
    assert log.values["watch/backward"] == [1.0, 1.0]  # the re-evaluation's state.log calls went nowhere
    assert len(log.values["sam/perturbed_loss"]) == 1  # the wrapper's own log, outside the closure, counts
    assert len(trainer.throughput.shapes) == 2  # the throughput counts each micro-batch once


def test_the_closure_runs_inside_the_wrapper_and_syncs_on_the_last_micro_batch_only():
    class FakeWrapper:
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

    trainer = _set_up([*TOY, "sam"], grad_accum=3)
    trainer.wrapper = wrapper = FakeWrapper()
    bind_step(trainer)()
    one_pass = ["no_sync", "forward", "sync again"] * 2 + ["forward"]
    assert wrapper.calls == one_pass * 2  # the engine's pass, then the closure's


def test_clipping_applies_to_the_gradients_the_optimizer_steps_on():
    """Decided: run.grad_clip clips after every evaluation, the closure's included; train/grad_norm (the norm
    before clipping) is the first evaluation's, logged once per step."""
    trainer = _set_up([*TOY, "sam", Probe], grad_clip=0.01)
    EVENTS.clear()
    trainer.train_step()
    (norm,) = [e[1] for e in EVENTS if e[0] == "optimizer_step"]
    assert norm <= 0.01 + 1e-6  # SAM's perturbed gradient, clipped
    logged = trainer.state._train_log.values["train/grad_norm"]
    plain = _set_up(TOY, grad_clip=0.01)
    plain.train_step()
    assert len(logged) == 1 and torch.equal(logged[0], plain.state._train_log.values["train/grad_norm"][0])


class Wrap10(Plugin):
    """An optimizer_step wrapper written for plugin API 1.0: no closure argument."""

    name = "wrap10"

    @hookimpl(wrapper=True)
    def hookmix_optimizer_step(self, optimizer, state):
        EVENTS.append(("wrap10",))
        return (yield)


class Declines(Plugin):
    """A 1.1 wrapper that takes the closure and does not call it."""

    name = "declines"

    @hookimpl(wrapper=True)
    def hookmix_optimizer_step(self, optimizer, state, closure):
        return (yield)


@pytest.mark.parametrize("wrapper", [Wrap10, Declines])
def test_ordinary_optimizers_pay_no_extra_forward_and_train_bit_for_bit_as_before(wrapper):
    EVENTS.clear()
    wrapped = train([*TOY, Watch, wrapper], steps=3, grad_accum=2)
    plain = train([*TOY, Watch], steps=3, grad_accum=2)
    training = [e for e in EVENTS if e[0] == "forward" and e[4]]  # not the evaluation's (eval mode)
    assert len(training) == 2 * 3 * 2  # both runs: one forward per micro-batch
    assert wrapped.metrics == plain.metrics
    _weights_equal(wrapped.model, plain.model)
    assert not needs_closure(wrapped.state.optimizer)


def test_a_1_0_wrapper_keeps_nothing_for_the_closure():
    trainer = _set_up([*TOY, Wrap10])
    assert not trainer.manager.takes("hookmix_optimizer_step", "closure")
    assert trainer.manager.takes("hookmix_optimizer_step", "optimizer")
    assert _set_up([*TOY, "sam"]).manager.takes("hookmix_optimizer_step", "closure")


# --- lbfgs: an optimizer that requires its closure -----------------------------------------------------


def _lbfgs_by_hand(trainer: Trainer, steps: int) -> torch.nn.Module:
    """torch's documented LBFGS loop (a closure per step) on the same batches, from a copy of the run's model."""
    state = trainer.state
    model = copy.deepcopy(state.model)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=5, line_search_fn="strong_wolfe")
    generator = torch.Generator().set_state(state.generator.get_state())
    for _ in range(steps):
        batch = state.data.train_batch(generator)

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(model(batch["input"]), batch["target"])
            loss.backward()
            return loss

        optimizer.step(closure)
    return model


def test_lbfgs_trains_mnist1d_and_equals_a_hand_written_lbfgs_loop():
    trainer = _set_up(MLP, MLP_CONFIG, steps=6)
    assert needs_closure(trainer.state.optimizer)
    model = _lbfgs_by_hand(trainer, 3)
    for _ in range(3):
        trainer.train_step()
    _weights_equal(trainer.state.model, model)
    losses = [m["train/loss"] for m in train(MLP, MLP_CONFIG, steps=6).metrics if "train/loss" in m]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]  # it trains (the same batch: a full-batch method)
    assert all(b < a for a, b in zip(losses, losses[1:]))


def test_lbfgs_evaluates_through_the_closure_and_only_its_first_call_is_recorded():
    trainer = _set_up(["toy_data", "toy_model", "lbfgs", "toy_ce", Watch], {"lbfgs": {"max_iter": 3}}, grad_accum=2)
    EVENTS.clear()
    trainer.train_step()
    forwards = [e for e in EVENTS if e[0] == "forward" and e[4]]
    assert len(forwards) > 2 and len(forwards) % 2 == 0  # several evaluations, each over both micro-batches
    assert [e[1] for e in EVENTS if e[0] == "on_train_batch"] == [0, 1]  # the first evaluation's
    assert len({e[2] for e in forwards}) == 2  # drawn once: two batch objects, whatever the evaluations
    log = trainer.state._train_log
    assert [r[0] for r in log.terms] == [1, 1] and log.values["watch/backward"] == [1.0, 1.0]


def test_lbfgs_resumes_exactly():
    """Its curvature history (``old_dirs``, ``prev_loss``, ...) is optimizer state: checkpointed and restored."""
    assert_resumes_exactly(["toy_data", "toy_model", "lbfgs", "toy_ce"], {"lbfgs": {"max_iter": 3}}, steps=4, split=2)


class Claims(Plugin):
    """Claims the biases with an option of its own, which LBFGS cannot honour."""

    name = "claims"

    @hookimpl
    def hookmix_param_groups(self, model):
        return [{"name": "biases", "params": [p for p in model.parameters() if p.ndim == 1], "lr": 0.5}]


def test_lbfgs_refuses_per_group_options():
    with pytest.raises(BadInput, match=r"lbfgs takes no per-group options, but group 'biases' sets lr"):
        train(["toy_data", "toy_model", "lbfgs", "toy_ce", Claims], steps=1)


def test_lbfgs_refuses_sharded_gradients():
    """Its flat gradient vector would be a row shard per rank under FSDP (checked in hookmix_configure)."""
    from types import SimpleNamespace

    from plugins.core.lbfgs_plugin import LBFGS

    with pytest.raises(BadInput, match=r"lbfgs flattens whole gradients .* use run.strategy=ddp"):
        LBFGS().hookmix_configure(SimpleNamespace(run=SimpleNamespace(strategy="fsdp"), world_size=2))
    LBFGS().hookmix_configure(SimpleNamespace(run=SimpleNamespace(strategy="fsdp"), world_size=1))  # a no-op there
