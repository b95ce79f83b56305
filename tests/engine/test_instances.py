"""Plugin instances (plugin API 1.1): one plugin enabled twice as NAME@LABEL, and moving a table to another name.

An instance has its own object, name, ``[plugins."NAME@LABEL"]`` table, loss-term and metric names and checkpoint
state; a plugin opts in with ``multi_instance = True``. ``from = "X"`` starts a table from X's (X's table dropped by
``run.plugins-=X`` included), and a table that ``-=`` drops and nothing takes is a note of the plan.
"""

from __future__ import annotations

import io
import re
import uuid

import attrs
import pytest

import engine
from engine import BadInput, Plugin, field, hookimpl
from engine.cli.main import main
from engine.config.recipe import apply_overrides, resolve
from engine.config.registry import Registry
from engine.loop import Trainer
from engine.manager import order_plugins
from engine.plugin import check_plugin_class
from engine.rundir.checkpoint import load_latest
from engine.rundir.directory import RunDir
from engine.testing import TOY, TOY_PLUGINS, assert_resumes_exactly, make_recipe, train


@attrs.define
class PenaltyConfig:
    weight: float = field(0.1, "weight of the penalty on the logits")


class Penalty(Plugin):
    """A logit penalty that may be enabled twice: its term, metric and state are named after the instance."""

    name = "penalty"
    Config = PenaltyConfig
    multi_instance = True

    def __init__(self):
        super().__init__()
        self.born_as = self.name  # the instance name is set before __init__ runs
        self.seen = 0

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        state.log(f"{self.name}/seen", self.seen)
        return {self.name: self.config.weight * outputs["logits"].pow(2).mean()}

    @hookimpl
    def hookmix_after_optimizer_step(self, state):
        self.seen += 1

    @hookimpl
    def hookmix_plugin_state(self, state):
        return {"seen": self.seen, "weight": self.config.weight}

    @hookimpl
    def hookmix_load_plugin_state(self, plugin_state, state):
        self.seen = plugin_state["seen"]


class NeedsPenalty(Plugin):
    """Requires the penalty plugin (any instance of it) and runs after every instance."""

    name = "needs_penalty"
    requires = ("penalty",)
    after = ("penalty",)


LOCAL = {**TOY_PLUGINS, "penalty": Penalty, "needs_penalty": NeedsPenalty}
TWO = {"penalty": {"weight": 0.1}, "penalty@big": {"weight": 0.2}}


def _trainer(names, config=None, steps=1, **run):
    recipe, registry = make_recipe(names, config, steps=steps, registry=Registry(LOCAL), **run)
    return Trainer(recipe, registry, stream=io.StringIO())


# --- two instances of one class ----------------------------------------------------------------------


def test_two_instances_are_two_objects_with_their_own_name_config_terms_and_metrics():
    result = train([*TOY, Penalty, "penalty@big"], config=TWO, steps=2)
    one, big = result.plugins["penalty"], result.plugins["penalty@big"]
    assert type(one) is type(big) is Penalty and one is not big
    assert (one.name, big.name, big.born_as, one.instance, big.instance) == (
        "penalty",
        "penalty@big",
        "penalty@big",
        "",
        "big",
    )
    assert (one.config.weight, big.config.weight) == (0.1, 0.2)
    first = result.metrics[0]
    assert first["train/loss/penalty@big"] == pytest.approx(2 * first["train/loss/penalty"], rel=1e-6)
    assert result.metrics[1]["penalty/seen"] == result.metrics[1]["penalty@big/seen"] == 1
    plan = result.trainer.stream.getvalue()
    assert re.search(r"^    hookmix_loss_terms +toy_ce -> penalty -> penalty@big$", plan, flags=re.M)
    assert re.search(r"^  penalty@big +<local> 0 +A logit penalty", plan, flags=re.M)


