"""One optimizer step of a run, written out once for what the run fixed at setup.

The step is the loop's hottest code: on a small model every Python call and branch in it shows in
the step time (docs/performance.md). Most of its branches are decided once per run (gradient
accumulation, the DDP/FSDP wrapper, bf16 autocast, clipping, a scheduler, which hooks some plugin
implements), so :func:`bind_step` writes the step's text with only the lines this run needs, the
way engine/dispatch.py writes the hook callers, and binds the model, data, optimizer and hook
callers as its names. The text is kept as ``trainer.train_step.source``. For a one-process fp32
run with one loss plugin and nothing else per step it reads::

    def train_step():
        if not model.training:
            model.train()
        step = state.step + 1
        batch = train_batch(generator)
        shapes.append(getattr(batch.get("input"), "shape", None))
        outputs = {"logits": model(batch["input"])}
        terms = loss_terms(batch, outputs, state)
        if len(terms) == 1:
            (name, loss), = terms.items()
            records.append((step, (name,), (loss.detach(),)))
        else:
            if not terms:
                no_loss_terms(step)
            loss = sum(terms.values())
            records.append((step, tuple(terms), (*map(detach, terms.values()), loss.detach())))
        loss.backward()
        optimizer.step()
        state.step = step
        optimizer.zero_grad(set_to_none=True)

and every line :func:`step_lines` can add is the step of the loop's pseudocode (engine/loop.py).
The records are each micro-batch's loss terms for the train metrics and the non-finite check, read
at log time (engine/train_log.py). Everything bound is fixed once setup is done; what changes
during a run is read from ``state`` (the step counter) or kept in place (the records and shapes lists).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from engine.errors import TrainingFailure
from engine.state import NULL_CONTEXT

if TYPE_CHECKING:
    from engine.loop import Trainer


def bind_step(trainer: Trainer) -> Callable[[], None]:
    """The function that trains one optimizer step of ``trainer``'s run (set up)."""
    state, manager, run = trainer.state, trainer.manager, trainer.recipe.run
    hooks = {
        hook: manager.has(f"hookmix_{hook}")
        for hook in ("aux_outputs", "before_backward", "after_backward", "after_optimizer_step")
    }
    if trainer.sharded is not None:  # FSDP: the gradient norm of sharded gradients is a DTensor
        from engine.distributed.fsdp import plain
    else:
        plain = _same
    names: dict[str, Any] = {
        "state": state,
        "model": state.model,
        "optimizer": state.optimizer,
        "scheduler": state.scheduler,
        "train_batch": state.data.train_batch,
        "generator": state.generator,
        "forward": manager.forward,
        "aux_outputs": manager.aux_outputs,
        "loss_terms": manager.loss_terms,
        "before_backward": manager.before_backward,
        "after_backward": manager.after_backward,
        "after_optimizer_step": manager.after_optimizer_step,
        "optimizer_step": manager.optimizer_step,
        "records": state.train_log.terms,  # appended to in place; TrainLog.read empties it in place
        "shapes": trainer.throughput.shapes,  # appended to in place; Throughput.metrics empties it in place
        "prepare": trainer._prepare,
        "wrapper": trainer.wrapper,
        "accum": run.grad_accum,
        "clip": run.grad_clip,
        "params": trainer.params,
        "plain": plain,
        "clip_grad_norm_": torch.nn.utils.clip_grad_norm_,
        "detach": torch.Tensor.detach,
        "_NULL": NULL_CONTEXT,
        "no_loss_terms": _no_loss_terms,
    }
    lines = step_lines(
        accum=run.grad_accum,
        prepare=trainer.prepare,
        wrapper=trainer.wrapper is not None,
        autocast=state.autocast_dtype is not None,
        clip=run.grad_clip > 0,
        gather=trainer.gather,
        scheduler=state.scheduler is not None,
        wrapped_step=manager.wraps("hookmix_optimizer_step"),
        forward_hook=manager.has("hookmix_forward"),
        **hooks,
    )
    source = "\n".join(lines) + "\n"
    exec(compile(source, "<hookmix step>", "exec"), names)  # noqa: S102 - text built from the fixed lines below
    step = names["train_step"]
    step.source = source
    return step


def step_lines(
    *,
    accum: int,
    prepare: bool,
    wrapper: bool,
    autocast: bool,
    clip: bool,
    gather: bool,
    scheduler: bool,
    wrapped_step: bool,
    forward_hook: bool,
    aux_outputs: bool,
    before_backward: bool,
    after_backward: bool,
    after_optimizer_step: bool,
) -> list[str]:
    """The text of ``train_step`` for a run with these settings (only fixed lines; no value is written in)."""
    forward = [
        "outputs = forward(model, batch, state)"
        if forward_hook  # a plugin's forward, or the body
        else 'outputs = {"logits": model(batch["input"])}',  # of the manager's default (_default_forward)
        *(["outputs = aux_outputs(model, batch, outputs, state)"] if aux_outputs else []),
        "terms = loss_terms(batch, outputs, state)",
    ]
    if wrapper:  # DDP: the forward inside its wrapper, so that the backward reduces
        forward = ["def terms_of():", *_indent(forward), "    return terms", "terms = wrapper(terms_of)"]
    if autocast:
        forward = ["with state.autocast():", *_indent(forward)]
    train = [
        *forward,
        "if len(terms) == 1:",
        "    (name, loss), = terms.items()",
        "    records.append((step, (name,), (loss.detach(),)))",
        "else:",
        "    if not terms:",
        "        no_loss_terms(step)",
        "    loss = sum(terms.values())",
        "    records.append((step, tuple(terms), (*map(detach, terms.values()), loss.detach())))",
        *(["loss = loss / accum"] if accum > 1 else []),
        *(["before_backward(loss, state)"] if before_backward else []),
        "loss.backward()",
        *(["after_backward(model, state)"] if after_backward else []),
    ]
    if wrapper and accum > 1:  # DDP/FSDP: gradients are reduced on the last micro-batch only
        train = ["with wrapper.no_sync() if micro < accum - 1 else _NULL:", *_indent(train)]
    micro_batch = [
        *(["state.micro = micro"] if accum > 1 else []),  # else always 0, as State starts it
        "batch = train_batch(generator)",
        # the input's shape for the throughput metrics (engine.perf.throughput.Throughput.count)
        "batch = prepare(batch)" if prepare else 'shapes.append(getattr(batch.get("input"), "shape", None))',
        *train,
    ]
    if accum > 1:
        micro_batch = ["for micro in range(accum):", *_indent(micro_batch)]
    post_step = ["after_optimizer_step(model, optimizer, state)"] if after_optimizer_step else []
    if post_step and gather:  # a plugin needs whole matrices: post-step hooks see gathered weights (FSDP)
        post_step = ["with state.full_weights():", *_indent(post_step)]
    body = [
        "if not model.training:",  # train() walks every submodule: ~0.1 ms, too much per step on small models
        "    model.train()",
        "step = state.step + 1",
        *micro_batch,
        *(["state.log('train/grad_norm', plain(clip_grad_norm_(params, clip)))"] if clip else []),
        "optimizer_step(optimizer, state)" if wrapped_step else "optimizer.step()",  # wrappers: plugins around it
        "state.step = step",
        *post_step,
        *(["scheduler.step()"] if scheduler else []),
        "optimizer.zero_grad(set_to_none=True)",
    ]
    return ["def train_step():", *_indent(body)]


def _same(value: Any) -> Any:
    return value


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


def _no_loss_terms(step: int) -> None:
    raise TrainingFailure(
        f"step {step}: no plugin returned a loss term for this batch; check the loss plugins' conditions"
    )
