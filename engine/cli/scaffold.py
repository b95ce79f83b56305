"""``hookmix new-plugin NAME``: write a plugin package that installs and passes its tests unchanged.

The package is the smallest complete example of the contract: an entry point, a plugin with a
typed and validated config, a loss term it contributes, a shipped recipe, a README, and tests
that use the engine's test kit (:mod:`engine.testing`).
"""

from __future__ import annotations

import keyword
import os
import re
import textwrap

from engine.errors import BadInput
from engine.plugin import API_VERSION

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "hookmix-{dash}"
version = "0.1.0"
description = "A hookmix plugin: {name}."
requires-python = ">=3.11"
dependencies = ["hookmix>=0.2"]

[project.entry-points."hookmix.plugins"]
{name} = "hookmix_{name}:{cls}"

[tool.setuptools.packages.find]
include = ["hookmix_{name}*"]

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
    recipes = "hookmix_{name}.recipes"
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

from hookmix_{name} import {cls}


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
"""


def new_plugin(name: str, directory: str | None = None) -> str:
    """Write the package for plugin ``name``; return its directory. Refuses to overwrite anything."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or "") or keyword.iskeyword(name):
        raise BadInput(f"plugin name {name!r} must be a lowercase Python identifier (e.g. zloss); pick another")
    dash = name.replace("_", "-")
    root = os.path.abspath(directory or f"hookmix-{dash}")
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise BadInput(f"{root} already exists and is not an empty directory; pass --dir NEW_DIR")
    major = int(API_VERSION.split(".")[0])
    values = {
        "name": name,
        "dash": dash,
        "cls": "".join(p.title() for p in name.split("_")),
        "major": major,
        "next_major": major + 1,
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"hookmix_{name}/__init__.py": PLUGIN,
        f"hookmix_{name}/recipes/__init__.py": '"""Recipes shipped with the plugin (see `hookmix recipes`)."""\n',
        f"hookmix_{name}/recipes/{name}-mnist1d.toml": RECIPE,
        "tests/test_plugin.py": TESTS,
    }
    try:
        for rel, template in files.items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(textwrap.dedent(template).format(**values))
    except OSError as exc:
        raise BadInput(f"cannot write {root} ({exc.strerror}); pass --dir with a writable location") from None
    return root