def test_each_instance_keeps_its_state_in_checkpoints_and_resumes_exactly(tmp_path):
    out = str(tmp_path / "run")
    train([*TOY, Penalty, "penalty@big"], config=TWO, steps=3, out=out)
    payload = load_latest(RunDir(out))
    assert payload["plugins"]["penalty"] == {"seen": 3, "weight": 0.1}
    assert payload["plugins"]["penalty@big"] == {"seen": 3, "weight": 0.2}
    assert set(payload["plugin_configs"]) >= {"penalty", "penalty@big"}
    assert_resumes_exactly([*TOY, Penalty, "penalty@big"], config=TWO, steps=6)
    resumed = train([*TOY, Penalty, "penalty@big"], config=TWO, steps=5, out=out, resume=True)
    by_step = {r["step"]: r for r in resumed.metrics if "penalty@big/seen" in r}
    assert resumed.plugins["penalty@big"].seen == 5 and by_step[4]["penalty@big/seen"] == 3  # restored at 3


def test_the_resolved_recipe_writes_and_reads_the_instance_table():
    recipe, registry = make_recipe([*TOY, "penalty@big"], {"penalty@big": {"weight": 0.3}}, registry=Registry(LOCAL))
    text = recipe.to_toml()
    assert '[plugins."penalty@big"]\nweight = 0.3\n' in text
    again = engine.load_recipe(recipe.to_dict(), registry=registry)
    assert again.plugin_configs["penalty@big"].weight == 0.3


def test_an_override_reaches_an_instance_table():
    raw = {"run": {"plugins": [*TOY, "penalty@big"]}}
    raw = apply_overrides(raw, ["plugins.penalty@big.weight=0.5"])
    assert resolve("r", raw, Registry(LOCAL)).plugin_configs["penalty@big"].weight == 0.5


def test_capabilities_name_every_instance_and_one_by_its_name():
    trainer = _trainer([*TOY, "needs_penalty", "penalty@big"])  # requires "penalty": the instance provides it
    trainer.run()
    state = trainer.state
    assert state.provider("penalty") is state.provider("penalty@big") is trainer.manager.plugins["penalty@big"]
    plugins = {n: LOCAL[n.partition("@")[0]]() for n in ("needs_penalty", "penalty@a", "penalty@b")}
    assert order_plugins(plugins) == ["penalty@a", "penalty@b", "needs_penalty"]  # after every instance


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "toy_ce@twice",
            r"'toy_ce@twice' would enable plugin 'toy_ce' a second time \(instance 'twice'\), but "
            r"toy_ce does not declare multi_instance = True; enable it once, as 'toy_ce'",
        ),
        ("penalty@", r"'penalty@' is not an instance name; write NAME@LABEL with a LABEL of letters, digits and _"),
        ("penalty@a-b", r"'penalty@a-b' is not an instance name"),
        ("penalty@a@b", r"'penalty@a@b' is not an instance name"),
        ("penalyt@big", r"unknown plugin 'penalyt'; did you mean 'penalty'\?"),
    ],
)
def test_a_bad_instance_name_is_bad_input(name, message):
    with pytest.raises(BadInput, match=message):
        make_recipe([*TOY, name], registry=Registry(LOCAL))


def test_a_table_for_an_instance_the_run_does_not_enable_names_the_fix():
    with pytest.raises(
        BadInput,
        match=r"\[plugins.penalty@big\] configures plugin 'penalty@big', which run.plugins "
        r"does not enable; enable it with run.plugins\+=penalty@big",
    ):
        make_recipe([*TOY, "penalty"], {"penalty@big": {"weight": 0.3}}, registry=Registry(LOCAL))


def test_a_class_named_with_the_separator_is_broken():
    odd = type("Odd", (Plugin,), {"name": "odd@one", "__doc__": "x"})
    with pytest.raises(TypeError, match="name 'odd@one' contains '@', which separates an instance label"):
        check_plugin_class(odd, "odd@one")
    with pytest.raises(TypeError, match="multi_instance must be True or False, got 'yes'"):
        check_plugin_class(type("Many", (Plugin,), {"name": "many", "multi_instance": "yes"}), "many")


