"""Plugin API 1.1 from the outside: an installed third-party package (entry points, one module per plugin)
whose plugins use the four new parts of the contract together, through the public surface only: the
optimizer step's loss closure, a replaced default of an exclusive hook, two instances of one plugin, and
the differentiable gather. API 1.0 plugins in the same run keep working (the core plugins are 1.0)."""

from __future__ import annotations

import re

import torch

from engine.testing import train

torch.set_num_threads(1)

EXTRAGRAD = '''
    from engine import Plugin, hookimpl

    class LookAgain(Plugin):
        """Re-evaluates the step's loss through the closure before the optimizer steps (API 1.1)."""

        name = "look_again"
        api = ">=1.1,<2"

        @hookimpl(wrapper=True)
        def hookmix_optimizer_step(self, optimizer, state, closure):
            state.log("look_again/loss", closure())  # the same micro-batches, forward + backward again
            yield
'''

PROBE = '''
    import attrs
    from engine import Plugin, field, hookimpl

    @attrs.define
    class ProbeConfig:
        scale: float = field(1.0, "multiplies what is logged")

    class Probe(Plugin):
        """Observes each training micro-batch; enabled twice as probe@a and probe@b (API 1.1)."""

        name = "probe"
        api = ">=1.1,<2"
        multi_instance = True
        Config = ProbeConfig

        @hookimpl
        def hookmix_on_train_batch(self, batch, outputs, state):
            state.log(self.scoped("probe/logit_mean"), self.config.scale * outputs["logits"].float().mean())
'''

COUPLED = '''
    from engine import Plugin, hookimpl

    class BatchSpread(Plugin):
        """A loss term coupling the whole (global) batch: the variance of the logits over it (API 1.1)."""

        name = "batch_spread"
        api = ">=1.1,<2"

        @hookimpl
        def hookmix_loss_terms(self, batch, outputs, state):
            every_row = state.all_gather(outputs["logits"])  # all ranks' rows; gradients flow back
            return {"spread": 1e-3 * every_row.float().var(0).mean()}
'''

ADVANTAGES = '''
    import torch
    from engine import Plugin, hookimpl

    class RankAdvantages(Plugin):
        """Advantages from the rank of each reward in its group, in [-1, 1] (replaces grpo's default)."""

        name = "rank_advantages"
        api = ">=1.1,<2"

        @hookimpl
        def hookmix_advantages(self, rollouts, rewards, state):
            groups = rewards.detach().float().cpu().view(-1, rollouts["group_size"])
            ranks = groups.argsort(1).argsort(1).float()
            advantages = (2 * ranks / max(groups.shape[1] - 1, 1) - 1).flatten()
            state.log("rank_advantages/mean_abs", advantages.abs().mean())
            return advantages
'''


def _install(install_dist) -> None:
    install_dist(
        "hookmix-api11-demo",
        {
            "look_again": "hookmix_api11_look:LookAgain",
            "probe": "hookmix_api11_probe:Probe",
            "batch_spread": "hookmix_api11_spread:BatchSpread",
            "rank_advantages": "hookmix_api11_adv:RankAdvantages",
        },
        {
            "hookmix_api11_look": EXTRAGRAD,
            "hookmix_api11_probe": PROBE,
            "hookmix_api11_spread": COUPLED,
            "hookmix_api11_adv": ADVANTAGES,
        },
    )


def test_a_third_party_package_uses_the_closure_two_instances_and_the_gather(install_dist):
    _install(install_dist)
    config = {
        "mnist1d": {"num_train": 200, "num_test": 50, "batch_size": 25},
        "mlp": {"hidden": [16]},
        "probe@a": {"scale": 1.0},
        "probe@b": {"scale": 2.0},
    }
    plugins = ["mnist1d", "mlp", "adamw", "cross_entropy", "look_again", "probe@a", "probe@b", "batch_spread"]
    result = train(plugins, config=config, steps=2, threads=1, log_interval=1)
    first = result.metrics[0]
    assert first["probe/logit_mean@b"] == 2 * first["probe/logit_mean@a"]  # two instances, their own tables
    assert "look_again/loss" in first and "train/loss/spread" in first
    assert first["train/loss/spread"] > 0  # the gathered batch (one process: the batch itself)
    plan = result.trainer.stream.getvalue()
    assert re.search(r"^  probe@a +hookmix-api11-demo 0\.1", plan, flags=re.M)
    assert re.search(r"^  probe@b +hookmix-api11-demo 0\.1", plan, flags=re.M)


def test_a_third_party_package_replaces_grpos_default_advantages(install_dist):
    _install(install_dist)
    config = {
        "countdown": {"mode": "rl", "batch_size": 4, "val_problems": 0},
        "tiny_policy": {"d_model": 32, "n_layers": 1, "n_heads": 2},
        "grpo": {"group_size": 4, "think_cap": 8, "answer_cap": 8},
    }
    plugins = ["countdown", "tiny_policy", "countdown_reward", "format_reward", "adamw", "grpo", "rank_advantages"]
    result = train(plugins, config=config, steps=1, threads=1)
    plan = result.trainer.stream.getvalue()
    assert re.search(r"^  \* hookmix_advantages +rank_advantages \(replaces grpo's default\)$", plan, flags=re.M)
    assert "rank_advantages/mean_abs" in result.metrics[0]
