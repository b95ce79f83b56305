"""hookmix: a small PyTorch training loop whose methods are pluggy plugins.

The public surface for plugin authors (the plugin API, version :data:`API_VERSION`):
:class:`Plugin`, :data:`hookimpl`, :func:`field` and the validators, :class:`Command`,
:class:`State`, :func:`open_run`, the engine's capabilities (:class:`WeightConstraint`) and the
errors. The engine never imports first-party plugins; it finds every plugin through the
``hookmix.plugins`` entry-point group.
"""

from __future__ import annotations

from importlib import metadata

from engine.capabilities import WeightConstraint
from engine.errors import BadInput, HookmixError, PluginConflict, TrainingFailure
from engine.plugin import API_VERSION, Command, Plugin, hookimpl
from engine.recipe import field, non_negative, one_of, positive
from engine.run import Run, open_run
from engine.state import State
from engine import validators  # generic config validators: finite, in_range, length, each, width, ...

try:
    __version__ = metadata.version("hookmix")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["API_VERSION", "BadInput", "Command", "HookmixError", "Plugin", "PluginConflict", "Run", "State",
           "TrainingFailure", "WeightConstraint", "field", "hookimpl", "non_negative", "one_of", "open_run",
           "positive", "validators", "__version__"]