def test_describe_shows_an_instance_and_refuses_one_of_a_single_instance_plugin(capsys, one_error_line):
    assert main(["describe", "teacher@large"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("teacher@large  (hookmix ") and "config [plugins.teacher@large]:" in out
    assert main(["describe", "teacher"]) == 0 and capsys.readouterr().out.startswith("teacher  (hookmix ")
    assert main(["describe", "adamw@fast"]) == 2
    assert "adamw does not declare multi_instance = True" in one_error_line(capsys.readouterr().err)


# --- moving a table: `from`, and the note when run.plugins-=X drops one -------------------------------


@attrs.define
class VariantConfig(PenaltyConfig):
    extra: int = field(0, "a key the penalty does not have")


class Variant(Penalty):
    """A variant of the penalty with one more key."""

    name = "variant"
    Config = VariantConfig
    multi_instance = False


LOCAL["variant"] = Variant


def _plan(names, config=None, overrides=()):
    raw = {"name": "r", "run": {"plugins": names, "steps": 1, "out": f"memory://hookmix-test-{uuid.uuid4().hex}"}}
    raw["plugins"] = dict(config or {})
    raw = apply_overrides(raw, list(overrides))
    recipe = resolve("r", raw, Registry(LOCAL))
    trainer = Trainer(recipe, Registry(LOCAL), stream=io.StringIO())
    trainer.run()
    return recipe, trainer.stream.getvalue()


def test_disabling_a_plugin_notes_the_dropped_keys_and_names_the_fix():
    recipe, plan = _plan(
        [*TOY, "penalty"], {"penalty": {"weight": 0.7}}, ["run.plugins-=penalty", "run.plugins+=variant"]
    )
    assert recipe.plugin_configs["variant"].weight == 0.1  # the default: the override dropped 0.7
    assert (
        "note: run.plugins-=penalty dropped the settings of [plugins.penalty] (weight); to give them to variant: "
        "plugins.variant.from=penalty"
    ) in plan
    _, plain = _plan([*TOY, "penalty"], overrides=["run.plugins-=penalty"])  # no table: nothing to say
    assert "note:" not in plain


def test_from_moves_a_dropped_table_to_the_plugin_that_replaces_it():
    recipe, plan = _plan(
        [*TOY, "penalty"],
        {"penalty": {"weight": 0.7}},
        ["run.plugins-=penalty", "run.plugins+=variant", "plugins.variant.from=penalty", "plugins.variant.extra=3"],
    )
    assert (recipe.plugin_configs["variant"].weight, recipe.plugin_configs["variant"].extra) == (0.7, 3)
    assert "note: [plugins.variant] takes weight from [plugins.penalty]" in plan
    assert "dropped" not in plan
    assert "from" not in recipe.to_toml()  # the resolved recipe holds the values, not the reference


def test_from_in_a_recipe_table_copies_the_keys_it_accepts_and_its_own_keys_win():
    config = {
        "variant": {"weight": 0.4, "extra": 2},
        "penalty@big": {"from": "variant"},
        "penalty@small": {"from": "penalty@big", "weight": 0.05},
    }
    recipe, plan = _plan([*TOY, "variant", "penalty@big", "penalty@small"], config)
    assert recipe.plugin_configs["penalty@big"].weight == 0.4
    assert recipe.plugin_configs["penalty@small"].weight == 0.05
    assert (
        "note: [plugins.penalty@big] takes weight from [plugins.variant]; not keys of penalty@big, left out: extra"
        in plan
    )


@pytest.mark.parametrize(
    "config, message",
    [
        ({"penalty": {"from": "variabt"}}, r"unknown plugin 'variabt'; did you mean 'variant'\?"),
        ({"penalty": {"from": 3}}, r"plugins.penalty.from must be a plugin name \(a string\), got 3"),
        (
            {"penalty": {"from": "penalty@big"}, "penalty@big": {"from": "penalty"}},
            r"plugins.penalty@big.from: the tables take each other's keys \(penalty -> penalty@big -> penalty\)",
        ),
    ],
)
def test_a_bad_from_is_bad_input(config, message):
    with pytest.raises(BadInput, match=message):
        make_recipe([*TOY, "penalty", "penalty@big"], config, registry=Registry(LOCAL))
