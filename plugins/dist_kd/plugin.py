"""Engine plugin ``dist_kd``: DIST on the global batch; the loss is :func:`plugins.dist_kd.losses.dist_loss`.

It reads logits like the other distillation losses (``state.logits(..., kind="distillation")`` through
:mod:`plugins.kd.distill_inputs`), so ``logit_std`` standardises what it sees. Its intra-class term correlates
the samples of a batch, so under DDP each rank gathers every rank's logits (``state.all_gather``, plugin API 1.1)
and computes the loss of the global batch, as one process does; the gather's backward hands each rank the
gradient of its own rows, and DDP's average of the ranks' gradients is then the 1-process gradient (docs/
distributed.md, "Batch-coupled losses").
"""

from __future__ import annotations

import attrs
import torch

from engine import Plugin, field, hookimpl
from engine.validators import finite_non_negative, finite_positive
from plugins.kd.distill_inputs import distill_inputs

RECIPES = "plugins.dist_kd.recipes"


@attrs.define
class DISTConfig:
    beta: float = field(1.0, "weight of the inter-class relation (official default 1)", validator=finite_non_negative)
    gamma: float = field(1.0, "weight of the intra-class relation (official default 1)", validator=finite_non_negative)
    temperature: float = field(
        1.0,
        "softmax temperature tau; the loss carries tau^2 (official: 1 ImageNet, 4 CIFAR)",
        validator=finite_positive,
    )
    weight: float = field(
        1.0, "factor on both terms, the official KD loss weight (1 ImageNet, 2 CIFAR)", validator=finite_non_negative
    )


class DISTKD(Plugin):
    """DIST: the terms `dist_inter` (per-sample class correlation) and `dist_intra` (per-class batch correlation)."""

    name = "dist_kd"
    Config = DISTConfig
    provides = ("loss:distillation",)
    requires = ("teacher",)
    recipes = RECIPES

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        from plugins.dist_kd.losses import dist_loss

        c = self.config
        student, teacher, _ = distill_inputs(self, batch, outputs, state)
        classes = student.shape[1]
        # one collective for both: student rows carry gradients, the teacher's none (it is frozen)
        both = torch.cat([student.float(), teacher.detach().float()], dim=1)
        both = state.all_gather(both)
        _, parts = dist_loss(both[:, :classes], both[:, classes:], c.beta, c.gamma, c.temperature)
        return {"dist_inter": c.weight * parts["inter"], "dist_intra": c.weight * parts["intra"]}
