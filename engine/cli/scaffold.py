"""``hookmix new-plugin NAME``: write a plugin package that installs and passes its tests unchanged.

The package is the smallest complete example of the contract: an entry point, a plugin with a
typed and validated config, a loss term it contributes, a shipped recipe, a README, and tests
that use the engine's test kit (:mod:`engine.testing`).
"""

from __future__ import annotations

import errno
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


# the longest file name made from NAME: pip's editable-install finder (hookmix_NAME-0.1.0.dist-info is shorter)
_LONGEST = "__editable___hookmix_{name}_0_1_0_finder.py"


def new_plugin(name: str, directory: str | None = None) -> str:
    """Write the package for plugin ``name``; return its directory. Refuses to overwrite anything.

    Everything that can be checked is checked before anything is written; the files are then
    written into a temporary directory beside the destination and renamed into place, so a
    refusal or a failed write leaves nothing behind (the rename is atomic on one filesystem).
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or "") or keyword.iskeyword(name):
        raise BadInput(f"plugin name {_shown(name)!r} must be a lowercase Python identifier (e.g. zloss); pick another")
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
    for part in [os.path.basename(root), *created]:
        if len(os.fsencode(part)) > limit:
            raise BadInput(f"{root}: {_shown(part)!r} is longer than {limit} bytes, the filesystem's limit; pass --dir")
    if os.path.lexists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise BadInput(f"{root} already exists and is not an empty directory; pass --dir NEW_DIR")
    files = _files(name, dash)
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


def _files(name: str, dash: str) -> dict[str, str]:
    """{path relative to the package root: text} of the package for plugin ``name``."""
    major = int(API_VERSION.split(".")[0])
    values = {
        "name": name,
        "dash": dash,
        "cls": "".join(p.title() for p in name.split("_")),
        "major": major,
        "next_major": major + 1,
    }
    templates = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"hookmix_{name}/__init__.py": PLUGIN,
        f"hookmix_{name}/recipes/__init__.py": '"""Recipes shipped with the plugin (see `hookmix recipes`)."""\n',
        f"hookmix_{name}/recipes/{name}-mnist1d.toml": RECIPE,
        "tests/test_plugin.py": TESTS,
    }
    return {rel: textwrap.dedent(template).format(**values) for rel, template in templates.items()}


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
