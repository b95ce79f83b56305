"""``hookmix new-plugin NAME``: write a plugin package that installs and passes its tests unchanged.

The package is the smallest complete example of the contract: an entry point, a plugin with a
typed and validated config, a loss term it contributes, a shipped recipe, a README, and tests
that use the engine's test kit (:mod:`engine.testing`).

Several plugins in one distribution (``new_plugin(NAME, plugins=["a", "b"])``, ``--plugins a,b``): each
plugin is its own submodule (``hookmix_NAME/a.py``) named by its own entry point, and the package's
``__init__.py`` imports nothing, so enabling one plugin imports only its module (and a broken one breaks
only itself). Its recipes share ``hookmix_NAME.recipes``; its tests include that isolation check.
"""

from __future__ import annotations

import errno
import json
import keyword
import os
import re
import shutil
import textwrap
import uuid

from engine.errors import BadInput
from engine.plugin import API_VERSION

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "hookmix-{dash}"
version = "0.1.0"
description = "{description}"
requires-python = ">=3.11"
dependencies = ["hookmix>=0.2"]

# One line per plugin: NAME = "MODULE:CLASS", NAME equal to the class's `name`. {layout}
[project.entry-points."hookmix.plugins"]
{entry_points}

[tool.setuptools.packages.find]
include = ["hookmix_{pkg}*"]

[tool.setuptools.package-data]
"*" = ["*.toml"]
"""

PLUGIN = '''\
"""hookmix-{dash}: {cls}, a loss term that penalises large logits (edit it into your method)."""

from __future__ import annotations

import attrs
import torch

from engine import Plugin, field, hookimpl
from engine.validators import finite_non_negative, int_range


@attrs.define
class {cls}Config:
    weight: float = field(1e-3, "weight of the penalty in the summed loss", validator=finite_non_negative)
    power: int = field(2, "penalty exponent on the log-partition", validator=int_range(1, 2))


class {cls}(Plugin):
    """Penalises the log-partition of the student's logits (a z-loss); logged as train/loss/{name}."""

    name = "{name}"
    Config = {cls}Config
    recipes = "hookmix_{pkg}.recipes"
    api = ">={major}.0,<{next_major}"

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        logits = state.logits(outputs["logits"], role="student", consumer=self.name, kind="regularizer")
        z = torch.logsumexp(logits.float(), dim=-1)
        return {{"{name}": self.config.weight * z.abs().pow(self.config.power).mean()}}
'''

RECIPE = """\
description = "MNIST-1D MLP with the {name} plugin (shipped by hookmix-{dash})"

[run]
plugins = ["mnist1d", "mlp", "adamw", "cross_entropy", "{name}"]
steps = 200
eval_interval = 100

[plugins.{name}]
weight = 1e-3
"""

TESTS = '''\
"""Tests of the {name} plugin with the engine's test kit (engine.testing)."""

import pytest
import torch

from engine import BadInput
from engine.testing import TOY, assert_resumes_exactly, train

from {module} import {cls}


def test_it_adds_its_term_and_trains():
    result = train([*TOY, {cls}], config={{"{name}": {{"weight": 0.01}}}}, steps=4)
    logged = [r for r in result.metrics if "train/loss" in r]
    assert len(logged) == 4 and all("train/loss/{name}" in r for r in logged)
    assert torch.isfinite(torch.tensor(logged[-1]["train/loss"]))


def test_it_resumes_bit_exactly():
    assert_resumes_exactly([*TOY, {cls}], steps=6, split=3)


def test_bad_config_is_refused_before_training():
    with pytest.raises(BadInput, match="weight"):
        train([*TOY, {cls}], config={{"{name}": {{"weight": -1.0}}}}, steps=1)
'''

README = """\
# hookmix-{dash}

A [hookmix](https://pypi.org/project/hookmix/) plugin written by `hookmix new-plugin {name}`.

```bash
pip install -e .                 # registers the `{name}` entry point
python -m pytest                 # its tests, with the engine's test kit
hookmix describe {name}          # its config, validated
hookmix train {name}-mnist1d     # the recipe it ships
hookmix train mnist1d-mlp run.plugins+={name} plugins.{name}.weight=1e-2
```

Edit `hookmix_{name}/__init__.py`: the hooks you can implement are listed in hookmix's
docs/hooks.md, the plugin declarations in docs/authoring.md.

More plugins in this distribution: put each in its own submodule (`hookmix_{name}/other.py`) with its own
entry point in pyproject.toml (`other = "hookmix_{name}.other:Other"`), and move this one to
`hookmix_{name}/{name}.py` (entry point `"hookmix_{name}.{name}:{cls}"`), leaving `__init__.py` without imports:
enabling one plugin then imports only its module. `hookmix new-plugin NAME --plugins a,b` writes that layout.
"""

MULTI_README = """\
# hookmix-{dash}

[hookmix](https://pypi.org/project/hookmix/) plugins written by `hookmix new-plugin {dist} --plugins {names}`.

```bash
pip install -e .                 # registers one entry point per plugin
python -m pytest                 # their tests, with the engine's test kit, and the isolation check
hookmix describe {first}  # a plugin's config, validated
hookmix train {first}-mnist1d  # a recipe it ships (one per plugin)
```

Each plugin lives in its own submodule, `hookmix_{dist}/PLUGIN.py`, named by its own entry point in
pyproject.toml (`PLUGIN = "hookmix_{dist}.PLUGIN:Class"`), and `hookmix_{dist}/__init__.py` imports nothing.
Enabling one plugin therefore imports only its module: a heavy dependency of one (a tokenizer, a CUDA
extension) costs nothing to runs of the others, and one that fails to import is reported as broken alone
(`hookmix plugins`) while the others work. `tests/test_isolation.py` checks it. To add a plugin, add
`hookmix_{dist}/NEW.py`, its line under `[project.entry-points."hookmix.plugins"]`, and `pip install -e .` again
(entry points are read from the installed metadata). The hooks you can implement are listed in hookmix's
docs/hooks.md, the plugin declarations in docs/authoring.md.
"""

ISOLATION = '''\
"""Each plugin of hookmix-{dash} imports only its own submodule (the package's __init__ imports nothing)."""

