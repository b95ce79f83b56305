"""``hookmix new-plugin NAME --plugins a,b`` (engine.cli.scaffold.new_plugin(..., plugins=[...])): several plugins
in one distribution, each entry point on its own submodule, so that enabling one does not import the others."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib

import pytest

from engine import BadInput
from engine.cli.scaffold import new_plugin

PLUGINS = ["alpha", "beta_gamma"]


@pytest.fixture
def package(tmp_path):
    return new_plugin("mine", str(tmp_path / "pkg"), plugins=PLUGINS)


def test_each_plugin_has_its_own_submodule_and_entry_point(package):
    with open(os.path.join(package, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert project["project"]["name"] == "hookmix-mine"
    assert project["project"]["entry-points"]["hookmix.plugins"] == {
        "alpha": "hookmix_mine.alpha:Alpha",
        "beta_gamma": "hookmix_mine.beta_gamma:BetaGamma",
    }
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["hookmix_mine*"]
    files = {os.path.relpath(os.path.join(r, f), package) for r, _, fs in os.walk(package) for f in fs}
    assert {
        "hookmix_mine/alpha.py",
        "hookmix_mine/beta_gamma.py",
        "hookmix_mine/recipes/alpha-mnist1d.toml",
        "hookmix_mine/recipes/beta_gamma-mnist1d.toml",
        "tests/test_alpha.py",
        "tests/test_beta_gamma.py",
        "tests/test_isolation.py",
    } <= files
    init = ast.parse(open(os.path.join(package, "hookmix_mine", "__init__.py"), encoding="utf-8").read())
    # the package imports nothing: an entry point loads only its own submodule
    assert not [n for n in ast.walk(init) if isinstance(n, (ast.Import, ast.ImportFrom))]


@pytest.mark.parametrize("name", PLUGINS)
def test_importing_one_plugin_imports_no_other(package, name):
    """What loading one entry point does (``importlib.import_module`` of its module), in a fresh interpreter."""
    cls = "".join(p.title() for p in name.split("_"))
    others = [f"hookmix_mine.{o}" for o in PLUGINS if o != name]
    code = (
        f"import importlib, sys; m = importlib.import_module('hookmix_mine.{name}'); "
        f"from engine import Plugin; assert issubclass(m.{cls}, Plugin) and m.{cls}.name == {name!r}; "
        f"loaded = [o for o in {others!r} if o in sys.modules]; assert not loaded, loaded"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package, *sys.path])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_plugins_load_register_and_ship_their_recipes(package, monkeypatch):
    """Through the registry, as an installed distribution would be found (its entry points from the pyproject)."""
    from engine import Registry
    from engine.config.recipe import shipped_recipes

    monkeypatch.syspath_prepend(package)
    import importlib

    classes = {
        n: getattr(importlib.import_module(f"hookmix_mine.{n}"), "".join(p.title() for p in n.split("_")))
        for n in PLUGINS
    }
    registry = Registry(classes)
    assert [registry.info(n).status for n in PLUGINS] == ["ok", "ok"]
    recipes = shipped_recipes(registry)
    assert {"alpha-mnist1d", "beta_gamma-mnist1d"} <= set(recipes)


@pytest.mark.slow
def test_the_package_installs_and_passes_its_own_tests(package, tmp_path):
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    proc = subprocess.run([*pip, "--target", str(site), package], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    proc = subprocess.run(cmd, cwd=package, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 passed" in proc.stdout  # 3 per plugin and the isolation check of each


@pytest.mark.parametrize(
    "plugins, error",
    [
        (["alpha", "alpha"], r"must name each plugin once"),
        (["alpha", "Beta"], r"plugin name 'Beta' must be a lowercase Python identifier"),
        (["alpha", "class"], r"plugin name 'class' must be a lowercase Python identifier"),
        (["alpha", "recipes"], r"'recipes' is the package's recipes folder"),
        ([], r"must name each plugin once"),
    ],
)
def test_bad_plugin_lists_are_refused_before_anything_is_written(plugins, error, tmp_path):
    with pytest.raises(BadInput, match=error):
        new_plugin("mine", str(tmp_path / "pkg"), plugins=plugins)
    assert os.listdir(tmp_path) == []


def test_one_plugin_named_as_the_distribution_keeps_the_single_layout(tmp_path):
    root = new_plugin("zloss", str(tmp_path / "pkg"), plugins=["zloss"])
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["entry-points"]["hookmix.plugins"] == {"zloss": "hookmix_zloss:Zloss"}
