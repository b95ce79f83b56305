"""The distillation loss plugins ``kd`` (Hinton KD) and ``dkd`` (decoupled KD); losses in :mod:`plugins.kd.losses`.

They return named, weighted loss terms and read logits only through ``state.logits(..., kind="distillation")``
(:mod:`plugins.kd.distill_inputs`), so a transform such as ``logit_std`` reaches them while the supervised
``cross_entropy`` term keeps the raw logits.

Both may be enabled several times (plugin API 1.1 instances: ``kd@cnn``, ``kd@t2``). An instance names its terms
after itself (``kd@cnn``; ``tckd@cnn``, ``nckd@cnn``) and reads the teachers of its ``teachers`` key, by default
the teacher with its own label (``kd@cnn`` reads ``teacher@cnn``); several teachers: their logits averaged.
"""

from __future__ import annotations

from typing import Literal

import attrs

from engine import Plugin, field, hookimpl
from engine.validators import Rule, each, finite_non_negative, finite_positive, int_range

from .distill_inputs import TEACHER, check_teachers, default_teachers, distill_inputs, need_target, temperature_of

RECIPES = "plugins.kd.recipes"
teacher_name = Rule(
    f'"{TEACHER}" or "{TEACHER}@LABEL"',
    lambda v: isinstance(v, str) and (v == TEACHER or (v.startswith(f"{TEACHER}@") and len(v) > len(TEACHER) + 1)),
)
TEACHERS_HELP = (
    "the teacher instances this term distils from; several: their logits, each transformed for this "
    "consumer (logit_std), are averaged; []: the teacher with this instance's label (kd -> teacher, "
    "kd@x -> teacher@x)"
)


class _Distiller(Plugin):
    """What kd and dkd share: their teachers (the config's `teachers`, or the one with their label), checked early."""

    multi_instance = True  # kd@t2 and kd@t4, kd@cnn and kd@mlp: terms named after the instance

    def teachers(self) -> tuple[str, ...]:
        return tuple(self.config.teachers) or default_teachers(self)

    @hookimpl
    def hookmix_configure(self, state):
        check_teachers(self, self.teachers(), state)  # before any data or teacher is built


@attrs.define
class KDConfig:
    temperature: float = field(
        4.0,
        "softening temperature T (spec §5: T 4 CIFAR, 1 ImageNet; 2 with LS = its base temperature)",
        validator=finite_positive,
    )
    weight: float = field(
        0.9,
        "weight of the KD term (spec §5: 0.9 with CE 0.1 in the DKD paper; 9 with LS)",
        validator=finite_non_negative,
    )
    form: Literal["kl", "ce"] = field(
        "kl", "kl: T^2 KL(p_t||p_s), zero at identical logits; ce: T^2 CE(p_t, p_s) (same gradient)"
    )
    teachers: list[str] = field([], TEACHERS_HELP, validator=each(teacher_name))


class KD(_Distiller):
    """Hinton knowledge distillation: the loss term `kd` (`kd@x`) = weight * T^2 * KL(p_teacher(T) || p_student(T))."""

    name = "kd"
    Config = KDConfig
    provides = ("loss:distillation",)
    requires = ("teacher",)
    recipes = RECIPES

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        from plugins.kd.losses import kd_loss

        c = self.config
        student, teacher, _ = distill_inputs(self, batch, outputs, state, teachers=self.teachers())
        temperature = temperature_of(outputs, c.temperature)  # ctkd's learned one when it is enabled
        return {self.name: c.weight * kd_loss(student, teacher, temperature, form=c.form)}  # kd, or kd@x


@attrs.define
class DKDConfig:
    alpha: float = field(1.0, "weight of TCKD (spec §6: 1; 9 with LS = 1 x kd weight)", validator=finite_non_negative)
    beta: float = field(
        8.0, "weight of NCKD (spec §6: 8 CIFAR default, 2-6 some pairs; 72 with LS)", validator=finite_non_negative
    )
    temperature: float = field(
        4.0, "temperature T (spec §6: 4 CIFAR, 1 ImageNet; 2 with LS)", validator=finite_positive
    )
    warmup_steps: int = field(
        -1,
        "linear warm-up of both terms over this many steps, min(step/N, 1); -1: 1/12 "
        "of run.steps (mdistiller's 20 of 240 epochs); 0: none",
        validator=int_range(-1, 2**62),
    )
    teachers: list[str] = field([], TEACHERS_HELP, validator=each(teacher_name))


class DKD(_Distiller):
    """Decoupled KD: the terms `tckd` = alpha T^2 TCKD and `nckd` = beta T^2 NCKD (`tckd@x`...), with a warm-up."""

    name = "dkd"
    Config = DKDConfig
    provides = ("loss:distillation",)
    requires = ("teacher",)

    def warmup(self, state) -> int:
        n = self.config.warmup_steps
        return max(1, round(state.run.steps * 20 / 240)) if n == -1 else n

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        from plugins.kd.losses import dkd_loss, dkd_warmup_factor

        c = self.config
        student, teacher, target = distill_inputs(self, batch, outputs, state, teachers=self.teachers())
        target = need_target(self, target)
        # the step being taken, counted from 1 like mdistiller's epochs: the first step is already > 0
        factor = dkd_warmup_factor(state.step + 1, self.warmup(state))
        temperature = temperature_of(outputs, c.temperature)  # ctkd's learned one when it is enabled
        _, parts = dkd_loss(student, teacher, target, c.alpha, c.beta, temperature)
        state.log(f"{self.name}/warmup", factor)  # dkd/warmup, or dkd@x/warmup
        return {self.scoped(k): factor * parts[k] for k in ("tckd", "nckd")}
