"""The layout of ``plugins/``: shared packages import no method, and every package says what it holds."""

from __future__ import annotations

import ast
import pathlib

import pytest

PLUGINS = pathlib.Path(__file__).resolve().parents[2] / "plugins"
SHARED = ("core", "cifar", "countdown", "policies")  # data sets, models and tasks that methods build on
PACKAGES = sorted(p.parent.name for p in PLUGINS.glob("*/__init__.py") if p.parent.name != "recipes")


def _imported_packages(path: pathlib.Path) -> set[str]:
    """The first-party plugin packages a module imports, at any depth of its code (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        names.update(m.split(".")[1] for m in modules if m.startswith("plugins."))
    return names


@pytest.mark.parametrize("package", SHARED)
def test_a_shared_package_imports_no_method_package(package):
    imports = {
        str(path.relative_to(PLUGINS)): _imported_packages(path) - set(SHARED)
        for path in sorted((PLUGINS / package).rglob("*.py"))
    }
    assert not {path: found for path, found in imports.items() if found}


def test_the_layout_holds_every_package_this_test_knows():
    assert set(SHARED) <= set(PACKAGES), PACKAGES


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_docstring_names_each_of_its_modules(package):
    init = PLUGINS / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text("utf-8")))
    assert doc, f"plugins/{package}/__init__.py has no docstring"
    modules = [p.stem for p in (PLUGINS / package).glob("*.py") if p.stem != "__init__"]
    missing = [m for m in modules if f":mod:`.{m}`" not in doc]
    assert not missing, f"plugins/{package}/__init__.py does not describe {missing}"
