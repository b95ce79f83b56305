"""Running recipes from Python (docs/python.md): engine.train, Trainer.from_recipe, load_recipe, the Result,
plugin classes passed in code, and the bad-input promise (one line, nothing written)."""

from __future__ import annotations

import io
import os
import pathlib
import re
import subprocess
import sys
from typing import Any

import attrs
import pytest
import torch

import engine
from engine import BadInput, Plugin, Trainer, field, hookimpl
from engine.testing import TOY, TOY_PLUGINS
from engine.testing import train as kit_train

DOC = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "python.md").read_text()
TOY_CLASSES = list(TOY_PLUGINS.values())


class Probe(Plugin):
    """Logs a constant each step: shows that it ran."""

    name = "probe"

    @hookimpl
    def hookmix_after_optimizer_step(self, state):
        state.log("probe/ran", 1.0)


def _tables(**run) -> dict:
    return {"run": {"plugins": list(TOY), "steps": 3, "log_interval": 1, **run}}


def _quiet(**options):
    return {"stream": io.StringIO(), **options}


# --- the docs' examples run as written ------------------------------------------------------------


def test_the_python_md_examples_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # their run directories land in ./runs
    blocks = re.findall(r"```python\n(.*?)```", DOC, flags=re.S)
    notebook = next(b for b in blocks if "class ZLoss" in b)
    stepwise = next(b for b in blocks if "Trainer.from_recipe" in b)
    refused = next(b for b in blocks if "except engine.BadInput" in b)
    namespace: dict = {}
    exec(compile(notebook, "docs/python.md", "exec"), namespace)
    result = namespace["result"]
    assert result.recipe.run.plugins == ["mnist1d", "mlp", "adamw", "cross_entropy", "zloss"]
    assert result.metrics[-2]["train/loss/zloss"] > 0 and 0 < result.summary["metrics"]["val/accuracy"] <= 1
    assert result.run_dir.startswith("runs/mnist1d-mlp-") and os.path.exists(f"{result.run_dir}/summary.json")
    exec(compile(stepwise, "docs/python.md", "exec"), namespace)
    assert namespace["summary"]["steps"] == 100 and namespace["state"].step == 100
    assert "train/loss/zloss" in namespace["summary"]["metrics"] and os.path.exists("runs/by-hand/summary.json")
    exec(compile(refused, "docs/python.md", "exec"), namespace)
    assert "steps=0 must be an integer" in capsys.readouterr().out and not os.path.exists("runs/x")


# --- what engine.train gives back -----------------------------------------------------------------


def test_train_returns_summary_metrics_model_and_run_directory(tmp_path):
    out = str(tmp_path / "run")
    result = engine.train(_tables(), plugins=[*TOY_CLASSES, Probe], out=out, **_quiet())
    assert isinstance(result, engine.Result) and result.run_dir == out
    assert result.summary["steps"] == 3 and [r["step"] for r in result.metrics if "train/loss" in r] == [1, 2, 3]
    assert result.metrics[-2]["probe/ran"] == 1.0 and "perf/samples_per_second" in result.metrics[0]
    assert result.model is result.state.model and result.trainer.state is result.state
    assert sorted(result.plugins) == sorted([*TOY, "probe"])
    assert (tmp_path / "run" / "recipe.toml").exists() and (tmp_path / "run" / "summary.json").exists()
    kit = kit_train([*TOY, Probe], steps=3)  # the test kit runs through the same call: same numbers
    assert kit.metrics == engine.testing.without_timings(result.metrics)
    for key, value in kit.model.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[key])


def test_a_recipe_from_toml_a_path_object_or_the_resolved_dict_trains_alike(tmp_path):
    toml = tmp_path / "toy.toml"
    toml.write_text('[run]\nplugins = ["toy_data", "toy_model", "toy_sgd", "toy_ce"]\nsteps = 2\nlog_interval = 1\n')
    runs = [
        engine.train(str(toml), plugins=TOY_CLASSES, out=str(tmp_path / "a"), **_quiet()),
        engine.train(toml, plugins=TOY_CLASSES, out=str(tmp_path / "b"), **_quiet()),
    ]
    again = runs[0].recipe.to_dict()
    runs.append(engine.train(again, plugins=TOY_CLASSES, out=str(tmp_path / "c"), **_quiet()))
    assert runs[0].recipe.name == "toy" and runs[2].recipe.name == "toy"
    metrics = [engine.testing.without_timings(r.metrics) for r in runs]
    assert metrics[0] == metrics[1] == metrics[2]


