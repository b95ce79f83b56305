"""One optimizer step of a run: the step of the loop's pseudocode (engine/loop.py), as plain Python.

:func:`bind_step` returns ``train_step``, a closure over what the run fixed at setup: the model,
data, optimizer, the hook callers (engine/dispatch.py) and the run's settings (gradient
accumulation, the DDP/FSDP wrapper, bf16 autocast, clipping, a scheduler, which per-step hooks
some plugin implements). It hoists them into local names once, as torchtitan and nanoGPT's
``train.py`` do, so the step reads no attribute chain per call and branches inline on flags that
never change during the run. A hook no plugin implements is not called.

The records are each micro-batch's loss terms for the train metrics and the non-finite check,
read at log time (engine/train_log.py); the input shapes counted for the throughput metrics
likewise (engine/perf/throughput.py). What changes during a run is read from ``state`` (the
step counter) or kept in place (the records and shapes lists).

The loss closure (plugin API 1.1), torch's ``optimizer.step(closure)``: each call zeroes the
gradients, runs the step's micro-batches again (forward, aux outputs and loss terms under autocast
and the DDP/FSDP wrapper, ``no_sync`` but on the last; backward and the backward hooks), clips
(``run.grad_clip``: the optimizer steps on clipped gradients whichever evaluation made them) and
returns the step's loss. The micro-batches are drawn once per step and kept for it, only where
something can call it: an optimizer whose ``step`` requires its closure (LBFGS; the engine then runs
no pass of its own, and the closure's first call is the step's first evaluation), or an
``optimizer_step`` wrapper that takes ``closure`` (SAM). Only the first evaluation is recorded: its
loss terms, ``state.log`` values, ``hookmix_on_train_batch`` and the throughput count; a
re-evaluation records nothing and its ``state.log`` calls go nowhere, so no metric counts twice.

A rollout run (a plugin implements ``hookmix_generate_rollouts``) rolls out all the step's micro-batches
before training on the first, as TRL does with its generation batch, and counts them over micro-batches and
ranks (``batch["step_totals"]``, engine/rollouts.py): a loss normalised by the step's global token count needs
that count before its first backward. Nothing trains in between, so the rollouts are the ones the interleaved
order would give.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, Callable

import torch

from engine.errors import TrainingFailure
from engine.state import NULL_CONTEXT

if TYPE_CHECKING:
    from engine.loop import Trainer


def bind_step(trainer: Trainer) -> Callable[[], None]:
    """The function that trains one optimizer step of ``trainer``'s run (set up, its wrapper included)."""
    state, manager, run = trainer.state, trainer.manager, trainer.recipe.run
    model, optimizer, scheduler = state.model, state.optimizer, state.scheduler
    train_batch, generator = state.data.train_batch, state.generator
    prepare_batch = batch_preparation(trainer)  # None: in one CPU process a batch is trained on as drawn
    count = trainer.throughput.count  # the input's shape for the throughput metrics
    forward, loss_terms = manager.forward, manager.loss_terms  # forward: a plugin's, or the manager's default
    # the per-step hooks some plugin implements; None: nobody does, and the step does not call them
    aux_outputs = manager.aux_outputs if manager.has("hookmix_aux_outputs") else None
    on_train_batch = manager.on_train_batch if manager.has("hookmix_on_train_batch") else None
    before_backward = manager.before_backward if manager.has("hookmix_before_backward") else None
    after_backward = manager.after_backward if manager.has("hookmix_after_backward") else None
    optimizer_step = manager.optimizer_step if manager.wraps("hookmix_optimizer_step") else None
    after_optimizer_step = manager.after_optimizer_step if manager.has("hookmix_after_optimizer_step") else None
    records = state._train_log.terms  # appended to in place; TrainLog.read empties it in place
    detach = torch.Tensor.detach
    wrapper = trainer.wrapper  # DDP or FSDP: the forward runs inside it, so that the backward reduces
    accum, last_micro = run.grad_accum, run.grad_accum - 1
    autocast = state._autocast_dtype is not None
    clip, params, clip_grad_norm_ = run.grad_clip, trainer.params, torch.nn.utils.clip_grad_norm_
    if trainer.sharded is None:
        as_plain = _as_is
    else:  # FSDP: the gradient norm of sharded gradients is a DTensor
        from engine.distributed.fsdp import plain as as_plain
    gather = trainer.gather  # a plugin needs whole matrices: post-step hooks see gathered weights (FSDP)
    # the loss closure: an optimizer that requires it runs every evaluation itself (LBFGS); the micro-batches are
    # kept for it only where something can call it (a 1.0 wrapper, without a closure argument, cannot)
    driven = needs_closure(optimizer)
    keep = driven or manager.takes("hookmix_optimizer_step", "closure")
    batches: list[dict] = []  # this step's micro-batches as trained on (kept: drawn once, re-evaluated as they were)
    evaluated = not driven  # whether this step's first evaluation ran: the engine's own pass, or the closure's first
    discard, distributed = _Discard(), state.world_size > 1
    rollouts = manager.has("hookmix_generate_rollouts")  # the step's micro-batches are rolled out first
    if rollouts:
        from engine.rollouts import add_step_totals

    def forward_and_loss_terms(batch: dict) -> dict:
        """One micro-batch's outputs (the forward, then the auxiliary outputs) and its loss terms."""
        outputs = forward(model, batch, state)
        if aux_outputs is not None:
            outputs = aux_outputs(model, batch, outputs, state)
        return loss_terms(batch, outputs, state)

    def observed(batch: dict) -> dict:
        """The same, then the micro-batch and its outputs shown to the observers (the first evaluation only)."""
        outputs = forward(model, batch, state)
        if aux_outputs is not None:
            outputs = aux_outputs(model, batch, outputs, state)
        terms = loss_terms(batch, outputs, state)
        with torch.no_grad():  # observers read; nothing they compute joins the graph
            on_train_batch(batch, outputs, state)
        return terms

    def inside_wrapper(terms_of: Callable[[dict], dict]) -> Callable[[dict], dict]:
        """DDP/FSDP: the forward runs inside the wrapper, so that the backward reduces."""
        return terms_of if wrapper is None else lambda batch: wrapper(lambda: terms_of(batch))

    recompute_terms = inside_wrapper(forward_and_loss_terms)  # a re-evaluation: nobody observes it
    first_terms = recompute_terms if on_train_batch is None else inside_wrapper(observed)

    def micro_batch(batch: dict, step: int, again: bool = False) -> torch.Tensor:
        """Forward (under autocast), the loss terms recorded (not ``again``: a re-evaluation), and backward,
        for one micro-batch; returns its loss (divided by the accumulation factor)."""
        compute_terms = recompute_terms if again else first_terms
        if autocast:
            with state.autocast():
                terms = compute_terms(batch)
        else:
            terms = compute_terms(batch)
        if len(terms) == 1:
            ((name, loss),) = terms.items()
            if not again:
                records.append((step, (name,), (loss.detach(),)))
        else:
            if not terms:
                raise TrainingFailure(
                    f"step {step}: no plugin returned a loss term for this batch; check the loss plugins' conditions"
                )
            loss = sum(terms.values())
            if not again:
                records.append((step, tuple(terms), (*map(detach, terms.values()), loss.detach())))
        if accum > 1:
            loss = loss / accum
        if before_backward is not None:
            before_backward(loss, state)
        loss.backward()
        if after_backward is not None:
            after_backward(model, state)
        return loss

    def closure() -> torch.Tensor:
        """torch's loss closure: gradients zeroed, every kept micro-batch's forward and backward, clipped;
        returns the step's loss (the mean over micro-batches, and over ranks: every rank's optimizer decides
        on the same number). Its first call is the step's first evaluation when the optimizer requires it."""
        nonlocal evaluated
        again, evaluated = evaluated, True
        step, total = state.step + 1, None
        if again:  # a re-evaluation logs nothing: the step's metrics are its first evaluation's
            log, state._train_log = state._train_log, discard
        try:
            with torch.enable_grad():  # LBFGS calls it from its no_grad step
                optimizer.zero_grad(set_to_none=True)
                for micro, batch in enumerate(batches):
                    state.micro = micro
                    if wrapper is not None and micro < last_micro:  # reduce on the last micro-batch only
                        with wrapper.no_sync():
                            loss = micro_batch(batch, step, again)
                    else:
                        loss = micro_batch(batch, step, again)
                    total = loss.detach() if total is None else total + loss.detach()
                if clip > 0:
                    state.log("train/grad_norm", as_plain(clip_grad_norm_(params, clip)))
        finally:
            if again:
                state._train_log = log
        return state.all_reduce_mean(total) if distributed else total

    def draw(micro: int) -> dict:
        """Micro-batch ``micro`` of this step as trained on: drawn, and prepared (this rank's rows, rolled out)."""
        state.micro = micro
        batch = train_batch(generator)
        if prepare_batch is None:
            count(batch)
            return batch
        return prepare_batch(batch)

    def train_step() -> None:
        nonlocal evaluated
        if not model.training:  # train() walks every submodule: too slow to call per step on small models
            model.train()
        step = state.step + 1
        if driven:  # the optimizer evaluates (LBFGS): the micro-batches drawn now, trained on by its closure calls
            batches.extend(draw(micro) for micro in range(accum))
            if rollouts:
                add_step_totals(batches, state)
            evaluated = False
        else:
            if rollouts:  # the step's generation batch first, counted; then trained on (kept for the closure)
                batches.extend(draw(micro) for micro in range(accum))
                add_step_totals(batches, state)
            for micro, batch in enumerate(batches if rollouts else map(draw, range(accum))):
                state.micro = micro
                if keep and not rollouts:  # a wrapper may call the closure: it re-evaluates this very batch
                    batches.append(batch)
                if wrapper is not None and micro < last_micro:  # accumulating under DDP/FSDP: reduce on the last only
                    with wrapper.no_sync():
                        micro_batch(batch, step)
                else:
                    micro_batch(batch, step)
        if not driven and clip > 0:
            state.log("train/grad_norm", as_plain(clip_grad_norm_(params, clip)))
        if optimizer_step is not None:  # the plugins' wrappers around the engine's step (manager.py)
            optimizer_step(optimizer, state, closure)
        elif driven:
            optimizer.step(closure)
        else:
            optimizer.step()
        batches.clear()
        state.step = step
        if after_optimizer_step is not None:
            with state.full_weights() if gather else NULL_CONTEXT:
                after_optimizer_step(model, optimizer, state)
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


