"""One optimizer step of a run, as a function bound once to what the run fixed at setup.

The step is the loop's hottest code: on a small model every Python instruction in it shows in the
step time (docs/performance.md). A method would look up ``self.state.model``,
``self.manager.loss_terms``, ``self.recipe.run.grad_accum``, ... on every call and pass through
helper methods; :func:`bind_step` looks them up once, when setup is done, and returns a function
that does one step with local names. What it does is the step of the loop's pseudocode
(engine/loop.py)::

    for micro in range(run.grad_accum):
        batch = data.train_batch(generator)       # then, outside one CPU process: this rank's rows,
                                                  # on the device, rolled out (Trainer._prepare)
        terms = loss_terms(batch, aux_outputs(model, batch, forward(model, batch)))
        loss = sum(terms) / grad_accum             # the terms recorded for the metrics and the non-finite check
        before_backward(loss); loss.backward(); after_backward(model)
    clip gradients; optimizer_step(optimizer); step += 1
    with no_grad: after_optimizer_step(model, optimizer)
    scheduler.step(); optimizer.zero_grad()

Everything it binds is fixed once setup is done (the model, data, optimizer and scheduler objects,
the manager's hook callers, the DDP/FSDP wrapper); what changes during a run it reads from
``state`` (the step counter) or keeps in place (the train log's list of loss terms).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable

import torch

from engine import fsdp
from engine.errors import TrainingFailure

if TYPE_CHECKING:
    from engine.loop import Trainer

_NULL = contextlib.nullcontext()  # reusable: entering it costs nothing and keeps no state


def bind_step(trainer: Trainer) -> Callable[[], None]:
    """The function that trains one optimizer step of ``trainer``'s run (set up)."""
    state, manager, run = trainer.state, trainer.manager, trainer.recipe.run
    model, optimizer, scheduler = state.model, state.optimizer, state.scheduler
    train_batch, generator = state.data.train_batch, state.generator
    forward, loss_terms = manager.forward, manager.loss_terms
    # A hook nobody implements is not called at all: every function a step enters costs a small
    # model's step about a microsecond (docs/performance.md)
    aux_outputs, before_backward, after_backward, after_optimizer_step = (
        getattr(manager, hook) if manager.has(f"hookmix_{hook}") else None
        for hook in ("aux_outputs", "before_backward", "after_backward", "after_optimizer_step"))
    step_optimizer = optimizer.step if not manager.wraps("hookmix_optimizer_step") else (
        lambda: manager.optimizer_step(optimizer, state))
    records = state.train_log.terms  # appended to in place; TrainLog.read empties it in place
    accum, clip, params, gather, wrapper = run.grad_accum, run.grad_clip, trainer.params, trainer.gather, trainer.wrapper
    prepare = trainer._prepare if trainer.prepare else None  # shard, move, roll out (else: count only)
    count = trainer.throughput.count
    direct = wrapper is None and state.autocast_dtype is None  # fp32 in one process: no context to enter
    detach = torch.Tensor.detach

    def terms_of(batch: dict) -> dict[str, torch.Tensor]:
        outputs = forward(model, batch, state)
        if aux_outputs is not None:
            outputs = aux_outputs(model, batch, outputs, state)
        return loss_terms(batch, outputs, state)

    def micro_batch(batch: dict, step: int) -> None:
        if direct:  # terms_of(batch), written out: one function call less per micro-batch
            outputs = forward(model, batch, state)
            if aux_outputs is not None:
                outputs = aux_outputs(model, batch, outputs, state)
            terms = loss_terms(batch, outputs, state)
        else:
            with state.autocast():  # DDP: inside its forward, so that the backward reduces
                terms = terms_of(batch) if wrapper is None else wrapper(lambda: terms_of(batch))
        if not terms:
            raise TrainingFailure(f"step {step}: no plugin returned a loss term for this batch; "
                                  f"check the loss plugins' conditions")
        # recorded for the train metrics and the non-finite check, read at log time (engine/train_log.py)
        if len(terms) == 1:  # the usual case: the one term is the loss
            (name, loss), = terms.items()
            records.append((step, (name,), (loss.detach(),)))
        else:  # map, not a comprehension: no Python frame per micro-batch
            loss = sum(terms.values())
            records.append((step, tuple(terms), (*map(detach, terms.values()), loss.detach())))
        if accum > 1:
            loss = loss / accum
        if before_backward is not None:
            before_backward(loss, state)
        loss.backward()
        if after_backward is not None:
            after_backward(model, state)

    def train_step() -> None:
        if not model.training:  # train() walks every submodule: ~0.1 ms, too much per step on small models
            model.train()
        step = state.step + 1
        for micro in range(accum):
            state.micro = micro
            batch = train_batch(generator)
            if prepare is None:
                count(batch)
            else:
                batch = prepare(batch)
            if wrapper is None:
                micro_batch(batch, step)
            else:  # DDP/FSDP: gradients are reduced on the last micro-batch only
                with wrapper.no_sync() if micro < accum - 1 else _NULL:
                    micro_batch(batch, step)
        if clip > 0:
            state.log("train/grad_norm", fsdp.plain(torch.nn.utils.clip_grad_norm_(params, clip)))
        step_optimizer()
        state.step = step
        if after_optimizer_step is not None:
            if gather:  # a plugin needs whole matrices: post-step hooks see gathered weights (FSDP)
                with state.full_weights():
                    after_optimizer_step(model, optimizer, state)
            else:
                after_optimizer_step(model, optimizer, state)
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step