def test_overrides_apply_in_order_and_out_wins_over_run_out(tmp_path):
    recipe = engine.load_recipe(
        _tables(out="elsewhere"),
        "run.steps=7",
        "plugins.toy_sgd.lr=0.5",
        "run.steps=9",
        plugins=TOY_CLASSES,
        out=str(tmp_path / "o"),
    )
    assert recipe.run.steps == 9 and recipe.plugin_configs["toy_sgd"].lr == 0.5
    assert recipe.run.out == str(tmp_path / "o") and not (tmp_path / "o").exists()


# --- plugin classes passed in code ----------------------------------------------------------------


def test_a_class_passed_in_code_is_enabled_and_a_listed_one_keeps_its_place():
    appended = engine.load_recipe(_tables(), plugins=[*TOY_CLASSES, Probe])
    assert appended.run.plugins == [*TOY, "probe"]
    listed = engine.load_recipe(_tables(plugins=["probe", *TOY]), plugins=[Probe, *TOY_CLASSES])
    assert listed.run.plugins == ["probe", *TOY]
    only_classes = engine.load_recipe({"run": {"steps": 2}}, plugins=TOY_CLASSES)  # enabling is passing
    assert only_classes.run.plugins == TOY and only_classes.name == "recipe"
    dropped = engine.load_recipe(_tables(plugins=[*TOY, "probe"]), "run.plugins-=probe", plugins=[*TOY_CLASSES, Probe])
    assert dropped.run.plugins == [*TOY, "probe"]  # passing the class enables it, after the overrides


def test_a_class_shadows_an_installed_plugin_of_its_name():
    class MyCE(Plugin):
        """A cross_entropy of the notebook's own."""

        name = "cross_entropy"

    recipe = engine.load_recipe("mnist1d-mlp", plugins=[MyCE])
    assert recipe.run.plugins == ["mnist1d", "mlp", "adamw", "cross_entropy"]
    assert recipe.plugin_configs["cross_entropy"] is None  # MyCE has no Config; the installed one has


# --- step by step ---------------------------------------------------------------------------------


def test_from_recipe_steps_then_runs_to_the_end_like_train(tmp_path):
    trainer = Trainer.from_recipe(_tables(steps=4), plugins=TOY_CLASSES, out=str(tmp_path / "s"), **_quiet())
    assert trainer.state is None and not (tmp_path / "s").exists()  # nothing built or written yet
    state = trainer.setup()
    trainer.advance()
    trainer.advance()
    assert state.step == 2
    summary = trainer.run()
    straight = engine.train(_tables(steps=4), plugins=TOY_CLASSES, out=str(tmp_path / "t"), **_quiet())
    assert summary["steps"] == 4 and summary["metrics"] == straight.summary["metrics"] | {
        k: v for k, v in summary["metrics"].items() if k.startswith("perf/")
    }


def test_stop_and_resume_in_out_or_from_the_run_directory_equal_a_straight_run(tmp_path):
    straight = engine.train(_tables(steps=4), plugins=TOY_CLASSES, out=str(tmp_path / "straight"), **_quiet())
    out = str(tmp_path / "split")
    engine.train(_tables(steps=4), plugins=TOY_CLASSES, out=out, stop_at=2, **_quiet())
    resumed = engine.train(_tables(steps=4), plugins=TOY_CLASSES, out=out, resume=True, **_quiet())
    assert engine.testing.without_timings(resumed.metrics) == engine.testing.without_timings(straight.metrics)
    extended = engine.train(None, "run.steps=6", resume=out, registry=engine.Registry(TOY_PLUGINS), **_quiet())
    assert extended.summary["steps"] == 6 and extended.run_dir == out


# --- bad input: one line, nothing written ---------------------------------------------------------


class WrongAPI(Plugin):
    """Declares an API range this engine does not implement."""

    name = "wrong_api"
    api = ">=9"


