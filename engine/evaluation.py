"""The engine's built-in evaluation: val/loss and val/accuracy over the data's validation batches.

It is the innermost call of the ``hookmix_evaluate`` wrapper hook (plugins such as an EMA wrap
it), then ``hookmix_eval_metrics`` adds the plugins' metrics.
"""

from __future__ import annotations

import torch

from engine.distributed import ddp
from engine.manager import Manager
from engine.state import State


def evaluate_model(model: torch.nn.Module, state: State, manager: Manager) -> dict:
    """The engine's inner evaluation: val/loss and val/accuracy, plus hookmix_eval_metrics.

    Distributed: each rank scores its contiguous share of every validation batch; the sums of
    losses, correct predictions and counts are all-reduced, so the numbers equal a 1-rank
    evaluation (accuracy exactly, the loss up to float summation order).
    """
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct predictions, scored targets
    with torch.no_grad():
        for batch in state.data.val_batches():
            batch = ddp.shard(batch, state.rank, state.world_size)
            if state.device.type != "cpu":
                batch = {k: v.to(state.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with state.autocast():
                logits = manager.forward(model, batch, state)["logits"]
            logits = logits.float().reshape(-1, logits.shape[-1])
            target = batch["target"].reshape(-1)
            keep = target != -100  # the ignore index of cross-entropy: padding, prompts
            logits, target = logits[keep], target[keep]
            if target.numel():
                sums += torch.stack(
                    [
                        torch.nn.functional.cross_entropy(logits, target, reduction="sum").double(),
                        (logits.argmax(-1) == target).sum().double(),
                        torch.tensor(target.numel(), dtype=torch.float64),
                    ]
                )
        sums = state.all_reduce_sum(sums)
        if sums[2] > 0:
            metrics["val/loss"] = (sums[0] / sums[2]).item()
            metrics["val/accuracy"] = (sums[1] / sums[2]).item()
        with state.full_weights(write_back=False):  # under FSDP: full matrices for the plugins' metrics
            metrics.update(manager.eval_metrics(model, state))
    model.train(was_training)
    return metrics
