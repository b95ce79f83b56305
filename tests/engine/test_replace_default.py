"""Replaceable defaults of exclusive hooks (plugin API 1.1), and names in conflicts/before/after nothing declares.

``grpo`` and ``soft_grpo`` declare ``default_hooks = ("hookmix_advantages",)``: an advantage estimator from
another package replaces their group advantages without subclassing them, and the plan says so. Two
implementations of an exclusive hook that are not defaults are still refused, naming both.
"""

from __future__ import annotations

import io
import re

import pytest
import torch

from engine import Plugin, PluginConflict, hookimpl
from engine.config.registry import Registry
from engine.loop import Trainer
from engine.manager import Manager
from engine.testing import TOY, TOY_PLUGINS, make_recipe, train

torch.set_num_threads(1)

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2}
RL_DATA = {"mode": "rl", "batch_size": 4, "val_problems": 0}
CAPS = {"group_size": 4, "think_cap": 8, "answer_cap": 8}
RL = ["countdown", "tiny_policy", "countdown_reward", "format_reward", "adamw"]


class ConstantAdvantage(Plugin):
    """A third-party advantage estimator: every rollout gets 0.5 (recorded, to show it is what trains)."""

    name = "constant_advantage"
    returned: list[torch.Tensor] = []

    @hookimpl
    def hookmix_advantages(self, rollouts, rewards, state):
        advantages = torch.full((rewards.shape[0],), 0.5)
        ConstantAdvantage.returned.append(advantages)
        return advantages


class AdvantageSpy(Plugin):
    """Records the advantages the loss terms see (a loss plugin that returns no term)."""

    name = "advantage_spy"
    seen: list[torch.Tensor] = []

    @hookimpl
    def hookmix_loss_terms(self, batch, state):
        if "advantages" in batch:
            AdvantageSpy.seen.append(batch["advantages"].detach().cpu())


@pytest.mark.parametrize("arm", ["grpo", "soft_grpo"])
def test_a_third_party_estimator_replaces_the_rl_plugins_default_advantages(arm):
    ConstantAdvantage.returned.clear()
    AdvantageSpy.seen.clear()
    config = {"countdown": RL_DATA, "tiny_policy": TINY, arm: CAPS}
    result = train([*RL, arm, ConstantAdvantage, AdvantageSpy], config=config, steps=1, threads=1)
    plan = result.trainer.stream.getvalue()
    assert re.search(rf"^  \* hookmix_advantages +constant_advantage \(replaces {arm}'s default\)$", plan, flags=re.M)
    assert result.trainer.manager.providers("hookmix_advantages") == ["constant_advantage"]
    assert len(ConstantAdvantage.returned) == 1 and torch.equal(AdvantageSpy.seen[0], ConstantAdvantage.returned[0])
    # the first PPO ratio is exactly 1, so the token-mean surrogate is -mean(advantage) = -0.5
    assert result.metrics[0]["train/loss/pg"] == -0.5
    plain = train([*RL, arm], config=config, steps=1, threads=1)  # without it: the group advantages
    assert plain.metrics[0]["train/loss/pg"] != -0.5
    assert re.search(rf"^  \* hookmix_advantages +{arm}$", plain.trainer.stream.getvalue(), flags=re.M)


PACKAGE = '''
    import torch
    from engine import Plugin, hookimpl

    class MeanBaseline(Plugin):
        """Dr. GRPO-style advantages: the reward minus its group mean, no std (a third-party package)."""

        name = "mean_baseline"

        @hookimpl
        def hookmix_advantages(self, rollouts, rewards, state):
            groups = rewards.detach().float().cpu().view(-1, rollouts["group_size"])
            advantages = (groups - groups.mean(1, keepdim=True)).flatten()
            state.log("mean_baseline/abs", advantages.abs().mean())
            return advantages
'''


def test_an_installed_package_replaces_the_default_through_its_entry_point(install_dist):
    install_dist(
        "hookmix-mean-baseline",
        {"mean_baseline": "hookmix_mean_baseline:MeanBaseline"},
        {"hookmix_mean_baseline": PACKAGE},
    )
    config = {"countdown": RL_DATA, "tiny_policy": TINY, "grpo": CAPS}
    result = train([*RL, "grpo", "mean_baseline"], config=config, steps=1, threads=1)
    plan = result.trainer.stream.getvalue()
    assert re.search(r"^  mean_baseline +hookmix-mean-baseline 0\.1 +Dr\. GRPO-style", plan, flags=re.M)
    assert re.search(r"^  \* hookmix_advantages +mean_baseline \(replaces grpo's default\)$", plan, flags=re.M)
    assert "mean_baseline/abs" in result.metrics[0]