@attrs.define
class LooseConfig:
    value: Any = field(0, "anything at all (a Python object passes structuring)")


class Loose(Plugin):
    """Takes any value in its config."""

    name = "loose"
    Config = LooseConfig


class RefuseAtStart(Plugin):
    """Refuses the run once its directory is claimed (hookmix_on_train_start)."""

    name = "refuse_at_start"

    @hookimpl
    def hookmix_on_train_start(self, state):
        raise BadInput("refuse_at_start: refused; remove it from run.plugins")


BAD = {  # case: (positional arguments, keyword arguments (plugins default to the toy ones), the message)
    "a bad override value": ((_tables(), "run.steps=0"), {}, r"steps"),
    "an override that is not KEY=VALUE": ((_tables(), "run.steps"), {}, r"is not KEY=VALUE"),
    "an override that is not a string": ((_tables(), 5), {}, r"is not a KEY=VALUE string"),
    "an unknown plugin": ((_tables(), "run.plugins+=nonesuch"), {}, r"^unknown plugin 'nonesuch'"),
    "an unknown recipe": (("no-such-recipe",), {}, r"^unknown recipe 'no-such-recipe'"),
    "a run table that is not a table": (({"run": 5},), {}, r"^run must be a table"),
    "an unknown top-level key": (({**_tables(), "rnu": {}},), {}, r"^unknown top-level key 'rnu'"),
    "a config key the plugin lacks": ((_tables(), "plugins.toy_sgd.lrr=1"), {}, r"unknown key plugins\.toy_sgd\.lrr"),
    "a value TOML cannot write": (
        ({**_tables(plugins=[*TOY, "loose"]), "plugins": {"loose": {"value": {1, 2}}}},),
        {"plugins": [*TOY_CLASSES, Loose]},
        r"a value TOML cannot \(Object of type 'set'",
    ),
    "no recipe": ((None,), {}, r"^no recipe given"),
    "a recipe that is a number": ((42,), {}, r"^recipe must be a shipped recipe name"),
    "a plugin name in plugins=": ((_tables(),), {"plugins": ["toy_ce"]}, r"plugins= takes plugin classes"),
    "an object in plugins=": ((_tables(),), {"plugins": [object()]}, r"subclasses of engine\.Plugin"),
    "two classes of one name": ((_tables(),), {"plugins": [Probe, type("Probe2", (Probe,), {})]}, r"both named"),
    "a class of a wrong API": ((_tables(),), {"plugins": [*TOY_CLASSES, WrongAPI]}, r"^plugin 'wrong_api' .*broken"),
    "plugins and a registry": ((_tables(),), {"plugins": [Probe], "registry": engine.Registry()}, r"not both"),
    "a recipe beside resume=RUN_DIR": ((_tables(),), {"resume": "runs/x"}, r"pass recipe=None"),
    "no loss plugin (found at setup)": (({"run": {"steps": 2}},), {"plugins": TOY_CLASSES[:3]}, r"no enabled plugin"),
    "a plugin refusing after the claim": ((_tables(),), {"plugins": [*TOY_CLASSES, RefuseAtStart]}, r"refused"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_one_line_and_writes_nothing(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, options, message = BAD[case]
    if "plugins" not in options and "registry" not in options:
        options = {**options, "plugins": TOY_CLASSES}
    out = None if "resume" in options else str(tmp_path / "run")
    with pytest.raises(BadInput) as exc:
        engine.train(*args, out=out, **options, **_quiet())
    assert len(str(exc.value).splitlines()) == 1 and re.search(message, str(exc.value)), str(exc.value)
    assert os.listdir(tmp_path) == []  # no run directory, no runs/ folder


def test_resume_from_a_directory_that_holds_no_run_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="holds no recipe.toml"):
        engine.train(resume=str(tmp_path), **_quiet())
    with pytest.raises(BadInput, match="drop out="):
        engine.train(resume=str(tmp_path), out=str(tmp_path / "other"), **_quiet())
    assert os.listdir(tmp_path) == []


# --- the public surface stays light ---------------------------------------------------------------


def test_importing_engine_imports_no_torch():
    code = "import sys, engine; engine.BadInput; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
