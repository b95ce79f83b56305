"""The ``sgd`` optimizer plugin: momentum SGD with a multi-step schedule (the CIFAR KD protocol)."""

from __future__ import annotations

import attrs
import torch

from engine import Plugin, field, hookimpl
from engine.validators import Rule, finite_non_negative, finite_positive, in_range

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
