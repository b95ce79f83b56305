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
"""

from __future__ import annotations

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

    def forward_and_loss_terms(batch: dict) -> dict:
        """One micro-batch's outputs (the forward, then the auxiliary outputs) and its loss terms."""
        outputs = forward(model, batch, state)
        if aux_outputs is not None:
            outputs = aux_outputs(model, batch, outputs, state)
        return loss_terms(batch, outputs, state)

    def inside_wrapper(batch: dict) -> dict:
        """DDP/FSDP: the forward runs inside the wrapper, so that the backward reduces."""
        return wrapper(lambda: forward_and_loss_terms(batch))

    compute_terms = forward_and_loss_terms if wrapper is None else inside_wrapper

    def micro_batch(batch: dict, step: int) -> None:
        """Forward (under autocast), the loss terms recorded, and backward, for one micro-batch."""
        if autocast:
            with state.autocast():
                terms = compute_terms(batch)
        else:
            terms = compute_terms(batch)
        if len(terms) == 1:
            ((name, loss),) = terms.items()
            records.append((step, (name,), (loss.detach(),)))
        else:
            if not terms:
                raise TrainingFailure(
                    f"step {step}: no plugin returned a loss term for this batch; check the loss plugins' conditions"
                )
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
        if not model.training:  # train() walks every submodule: too slow to call per step on small models
            model.train()
        step = state.step + 1
        for micro in range(accum):
            state.micro = micro
            batch = train_batch(generator)
            if prepare_batch is None:
                count(batch)
            else:  # this rank's rows, counted, on the device, rolled out
                batch = prepare_batch(batch)
            if wrapper is not None and micro < last_micro:  # accumulating under DDP/FSDP: reduce on the last only
                with wrapper.no_sync():
                    micro_batch(batch, step)
            else:
                micro_batch(batch, step)
        if clip > 0:
            state.log("train/grad_norm", as_plain(clip_grad_norm_(params, clip)))
        if optimizer_step is None:
            optimizer.step()
        else:  # the plugins' wrappers around optimizer.step()
            optimizer_step(optimizer, state)
        state.step = step
        if after_optimizer_step is not None:
            with state.full_weights() if gather else NULL_CONTEXT:
                after_optimizer_step(model, optimizer, state)
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


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
