"""The core optimizer plugin ``adamw``: AdamW with a no-decay group and a warm-up + decay schedule."""

from __future__ import annotations

import attrs
import torch

from engine import Plugin, field, hookimpl, one_of

from .schedule import schedule_factor


@attrs.define
class AdamWConfig:
    lr: float = field(1e-3, "peak learning rate")
    betas: list[float] = field([0.9, 0.95], "Adam betas")
    eps: float = field(1e-8, "Adam epsilon")
    weight_decay: float = field(0.0, "decoupled weight decay")
    decay_1d: bool = field(False, "also decay 1-D parameters (biases, norm gains)")
    warmup_steps: int = field(0, "linear warm-up steps")
    schedule: str = field("cosine", "cosine, linear or constant after warm-up", validator=one_of("cosine", "linear", "constant"))
    min_lr_ratio: float = field(0.1, "final learning rate as a fraction of lr")


class AdamW(Plugin):
    """AdamW with a no-decay group for 1-D parameters and a warm-up + cosine/linear schedule."""

    name = "adamw"
    Config = AdamWConfig

    @hookimpl
    def hookmix_param_groups(self, model, state):
        c = self.config
        if c.weight_decay == 0 or c.decay_1d:
            return None
        no_decay = [p for p in [*model.parameters(), *state.modules.parameters()] if p.requires_grad and p.ndim < 2]
        return [{"name": "no_decay", "params": no_decay, "weight_decay": 0.0}] if no_decay else None

    @hookimpl
    def hookmix_optimizer(self, param_groups, state):
        c = self.config
        groups = [{k: v for k, v in g.items() if k != "name"} for g in param_groups]
        return torch.optim.AdamW(groups, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)

    @hookimpl
    def hookmix_lr_scheduler(self, optimizer, state):
        c = self.config
        if c.schedule == "constant" and not c.warmup_steps:
            return None  # nothing to schedule: no per-step cost
        total = state.run.steps
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: schedule_factor(s, total, c.warmup_steps, c.schedule, c.min_lr_ratio))
