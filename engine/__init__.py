"""hookmix: a small PyTorch training loop whose methods are pluggy plugins.

The public surface for plugin authors (the plugin API, version :data:`API_VERSION`):
:class:`Plugin`, :data:`hookimpl`, :func:`field` and :mod:`engine.validators`, :class:`Command`,
:class:`State`, :func:`open_run`, the engine's capabilities (:class:`WeightConstraint`) and the
errors. The engine never imports first-party plugins; it finds every plugin through the
``hookmix.plugins`` entry-point group.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from engine import validators  # generic config validators: finite, in_range, length, each, width, ...
from engine.config.recipe import field, non_negative, one_of, positive
from engine.errors import BadInput, HookmixError, PluginConflict, TrainingFailure
from engine.plugin import API_VERSION, Command, Plugin, hookimpl

try:
    __version__ = metadata.version("hookmix")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# These need torch: imported on first use, so that `hookmix` is inside its error and Ctrl-C
# handling (engine.cli.main) before the slow torch import starts.
_LAZY = {
    "State": "engine.state",
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
    "Run",
    "State",
    "TrainingFailure",
    "WeightConstraint",
    "field",
    "hookimpl",
    "non_negative",
    "one_of",
    "open_run",
    "positive",
    "validators",
    "__version__",
]
