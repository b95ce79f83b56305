"""Validation of the enabled plugin set: exclusive providers, requires/conflicts, ordering, names."""

from __future__ import annotations

import io
import re

import pytest

from engine import BadInput, Plugin, PluginConflict, hookimpl
from engine.cli.main import main
from engine.config.registry import Registry
from engine.loop import Trainer
from engine.manager import order_plugins
from engine.testing import TOY, TOY_PLUGINS, make_recipe, train

# --- exclusive providers ------------------------------------------------------------------------


def test_two_data_plugins_conflict_naming_both():
    with pytest.raises(PluginConflict, match=r"plugins 'toy_data' and 'tinyshakespeare' both implement hookmix_data"):
        train([*TOY, "tinyshakespeare"], steps=1)


def test_two_optimizers_conflict_naming_both():
    with pytest.raises(PluginConflict, match=r"plugins 'toy_sgd' and 'adamw' both implement hookmix_optimizer"):
        train([*TOY, "adamw"], steps=1)


def test_exclusive_conflict_via_cli_exit_2_writes_nothing(capsys, one_error_line, tmp_path, tiny_gpt):
    out = tmp_path / "run"
    assert main(["train", "shakespeare-gpt", *tiny_gpt, "run.plugins+=mnist1d", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "'tinyshakespeare' and 'mnist1d' both implement hookmix_data" in line
    assert not out.exists()


# --- requires / conflicts / cycles ------------------------------------------------------------


class Needy(Plugin):
    """Needs a tutor."""

    name = "needy"
    requires = ("test_tutor",)


class TutorSource(Plugin):
    """Provides a tutor."""

    name = "tutor_source"
    provides = ("test_tutor",)


class Loner(Plugin):
    """Cannot run with the toy optimizer."""

    name = "loner"
    conflicts = ("toy_sgd",)


def _run(names: list[str], extra: dict[str, type[Plugin]], steps: int = 1, **run):
    registry = Registry({**TOY_PLUGINS, **extra})
    recipe, _ = make_recipe(names, steps=steps, registry=registry, **run)
    trainer = Trainer(recipe, registry, stream=io.StringIO())
    return trainer, trainer.run()


def test_missing_requirement_names_it_and_a_provider():
    with pytest.raises(PluginConflict) as exc:
        _run([*TOY, "needy"], {"needy": Needy, "tutor_source": TutorSource})
    assert str(exc.value) == (
        "plugin 'needy' requires 'test_tutor', which no enabled plugin provides; add 'tutor_source' to run.plugins"
    )
    _run([*TOY, "needy", "tutor_source"], {"needy": Needy, "tutor_source": TutorSource})  # satisfied


def test_conflicting_capability_names_both_plugins():
    with pytest.raises(
        PluginConflict,
        match=r"plugins 'loner' and 'toy_sgd' conflict \(loner declares "
        r"conflicts='toy_sgd'\)",
    ):
        _run([*TOY, "loner"], {"loner": Loner})


def _named(name: str, before=(), after=()) -> type[Plugin]:
    return type(
        name.title(),
        (Plugin,),
        {"name": name, "before": tuple(before), "after": tuple(after), "__doc__": f"plugin {name}"},
    )


def test_ordering_cycle_names_the_cycle():
    x, y = _named("x", before=["y"]), _named("y", before=["x"])
    with pytest.raises(PluginConflict, match=r"plugin ordering cycle: x -> y -> x; remove one"):
        order_plugins({"x": x(), "y": y()})


def test_ordering_cycle_found_when_another_plugin_hangs_off_it():
    # "a" only follows the cycle; the search must not start (and get stuck) there
    a, x, y = _named("a", after=["x"]), _named("x", before=["y"]), _named("y", before=["x"])
    with pytest.raises(PluginConflict, match=r"plugin ordering cycle: x -> y -> x"):
        order_plugins({"a": a(), "x": x(), "y": y()})
    p, q, r = _named("p", after=["r"]), _named("q", after=["p"]), _named("r", after=["q"])
    with pytest.raises(PluginConflict, match=r"plugin ordering cycle: p -> q -> r -> p"):
        order_plugins({"q": q(), "r": r(), "p": p()})


def test_order_is_topological_with_recipe_order_breaking_ties():
    plugins = {
        n: c()
        for n, c in {
            "late": _named("late", after=["early"]),
            "free": _named("free"),
            "early": _named("early"),
            "first": _named("first", before=["early"]),
            "ghost": _named("ghost", before=["not_enabled"]),
        }.items()
    }
    assert order_plugins(plugins) == ["free", "first", "early", "late", "ghost"]


CALLS: list[str] = []


def _appender(name: str, before=(), after=()) -> type[Plugin]:
    def after_step(self, model, state):
        CALLS.append(name)

    def step_wrapper(self, optimizer, state):
        CALLS.append(f"{name}:enter")
        result = yield
        CALLS.append(f"{name}:exit")
        return result

    return type(
        name.title(),
        (Plugin,),
        {
            "name": name,
            "before": tuple(before),
            "after": tuple(after),
            "__doc__": f"appends {name}",
            "hookmix_after_optimizer_step": hookimpl(after_step),
            "hookmix_optimizer_step": hookimpl(wrapper=True)(step_wrapper),
        },
    )


def test_before_after_order_is_the_plan_and_the_call_order():
    classes = {
        "late": _appender("late", after=["early"]),
        "early": _appender("early"),
        "first": _appender("first", before=["early"]),
    }
    CALLS.clear()
    trainer, _ = _run([*TOY, "late", "early", "first"], classes, steps=2)
    assert trainer.manager.order == [*TOY, "first", "early", "late"]
    plan = trainer.stream.getvalue()
    assert "hookmix_after_optimizer_step   first -> early -> late" in plan
    assert "~ hookmix_optimizer_step         first -> early -> late" in plan
    one_step = [
        "first:enter",
        "early:enter",
        "late:enter",
        "late:exit",
        "early:exit",
        "first:exit",
        "first",
        "early",
        "late",
    ]  # wrappers nest in plugin order; then the ordered fold
    assert CALLS == one_step * 2


# --- duplicate names --------------------------------------------------------------------------


def _term_plugin(name: str, term: str) -> type[Plugin]:
    def loss_terms(self, batch, outputs, state):
        return {term: outputs["logits"].pow(2).mean()}

    return type(name.title(), (Plugin,), {"name": name, "__doc__": "x", "hookmix_loss_terms": hookimpl(loss_terms)})


def _aux_plugin(name: str, key: str) -> type[Plugin]:
    def aux_outputs(self, model, batch, outputs, state):
        return {key: outputs["logits"].detach()}

    return type(name.title(), (Plugin,), {"name": name, "__doc__": "x", "hookmix_aux_outputs": hookimpl(aux_outputs)})


def test_duplicate_loss_term_names_both_plugins():
    with pytest.raises(PluginConflict, match=r"loss term 'reg' returned by both reg_a and reg_b"):
        train([*TOY, _term_plugin("reg_a", "reg"), _term_plugin("reg_b", "reg")], steps=1)
    with pytest.raises(PluginConflict, match=r"loss term 'toy_ce' returned by both toy_ce and shadow"):
        train([*TOY, _term_plugin("shadow", "toy_ce")], steps=1)


def test_duplicate_aux_output_keys_name_both_plugins():
    with pytest.raises(PluginConflict, match=r"output 'feat' returned by both aux_a and aux_b"):
        train([*TOY, _aux_plugin("aux_a", "feat"), _aux_plugin("aux_b", "feat")], steps=1)
    with pytest.raises(PluginConflict, match=r"output 'logits' returned by both the model outputs and aux_c"):
        train([*TOY, _aux_plugin("aux_c", "logits")], steps=1)
    result = train([*TOY, _aux_plugin("aux_a", "feat"), _aux_plugin("aux_b", "feat2")], steps=1)
    assert result.summary["steps"] == 1


# --- param groups -------------------------------------------------------------------------------


def _group_plugin(name: str, group: str) -> type[Plugin]:
    def param_groups(self, model, state):
        return [{"name": group, "params": [model[1].weight], "lr": 0.01}]

    return type(name.title(), (Plugin,), {"name": name, "__doc__": "x", "hookmix_param_groups": hookimpl(param_groups)})


def test_parameter_in_two_groups_names_parameter_groups_and_plugins():
    with pytest.raises(
        PluginConflict,
        match=r"parameter 1\.weight is in param group 'head_a' \(claim_a\) and "
        r"'head_b' \(claim_b\); a parameter may be in one group only",
    ):
        train([*TOY, _group_plugin("claim_a", "head_a"), _group_plugin("claim_b", "head_b")], steps=1)


def test_param_groups_are_merged_with_a_default_group():
    result = train([*TOY, _group_plugin("claim_a", "head_a")], steps=1)
    groups = result.state.optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.01, 0.1]
    assert groups[0]["params"] == [result.model[1].weight]
    n_params = sum(1 for _ in result.model.parameters())
    assert len(groups[1]["params"]) == n_params - 1
    assert all(p is not result.model[1].weight for p in groups[1]["params"])


# --- hook implementations are checked when the run is set up -----------------------------------


def _plugin(name: str, **hooks) -> type[Plugin]:
    return type(name.title(), (Plugin,), {"name": name, "__doc__": "x", **hooks})


@pytest.mark.parametrize(
    "plugin, expected",
    [
        (
            _plugin("typo", hookmix_los_terms=hookimpl(lambda self, batch: None)),
            r"plugin 'typo' .*is broken: method hookmix_los_terms is not a hook; did you mean hookmix_loss_terms\?",
        ),
        (
            _plugin("plain_eval", hookmix_evaluate=hookimpl(lambda self, model: {})),
            r"plugin 'plain_eval': hookmix_evaluate must be implemented with wrapper=True",
        ),
        (
            _plugin("wrapped_log", hookmix_on_log=hookimpl(wrapper=True)(lambda self, metrics: (yield))),
            r"plugin 'wrapped_log': hookmix_on_log must be implemented without wrapper=True",
        ),
        (
            _plugin("pushy", hookmix_on_log=hookimpl(tryfirst=True)(lambda self, metrics: None)),
            r"plugin 'pushy' uses tryfirst/trylast on hookmix_on_log; declare before/after",
        ),
        (
            _plugin("bad_args", hookmix_on_log=hookimpl(lambda self, metrics, nonsense: None)),
            r"plugin 'bad_args' has an invalid hook implementation",
        ),
    ],
)
def test_invalid_hook_implementations_are_bad_input(plugin, expected):
    with pytest.raises(BadInput, match=expected):
        train([*TOY, plugin], steps=1)


@pytest.mark.parametrize(
    "plugins, expected",
    [
        (["toy_model", "toy_sgd", "toy_ce"], r"no enabled plugin provides data \(hookmix_data\)"),
        (["toy_data", "toy_sgd", "toy_ce"], r"no enabled plugin provides a model \(hookmix_model\)"),
        (["toy_data", "toy_model", "toy_ce"], r"no enabled plugin provides an optimizer \(hookmix_optimizer\)"),
        (["toy_data", "toy_model", "toy_sgd"], r"no enabled plugin returns loss terms; add a loss plugin"),
    ],
)
def test_missing_required_provider_is_named(plugins, expected):
    with pytest.raises(BadInput, match=expected):
        train(plugins, steps=1)


def test_a_name_claimed_by_two_distributions_is_unusable(install_dist):
    install_dist("hookmix-impostor", {"adamw": "hookmix_impostor:AdamW"}, {"hookmix_impostor": ""})
    info = Registry().info("adamw")
    assert re.fullmatch(
        r"broken: name claimed by both (hookmix and hookmix-impostor|hookmix-impostor and hookmix); "
        r"uninstall one",
        info.status,
    ), info.status
    with pytest.raises(BadInput, match=r"plugin 'adamw' .* is broken: name claimed by both"):
        Registry().load("adamw")
