"""hookmix-ema: keep an exponential moving average of the weights and evaluate with it."""

from __future__ import annotations

import attrs

from engine import Plugin, WeightConstraint, field, hookimpl
from engine.validators import in_range, int_range


@attrs.define
class EMAConfig:
    decay: float = field(
        0.99, "weight of the old average at each update", validator=in_range(0, 1, low_open=True, high_open=True)
    )
    start_step: int = field(0, "copy the weights (no averaging) until this step", validator=int_range(0, 2**62))
    eval_with_ema: bool = field(True, "evaluate with the averaged weights")


class EMA(Plugin):
    """Exponential moving average of the weights, evaluated in place of the raw weights."""

    name = "ema"
    Config = EMAConfig
    # average the weights after every constraint has rewritten them, whoever provides it
    after = (WeightConstraint, "spectral_weight_decay")
    recipes = "hookmix_ema.recipes"  # a package of *.toml recipes: `hookmix recipes` lists them
    # averages and swaps whole weights: under run.strategy=fsdp the engine refuses it before training
    # (its evaluation wrapper would load full tensors into row shards)
    needs_full_weights = True

    @hookimpl
    def hookmix_setup_model(self, model, state):
        # floating-point parameters and buffers; integer buffers (counters) are copied as is
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @hookimpl
    def hookmix_after_optimizer_step(self, model, state):
        decay = 0.0 if state.step <= self.config.start_step else self.config.decay
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                self.shadow[key].lerp_(value, 1.0 - decay)
            else:
                self.shadow[key].copy_(value)

    @hookimpl(wrapper=True)
    def hookmix_evaluate(self, model, state):
        if not self.config.eval_with_ema:
            return (yield)
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            metrics = yield
        finally:
            model.load_state_dict(raw)  # training continues from the raw weights
        return {**metrics, "ema/decay": self.config.decay}

    @hookimpl
    def hookmix_plugin_state(self, state):
        return {"weights": self.shadow}  # "weights": where open_run(...).weights("ema") finds them

    @hookimpl
    def hookmix_load_plugin_state(self, plugin_state, state):
        for key, value in plugin_state["weights"].items():
            self.shadow[key].copy_(value)
