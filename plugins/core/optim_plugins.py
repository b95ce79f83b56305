"""The core optimizer plugins: ``adamw`` (a no-decay group, warm-up + decay) and ``sgd`` (momentum, multi-step)."""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from engine import Plugin, field, hookimpl
from engine.validators import Rule, each, finite_non_negative, finite_positive, in_range, int_range

from .schedule import schedule_factor


@attrs.define
class AdamWConfig:
    lr: float = field(1e-3, "peak learning rate", validator=finite_positive)
    betas: list[float] = field(
        [0.9, 0.95],
        "Adam betas (beta1, beta2)",
        validator=each(in_range(0, 1, high_open=True), min_items=2, max_items=2),
    )
    eps: float = field(1e-8, "Adam epsilon", validator=finite_positive)
    weight_decay: float = field(0.0, "decoupled weight decay", validator=finite_non_negative)
    decay_1d: bool = field(False, "also decay 1-D parameters (biases, norm gains)")
    warmup_steps: int = field(0, "linear warm-up steps", validator=int_range(0, 2**62))
    schedule: Literal["cosine", "linear", "constant"] = field("cosine", "learning-rate decay after warm-up")
    min_lr_ratio: float = field(0.1, "final learning rate as a fraction of lr", validator=in_range(0, 1))


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
        # One fused kernel for all tensors on CUDA (no per-parameter launches). Not on CPU: there the fused
        # kernel rounds differently from the for-loop every CPU figure in docs/ was measured with.
        fused = state.device.type == "cuda"
        return torch.optim.AdamW(
            groups, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay, fused=fused
        )

    @hookimpl
    def hookmix_lr_scheduler(self, optimizer, state):
        c = self.config
        if c.schedule == "constant" and not c.warmup_steps:
            return None  # nothing to schedule: no per-step cost
        total = state.run.steps
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: schedule_factor(s, total, c.warmup_steps, c.schedule, c.min_lr_ratio)
        )


increasing_steps = Rule(
    "increasing positive step counts, e.g. [150, 180]",
    lambda m: all(s >= 1 for s in m) and all(b > a for a, b in zip(m, m[1:])),
)


@attrs.define
class SGDConfig:
    lr: float = field(
        0.05, "learning rate (spec §11.1: 0.05; 0.01 for ShuffleNet / MobileNet students)", validator=finite_positive
    )
    momentum: float = field(0.9, "momentum", validator=in_range(0, 1, high_open=True))
    weight_decay: float = field(
        5e-4, "L2 weight decay on every parameter (spec §11.1: 5e-4)", validator=finite_non_negative
    )
    nesterov: bool = field(False, "Nesterov momentum")
    milestones: list[int] = field(
        [], "steps after which the learning rate is multiplied by gamma (MultiStepLR)", validator=increasing_steps
    )
    gamma: float = field(0.1, "learning-rate factor at each milestone", validator=finite_positive)


class SGD(Plugin):
    """SGD with momentum and weight decay, and a multi-step learning-rate schedule (the CIFAR KD protocol)."""

    name = "sgd"
    Config = SGDConfig

    @hookimpl
    def hookmix_optimizer(self, param_groups, state):
        c = self.config
        groups = [{k: v for k, v in g.items() if k != "name"} for g in param_groups]
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov)

    @hookimpl
    def hookmix_lr_scheduler(self, optimizer, state):
        if not self.config.milestones:
            return None
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(self.config.milestones), self.config.gamma)
