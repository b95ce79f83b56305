"""The README's examples must keep working: its plugin example trains, its recipe resolves."""

import pathlib
import re
import tomllib

from engine.config.recipe import resolve
from engine.config.registry import Registry
from engine.testing import TOY, train

README = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_the_20_line_plugin_example_trains_and_logs_its_term():
    code = next(b for b in _blocks("python") if "class ZLoss" in b)
    assert len(code.strip().splitlines()) <= 20
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = train([*TOY, namespace["ZLoss"]], steps=2)
    assert result.metrics[-2]["train/loss/zloss"] > 0
    assert "train/loss/toy_ce" in result.metrics[-2]


def test_the_mixed_recipe_example_resolves_against_the_installed_plugins():
    raw = tomllib.loads(next(b for b in _blocks("toml") if "lipschitz_gpt" in b and "[plugins.kd]" in b))
    recipe = resolve("readme", raw, Registry())
    assert recipe.plugin_configs["kd"].weight == 9.0
    assert recipe.run.plugins[-1] == "logit_std"
