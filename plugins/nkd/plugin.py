"""Engine plugins ``nkd`` (normalized KD, with a teacher) and ``uskd`` (universal self-KD, no teacher).

Docs: ``docs/distillation.md`` (nkd, uskd); losses in :mod:`plugins.nkd.losses`. Both read the final logits
through ``state.logits(..., kind="distillation")`` (see :mod:`plugins.kd.distill_inputs`).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from engine import BadInput, Plugin, field, hookimpl, unknown_name_message
from engine.validators import finite_non_negative, finite_positive, in_range
from plugins.kd.distill_inputs import distill_inputs, need_target, sample_batch, student_logits_of, temperature_of

RECIPES = "plugins.kd.recipes"  # the distillation recipes ship with the kd package


@attrs.define
class NKDConfig:
    temperature: float = field(
        1.0,
        "temperature of the non-target term (spec §7: 1 ImageNet CNN / DeiT; 3 in "
        "cls_KD's CIFAR-100 R34->R18 config); the target term is always at 1",
        validator=finite_positive,
    )
    gamma: float = field(
        1.5,
        "weight of the non-target term (spec §7: 1.5 ImageNet CNN, 1.0 DeiT, 3.5 CIFAR R34->R18)",
        validator=finite_non_negative,
    )
    weight: float = field(1.0, "extra factor on both NKD terms (1 in the official code)", validator=finite_non_negative)


class NKD(Plugin):
    """Normalized KD: the terms `nkd_target` (-p^t_t log p^s_t) and `nkd_non_target` (gamma T^2 normalized CE)."""

    name = "nkd"
    Config = NKDConfig
    provides = ("loss:distillation",)
    requires = ("teacher",)
    recipes = RECIPES

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        from plugins.nkd.losses import nkd_loss

        c = self.config
        student, teacher, target = distill_inputs(self, batch, outputs, state)
        temperature = temperature_of(outputs, c.temperature)  # ctkd's learned one when it is enabled
        _, parts = nkd_loss(student, teacher, need_target(self, target), temperature, c.gamma)
        return {name: c.weight * term for name, term in parts.items()}


@attrs.define
class USKDConfig:
    feature: str = field(
        "features",
        "submodule of the model whose output feeds the weak head (e.g. features for "
        "mlp / cnn1d, ln_f for gpt, flatten or layer3 for resnet)",
    )
    alpha: float = field(
        1.0, "weight of the soft target term (spec §8: 1 ImageNet, 0.1 CIFAR-100)", validator=finite_non_negative
    )
    beta: float = field(0.1, "weight of the Zipf non-target term (spec §8: 0.1)", validator=finite_non_negative)
    mu: float = field(
        0.005,
        "weight of the weak head's label-smoothed CE (spec §8: 0.005 ImageNet, 0.1 CIFAR-100)",
        validator=finite_non_negative,
    )
    rank: Literal["prob", "logprob"] = field(
        "prob",
        "prob: rank by both heads (pre-2023-07-17 code, default); logprob: current code (ranks by the final logits)",
    )
    label_smoothing: float = field(
        0.1, "label smoothing of the weak head's CE (spec §8: 0.1)", validator=in_range(0, 1)
    )


class USKD(Plugin):
    """Universal self-KD (no teacher): `uskd_target`, `uskd_non_target` (Zipf labels) and the weak head's `uskd_weak`.

    The weak head is a linear layer on the output of the submodule ``feature``, captured with a forward hook.
    It is a plugin-owned module (``state.add_module("uskd_head", ...)``): trained, in the default param
    group, checkpointed. It gets gradient from ``uskd_weak`` only (the rank path runs without gradient).
    """

    name = "uskd"
    provides = ("loss:self_distillation",)  # reads distillation-kind logits: logit_std has a consumer
    Config = USKDConfig
    recipes = RECIPES

    def __init__(self) -> None:
        super().__init__()
        self._feature: torch.Tensor | None = None
        self._handle = None

    def _capture(self, module, inputs, output):
        self._feature = output[0] if isinstance(output, (tuple, list)) else output

    @staticmethod
    def flatten_feature(feature: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(N, d) rows aligned with the flattened logits: per position for (B, T, d) language-model features,
        channel-first maps (B, d, ...) are averaged over their spatial axes (the official neck's pooling)."""
        if logits.dim() == 3 and feature.shape[:2] == logits.shape[:2]:
            return feature.reshape(-1, feature.shape[-1])
        if feature.dim() > 2:
            return feature.flatten(2).mean(-1)
        return feature

    @hookimpl
    def hookmix_setup_model(self, model, state):
        from plugins.nkd.losses import USKDHead

        names = [n for n, _ in model.named_modules() if n]
        if self.config.feature not in names:
            raise BadInput(
                unknown_name_message(
                    "plugins.uskd.feature", self.config.feature, names, "name a submodule of the model"
                )
            )
        self._handle = model.get_submodule(self.config.feature).register_forward_hook(self._capture)
        logits = student_logits_of(model, sample_batch(state), state)  # fills self._feature: its width
        if self._feature is None:
            raise BadInput(
                f"plugins.uskd.feature={self.config.feature!r} did not run in the model's forward; "
                f"name a submodule the forward uses"
            )
        width = self.flatten_feature(self._feature, logits).shape[-1]
        if logits.shape[-1] < 3:
            raise BadInput("uskd needs at least 3 classes (it ranks the non-target classes)")
        self._feature = None
        state.add_module("uskd_head", USKDHead(width, logits.shape[-1]))

    @hookimpl
    def hookmix_aux_outputs(self, state):
        feature, self._feature = self._feature, None
        if feature is None:
            raise BadInput(f"uskd: the feature {self.config.feature!r} was not computed in this forward")
        return {"uskd_feature": feature}

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        from plugins.nkd.losses import uskd_loss

        c = self.config
        student, _, target = distill_inputs(self, batch, outputs, state, teacher=False)
        target = need_target(self, target)
        feature = self.flatten_feature(outputs["uskd_feature"], outputs["logits"])
        if "target" in batch:
            keep = batch["target"].reshape(-1) >= 0
            if not bool(keep.all()):
                feature = feature[keep]
        weak = state.modules["uskd_head"](feature)
        _, parts = uskd_loss(student, weak, target, c.alpha, c.beta, c.mu, c.rank, c.label_smoothing)
        return parts