# --- what is still refused, and the declaration's checks ---------------------------------------------


def _provider(name: str, hook: str = "hookmix_advantages", default: bool = False) -> type[Plugin]:
    def implementation(self, state):
        return None

    attributes = {"name": name, "__doc__": f"provides {hook}", hook: hookimpl(implementation)}
    if default:
        attributes["default_hooks"] = (hook,)
    return type(name.title(), (Plugin,), attributes)


def _manager(*classes: type[Plugin]) -> Manager:
    return Manager({c.name: c() for c in classes})


def test_two_explicit_providers_are_refused_naming_both_even_beside_a_default():
    default, a, b = _provider("builtin", default=True), _provider("est_a"), _provider("est_b")
    for classes in ((a, b), (default, a, b), (a, default, b)):
        with pytest.raises(PluginConflict, match=r"plugins 'est_a' and 'est_b' both implement hookmix_advantages"):
            _manager(*classes)
    with pytest.raises(PluginConflict, match=r"plugins 'builtin' and 'builtin2' both implement hookmix_advantages"):
        _manager(default, _provider("builtin2", default=True))  # two defaults, nothing to choose between them
    manager = _manager(default, a)
    assert manager.replaced == {"hookmix_advantages": ["builtin"]}
    assert manager.providers("hookmix_advantages") == ["est_a"]
    assert _manager(default).providers("hookmix_advantages") == ["builtin"]  # alone, the default runs


def test_a_default_data_plugin_yields_and_the_plan_says_so():
    data = type(
        "FallbackData", (TOY_PLUGINS["toy_data"],), {"name": "fallback_data", "default_hooks": ("hookmix_data",)}
    )
    registry = Registry({**TOY_PLUGINS, "fallback_data": data})
    recipe, _ = make_recipe(["fallback_data", *TOY], steps=1, registry=registry)
    trainer = Trainer(recipe, registry, stream=io.StringIO())
    trainer.run()
    assert re.search(
        r"^  \* hookmix_data +toy_data \(replaces fallback_data's default\)$", trainer.stream.getvalue(), flags=re.M
    )


@pytest.mark.parametrize(
    "attributes, reason",
    [
        (
            {"default_hooks": ("hookmix_loss_terms",)},
            "default_hooks lists hookmix_loss_terms, which is not an exclusive hook",
        ),
        (
            {"default_hooks": ("hookmix_advantges",)},
            "default_hooks lists hookmix_advantges, which is not an exclusive hook",
        ),
        ({"default_hooks": ("hookmix_data",)}, "default_hooks lists hookmix_data, which the plugin does not implement"),
        ({"default_hooks": "hookmix_data"}, "default_hooks must be a tuple of hook names"),
    ],
)
def test_a_wrong_default_hooks_declaration_breaks_that_plugin(attributes, reason):
    cls = type("Wrong", (Plugin,), {"name": "wrong", "__doc__": "x", **attributes})
    assert Registry({"wrong": cls}).info("wrong").error.startswith(reason)


def test_every_shipped_rl_plugin_marks_its_advantages_as_the_default():
    registry = Registry()
    for name in ("grpo", "soft_grpo"):
        assert registry.load(name).default_hooks == ("hookmix_advantages",)


# --- conflicts / before / after naming something nothing declares ------------------------------------


class Stale(Plugin):
    """Declares names nothing installed is or provides (the capability was renamed), and some that exist."""

    name = "stale"
    conflicts = ("loss:ce", "loss:distillation")
    before = ("toy_sgd", "spectral_hammer")
    after = ("teachr",)


def test_names_nothing_declares_are_warnings_of_the_plan_with_a_close_match():
    result = train([*TOY, Stale], steps=1)
    warnings = [line for line in result.trainer.stream.getvalue().splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: plugin 'stale' declares conflicts='loss:ce', which no installed plugin is or provides, "
        "so it does nothing",
        "warning: plugin 'stale' declares after='teachr', which no installed plugin is or provides, "
        "so it does nothing; did you mean 'teacher'?",
    ]  # loss:distillation (kd, not enabled), toy_sgd (enabled) and spectral_hammer (installed) exist
    assert result.trainer.manager.warnings == [w.removeprefix("warning: ") for w in warnings]
    assert not train(TOY, steps=1).trainer.manager.warnings
