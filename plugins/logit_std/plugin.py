"""Engine plugin ``logit_std``: logit standardization (Sun et al., CVPR 2024) scoped to distillation consumers.

Docs: ``docs/distillation.md`` (logit_std); the transform is :func:`plugins.logit_std.transform.
standardize_logits`. It implements ``hookmix_transform_logits``, which the engine calls only when a loss plugin
asks ``state.logits(logits, role=..., consumer=..., kind=...)``: by default it standardizes what consumers of
kind ``"distillation"`` see (kd, dkd, nkd, uskd), each role (student, teacher) with its own per-row statistics,
and returns ``None`` (unchanged) for everything else, so ``cross_entropy`` (kind ``"supervised"``) keeps the
raw logits.
"""

from __future__ import annotations

import attrs

from engine import BadInput, Plugin, field, hookimpl, unknown_name_message
from engine.validators import Rule, each, finite_positive, subset_of

ROLES = ("student", "teacher")
DISTILLATION = "distillation"  # the consumer kind of the distillation loss terms
#: Capabilities of the plugins that read logits of kind "distillation" (kd, dkd, nkd; uskd distills from itself).
CONSUMER_CAPABILITIES = ("loss:distillation", "loss:self_distillation")
non_empty_name = Rule("a non-empty name", lambda v: isinstance(v, str) and bool(v.strip()))


@attrs.define
class LogitStdConfig:
    kinds: list[str] = field(
        ["distillation"],
        "consumer kinds whose logits are standardized (spec §9.2: the distillation terms only; CE keeps raw logits)",
        validator=each(non_empty_name, min_items=1),
    )
    consumers: list[str] = field(
        [], "restrict to these consumer plugins (empty: every consumer of those kinds)", validator=each(non_empty_name)
    )
    roles: list[str] = field(
        ["student", "teacher"], "roles standardized (spec §9.1: both, separately)", validator=subset_of(*ROLES)
    )
    eps: float = field(1e-7, "added to the std, not under the square root (official code)", validator=finite_positive)
    unbiased: bool = field(
        True, "Bessel-corrected std, divides by C-1 like Tensor.std (official code); false: population std"
    )
    base_temperature: float = field(
        1.0,
        "divide the z-scores by this; keep 1 and give the base temperature "
        "(2 on CIFAR) to the loss as its temperature (it then supplies tau^2)",
        validator=finite_positive,
    )
    log_std: bool = field(
        True,
        "log the mean per-row std of each role (logit_std/std_<role>): the effective temperature is temperature x std",
    )


class LogitStd(Plugin):
    """Logit standardization: per-row z-scores (Bessel std + eps) of the logits distillation consumers see."""

    name = "logit_std"
    Config = LogitStdConfig
    multi_instance = True  # e.g. logit_std@a with consumers ["kd@a"]: its metrics are logit_std@a/std_<role>

    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        if set(c.kinds) == {DISTILLATION} and not any(state.provider(cap) for cap in CONSUMER_CAPABILITIES):
            # standardizing logits nobody distills from changes nothing: the user forgot the loss term
            raise BadInput(
                "logit_std is enabled but no distillation loss consumes its logits (no plugin provides "
                "'loss:distillation'); add one, e.g. run.plugins+=kd (with a teacher), or remove logit_std"
            )
        for consumer in c.consumers:
            if consumer not in state.plugin_names:
                raise BadInput(
                    unknown_name_message(
                        f"plugins.{self.name}.consumers entry",
                        consumer,
                        sorted(state.plugin_names),
                        "it must be an enabled plugin",
                    )
                )

    @hookimpl
    def hookmix_transform_logits(self, logits, role, consumer, kind, state):
        from plugins.logit_std.transform import logit_std, standardize_logits

        c = self.config
        if kind not in c.kinds or role not in c.roles or (c.consumers and consumer not in c.consumers):
            return None
        if c.log_std:
            state.log(f"{self.name}/std_{role}", logit_std(logits.detach().float(), c.unbiased).mean())
        return standardize_logits(logits, c.eps, c.base_temperature, c.unbiased)