def needs_closure(optimizer: Any) -> bool:
    """Whether ``optimizer.step`` requires its loss closure (``torch.optim.LBFGS.step(closure)``) instead of
    taking it optionally (``step(closure=None)``): torch's own declaration, read from the signature. The
    engine steps such an optimizer with ``optimizer.step(closure)`` and runs no forward of its own; any
    other is stepped with ``optimizer.step()``, so that it pays for no extra forward."""
    return _requires_closure(type(optimizer))


@functools.cache
def _requires_closure(cls: type) -> bool:
    try:
        closure = inspect.signature(cls.step).parameters.get("closure")
    except (AttributeError, TypeError, ValueError):  # no step, or one without a signature: takes no closure
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


class _Discard:
    """Where ``state.log`` writes during a re-evaluation of the loss closure: nowhere."""

    def log(self, name: str, value: Any) -> None:
        pass


def batch_preparation(trainer: Trainer) -> Callable[[dict], dict] | None:
    """What a drawn batch goes through before it is trained on, or None where it is trained on as drawn
    (one CPU process, no rollouts). Decided once: per-step checks cost more than they look."""
    state, manager = trainer.state, trainer.manager
    model, rank, world_size, device = state.model, state.rank, state.world_size, state.device
    rl = manager.has("hookmix_generate_rollouts")
    if world_size == 1 and device.type == "cpu" and not rl:
        return None
    from engine.distributed import ddp
    from engine.rollouts import roll_out

    count = trainer.throughput.count

    def prepare_batch(batch: dict) -> dict:
        """A drawn batch as this rank trains on it: its rows, counted, on the device, rolled out."""
        if world_size > 1:  # the global draw is the same on every rank; keep this rank's rows
            batch = ddp.shard(batch, rank, world_size)
        count(batch)
        if device.type != "cpu":  # pinned host memory: the copy overlaps with compute
            batch = {k: ddp.to_device(v, device) for k, v in batch.items()}
        return roll_out(model, batch, state, manager) if rl else batch

    return prepare_batch


def _as_is(value: Any) -> Any:
    return value
