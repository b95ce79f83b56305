"""hookmix: a small PyTorch training loop whose methods are pluggy plugins.

The public surface is what this module exports (``__all__``), plus :mod:`engine.validators` (config
rules) and :mod:`engine.testing` (the test kit); every other module is the engine's own and may change
without notice. docs/authoring.md lists the surface; a test checks that plugins use nothing else.

- running recipes from Python: :func:`train` (returns a :class:`Result`), :class:`Trainer`
  (``Trainer.from_recipe`` for step-by-step control), :func:`load_recipe`, :class:`Registry`;
- writing plugins (the plugin API, version :data:`API_VERSION`): :class:`Plugin`, :data:`hookimpl`,
  :func:`field`, :class:`Command`, :class:`State`, :func:`open_run` / :class:`Run`, the engine's
  capabilities (:class:`WeightConstraint`), :func:`unknown_name_message` for one-line messages;
- the errors: :class:`BadInput` (exit 2), :class:`TrainingFailure` (exit 1), :class:`PluginConflict`.

The engine never imports first-party plugins; it finds every plugin through the ``hookmix.plugins``
entry-point group.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from engine import validators  # generic config validators: finite, in_range, length, each, width, ...
from engine.config.recipe import field, non_negative, one_of, positive
from engine.config.registry import Registry, unknown_name_message
from engine.errors import BadInput, HookmixError, PluginConflict, TrainingFailure
from engine.plugin import API_VERSION, Command, Plugin, hookimpl

try:
    __version__ = metadata.version("hookmix")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# These need torch (engine.api imports it when a run is made): imported on first use, so that `hookmix`
# is inside its error and Ctrl-C handling (engine.cli.main) before the slow torch import starts.
_LAZY = {
    "Result": "engine.api",
    "State": "engine.state",
    "Trainer": "engine.loop",
    "load_recipe": "engine.api",
    "train": "engine.api",
    "Run": "engine.rundir.open_run",
    "open_run": "engine.rundir.open_run",
    "WeightConstraint": "engine.capabilities",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


__all__ = [
    "API_VERSION",
    "BadInput",
    "Command",
    "HookmixError",
    "Plugin",
    "PluginConflict",
    "Registry",
    "Result",
    "Run",
    "State",
    "Trainer",
    "TrainingFailure",
    "WeightConstraint",
    "field",
    "hookimpl",
    "load_recipe",
    "non_negative",
    "one_of",
    "open_run",
    "positive",
    "train",
    "unknown_name_message",
    "validators",
    "__version__",
]
