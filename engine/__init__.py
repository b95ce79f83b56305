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

from typing import Any

# Every name is imported on first use: `import engine` costs nothing, so that the `hookmix` command is
# inside its signal handling (engine.cli.main, first statement) before any slow import starts (attrs,
# pluggy, importlib.metadata, and later torch), and `hookmix --version` answers at once.
_LAZY = {
    "field": "engine.config.recipe",
    "non_negative": "engine.config.recipe",
    "one_of": "engine.config.recipe",
    "positive": "engine.config.recipe",
    "Registry": "engine.config.registry",
    "unknown_name_message": "engine.config.registry",
    "BadInput": "engine.errors",
    "HookmixError": "engine.errors",
    "PluginConflict": "engine.errors",
    "TrainingFailure": "engine.errors",
    "API_VERSION": "engine.plugin",
    "Command": "engine.plugin",
    "Plugin": "engine.plugin",
    "hookimpl": "engine.plugin",
    "Result": "engine.api",
    "Rollouts": "engine.rollouts",
    "StepTotals": "engine.rollouts",
    "State": "engine.state",
    "Trainer": "engine.loop",
    "load_recipe": "engine.api",
    "train": "engine.api",
    "Run": "engine.rundir.open_run",
    "open_run": "engine.rundir.open_run",
    "WeightConstraint": "engine.capabilities",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name == "__version__":
        from importlib import metadata

        try:
            return metadata.version("hookmix")
        except metadata.PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    if name == "validators":  # a submodule: generic config validators (finite, in_range, length, each, ...)
        return importlib.import_module("engine.validators")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "API_VERSION",
    "BadInput",
    "Command",
    "HookmixError",
    "Plugin",
    "PluginConflict",
    "Registry",
    "Result",
    "Rollouts",
    "Run",
    "State",
    "StepTotals",
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