import subprocess
import sys

import pytest

PLUGINS = {plugin_classes}


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_importing_one_plugin_imports_no_other(name):
    others = [f"hookmix_{dist}.{{other}}" for other in PLUGINS if other != name]
    code = (
        f"import sys; import hookmix_{dist}.{{name}} as m; "
        f"assert m.{{PLUGINS[name]}}.name == {{name!r}}; "
        f"loaded = [o for o in {{others!r}} if o in sys.modules]; assert not loaded, loaded"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
'''

# the longest file name made from NAME: pip's editable-install finder (hookmix_NAME-0.1.0.dist-info is shorter)
_LONGEST = "__editable___hookmix_{name}_0_1_0_finder.py"
# ... and from a plugin name of a distribution with several: its test module's pytest cache entry
_LONGEST_PLUGIN = "test_{name}.cpython-311-pytest-9.0.0.pyc"
_RESERVED = ("recipes",)  # hookmix_NAME/recipes/ is the recipes package: no plugin submodule may take its name


def new_plugin(name: str, directory: str | None = None, plugins: list[str] | None = None) -> str:
    """Write the package for plugin ``name``; return its directory. Refuses to overwrite anything.

    ``plugins``: several plugins in one distribution ``hookmix-NAME``, each in its own submodule
    ``hookmix_NAME/PLUGIN.py`` with its own entry point (module docstring). Without it (or with ``[name]``)
    the package holds the one plugin ``name`` in ``hookmix_NAME/__init__.py``.

    Everything that can be checked is checked before anything is written; the files are then
    written into a temporary directory beside the destination and renamed into place, so a
    refusal or a failed write leaves nothing behind (the rename is atomic on one filesystem).
    """
    several = plugins is not None and list(plugins) != [name]
    _check_identifier(name, "distribution name" if several else "plugin name")
    names = list(plugins) if several else [name]
    for plugin in names:
        _check_identifier(plugin, "plugin name")
    if several:
        if not names or len(set(names)) != len(names):
            raise BadInput(f"--plugins {','.join(names)!r} must name each plugin once (e.g. --plugins zloss,ema)")
        if reserved := sorted(set(names) & set(_RESERVED)):
            raise BadInput(f"plugin name {reserved[0]!r} is the package's recipes folder; pick another")
    dash = name.replace("_", "-")
    root = os.path.abspath(directory or f"hookmix-{dash}")
    if os.path.islink(root):  # the package goes where the link points; the rename below would replace the link
        root = os.path.realpath(root)
    parent, created = _parent_of(root)
    limit = _name_max(parent)
    longest = _LONGEST.format(name=name)
    if len(longest) > limit:
        raise BadInput(
            f"plugin name {_shown(name)!r} ({len(name)} characters) is too long: file names made from it "
            f"({_LONGEST.format(name='NAME')}) would pass the filesystem's {limit}-character limit; pick a "
            f"name of at most {limit - len(longest) + len(name)} characters"
        )
    for plugin in names if several else ():
        if len(_LONGEST_PLUGIN.format(name=plugin)) > limit:
            raise BadInput(
                f"plugin name {_shown(plugin)!r} ({len(plugin)} characters) is too long: file names made from it "
                f"({_LONGEST_PLUGIN.format(name='NAME')}) would pass the filesystem's {limit}-character limit"
            )
    for part in [os.path.basename(root), *created]:
        if len(os.fsencode(part)) > limit:
            raise BadInput(f"{root}: {_shown(part)!r} is longer than {limit} bytes, the filesystem's limit; pass --dir")
    if os.path.lexists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise BadInput(f"{root} already exists and is not an empty directory; pass --dir NEW_DIR")
    files = _files(name, dash, names if several else None)
    made = None  # the topmost missing parent this call created (removed again on failure)
    tmp = None
    try:
        for part in created:  # one by one: only a folder this call made is removed on failure
            parent = os.path.join(parent, part)
            os.mkdir(parent)
            made = made or parent
        tmp = os.path.join(parent, f".hookmix-new-plugin-{uuid.uuid4().hex}")
        os.mkdir(tmp)  # not mkdtemp: that one is private (0700), the package is an ordinary directory
        for rel, text in files.items():
            path = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
        os.rename(tmp, root)  # replaces an empty directory at root; fails on anything else
        tmp = made = None
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and exc.filename == tmp:  # root filled meanwhile
            raise BadInput(f"{root} already exists and is not an empty directory; pass --dir NEW_DIR") from None
        raise BadInput(f"cannot write {root} ({exc.strerror}); pass --dir with a writable location") from None
    finally:
        for leftover in (tmp, made):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
    return root


def _files(name: str, dash: str, plugins: list[str] | None = None) -> dict[str, str]:
    """{path relative to the package root: text} of the package ``hookmix-NAME``: the one plugin ``name`` in
    ``hookmix_NAME/__init__.py``, or (``plugins``) each plugin in its own submodule."""
    major = int(API_VERSION.split(".")[0])
    classes = {p: "".join(part.title() for part in p.split("_")) for p in plugins or [name]}
    common = {"dash": dash, "pkg": name, "dist": name, "major": major, "next_major": major + 1}
    common["names"] = ",".join(classes)
    several = "the hookmix plugins " + ", ".join(classes)
    common["description"] = f"A hookmix plugin: {name}." if plugins is None else f"{several.capitalize()}."
    common["layout"] = (
        "Each plugin is its own submodule\n# (hookmix_{0}/NAME.py) and hookmix_{0}/__init__.py imports nothing, so that enabling one "
        "plugin imports only\n# its own module; add one with its module and its line here (then pip install -e . again)."
        if plugins
        else "More plugins in this distribution: give\n# each its own submodule (hookmix_{0}/other.py: other = "
        '"hookmix_{0}.other:Other"), move this one to hookmix_{0}/{0}.py\n# and leave __init__.py without '
        "imports, so that enabling one plugin imports only its own module (README.md)."
    ).format(name)
    if plugins is None:
        module = {name: f"hookmix_{name}"}
        common["entry_points"] = f'{name} = "hookmix_{name}:{classes[name]}"'
    else:
        module = {p: f"hookmix_{name}.{p}" for p in plugins}
        common["entry_points"] = "\n".join(f'{p} = "hookmix_{name}.{p}:{cls}"' for p, cls in classes.items())
    render = lambda template, **extra: textwrap.dedent(template).format(**common, **extra)  # noqa: E731
    files = {
        "pyproject.toml": render(PYPROJECT, name=name),
        f"hookmix_{name}/recipes/__init__.py": '"""Recipes shipped with the plugins (see `hookmix recipes`)."""\n',
    }
    for plugin, cls in classes.items():
        one = {"name": plugin, "cls": cls, "module": module[plugin]}
        source = f"hookmix_{name}/__init__.py" if plugins is None else f"hookmix_{name}/{plugin}.py"
        files[source] = render(PLUGIN, **one)
        files[f"hookmix_{name}/recipes/{plugin}-mnist1d.toml"] = render(RECIPE, **one)
        files["tests/test_plugin.py" if plugins is None else f"tests/test_{plugin}.py"] = render(TESTS, **one)
    if plugins is None:
        files["README.md"] = render(README, name=name, cls=classes[name])
    else:
        # the package itself imports nothing: an entry point imports only its own submodule
        files[f"hookmix_{name}/__init__.py"] = (
            f'"""hookmix-{dash}: {several}, one submodule each (each imported only when enabled)."""\n'
        )
        files["README.md"] = render(MULTI_README, first=plugins[0])
        files["tests/test_isolation.py"] = render(ISOLATION, plugin_classes=json.dumps(classes))
    return files


def _check_identifier(name: str, what: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or "") or keyword.iskeyword(name):
        raise BadInput(f"{what} {_shown(name)!r} must be a lowercase Python identifier (e.g. zloss); pick another")


def _parent_of(root: str) -> tuple[str, list[str]]:
    """(the nearest existing ancestor of ``root``, the names of the folders between it and ``root``);
    bad input when that ancestor is not a directory."""
    parent, created = os.path.dirname(root), []
    while not os.path.lexists(parent):
        parent, tail = os.path.split(parent)
        created.insert(0, tail)
    if not os.path.isdir(parent):
        raise BadInput(f"cannot write {root}: {parent} is not a directory; pass --dir with a writable location")
    return parent, created


def _name_max(path: str) -> int:
    """The longest file name the filesystem at ``path`` allows (NAME_MAX; 255 where it cannot be asked).

    At most 255 however large: pip writes the longest names into site-packages, elsewhere."""
    try:
        return min(os.pathconf(path, "PC_NAME_MAX"), 255)
    except (OSError, ValueError, AttributeError):
        return 255


def _shown(text: str) -> str:
    """``text`` as a message shows it: long ones cut (a message stays one readable line)."""
    return text if len(text or "") <= 40 else f"{text[:40]}..."
