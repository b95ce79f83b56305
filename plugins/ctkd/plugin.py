"""Engine plugin ``ctkd``: a global learnable distillation temperature, trained adversarially (CTKD).

The plugin owns ``theta`` (``state.add_module("ctkd", GlobalTemperature(...))``: in the default param group,
trained by the run's optimizer, checkpointed) and, in ``hookmix_aux_outputs``, adds
``outputs["kd_temperature"]``: the 0-d tensor ``T = t_start + t_end * sigmoid(GRL(theta, lambda))``. The
distillation losses ``kd``, ``dkd`` and ``nkd`` use it in place of their configured temperature when it is there
(:func:`plugins.kd.distill_inputs.temperature_of`); without ``ctkd`` they use their own float, untouched. The
reversal's factor ``lambda`` follows a cosine from ``lambda_start`` (0) to ``lambda_end`` (-1) over the first
``decay_steps`` steps; it depends on ``state.step`` only, so a resumed run computes the same values.
"""

from __future__ import annotations

import attrs

from engine import BadInput, Plugin, field, hookimpl
from engine.validators import bounded, finite_non_negative, finite_positive, int_range

RECIPES = "plugins.ctkd.recipes"
MODULE = "ctkd"  # the name of the plugin module: checkpointed under modules["ctkd.theta"]
#: the plugins that read outputs["kd_temperature"] (docs/distillation.md, "CTKD"): one must be enabled
READERS = ("kd", "dkd", "nkd")


@attrs.define
class CTKDConfig:
    t_start: float = field(
        1.0, "T = t_start + t_end * sigmoid(theta): the lowest temperature (official 1)", validator=finite_positive
    )
    t_end: float = field(
        20.0,
        "the span of the temperature above t_start (official 20); 0: T stays t_start (no learning)",
        validator=finite_non_negative,
    )
    init: float = field(1.0, "initial theta (official 1.0: T = 1 + 20 sigmoid(1) = 15.6)", validator=bounded)
    decay_steps: int = field(
        -1,
        "steps of the cosine ramp of lambda from lambda_start to lambda_end; -1: 1/24 of run.steps (the official "
        "10 of 240 epochs); 0: lambda_end from the first step",
        validator=int_range(-1, 2**62),
    )
    lambda_start: float = field(
        0.0,
        "the reversal factor at step 0 (official 0: the temperature starts untrained)",
        validator=bounded,
    )
    lambda_end: float = field(
        -1.0,
        "the reversal factor from decay_steps on (official -1: theta ascends the distillation loss)",
        validator=bounded,
    )


class CTKD(Plugin):
    """Curriculum temperature KD: a learned temperature `outputs["kd_temperature"]` for kd / dkd / nkd, via a GRL."""

    name = "ctkd"
    Config = CTKDConfig
    recipes = RECIPES

    def decay_steps(self, state) -> int:
        n = self.config.decay_steps
        return max(1, round(state.run.steps * 10 / 240)) if n == -1 else n

    def lambda_at(self, state) -> float:
        """The reversal factor of the step being taken, counted from 1 (the official loop counts epochs from 1)."""
        from plugins.ctkd.temperature import cosine_lambda

        c = self.config
        return cosine_lambda(state.step + 1, self.decay_steps(state), c.lambda_start, c.lambda_end)

    @hookimpl
    def hookmix_configure(self, state):
        # nothing else reads the temperature (dist_kd and uskd keep their own): a run that would train a
        # temperature nobody uses is a mistake to name before anything is built
        if not any(n.partition("@")[0] in READERS for n in state.plugin_names):
            raise BadInput(
                f"ctkd: no enabled loss reads the learned temperature (it is read by {', '.join(READERS)}); "
                f"enable one, e.g. run.plugins+=kd"
            )

    @hookimpl
    def hookmix_setup_model(self, state):
        from plugins.ctkd.temperature import GlobalTemperature

        c = self.config
        state.add_module(MODULE, GlobalTemperature(c.t_start, c.t_end, c.init))

    @hookimpl
    def hookmix_aux_outputs(self, state):
        from plugins.kd.distill_inputs import TEMPERATURE

        lam = self.lambda_at(state)
        temperature = state.modules[MODULE](lam)
        state.log("ctkd/temperature", temperature.detach())
        state.log("ctkd/lambda", lam)
        return {TEMPERATURE: temperature}
