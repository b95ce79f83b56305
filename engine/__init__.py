"""hookmix: a small PyTorch training loop whose methods are pluggy plugins.

The public surface for plugin authors: :class:`Plugin`, :data:`hookimpl`, :func:`field`,
:class:`Command`, :class:`State` and the errors. The engine never imports first-party
plugins; it finds every plugin through the ``hookmix.plugins`` entry-point group.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

from engine.errors import BadInput, HookmixError, PluginConflict, TrainingFailure
from engine.plugin import Plugin, hookimpl
from engine.recipe import field, non_negative, one_of, positive

__version__ = "0.1.0"


@attrs.define
class Command:
    """A ``hookmix`` sub-command contributed by a plugin through ``hookmix_commands``."""

    help: str
    add_arguments: Callable[[Any], None]  # receives the verb's argparse parser
    run: Callable[[Any], int | None]  # receives the parsed namespace; returns an exit code


def __getattr__(name: str) -> Any:
    # State needs torch: imported on first use, so that `hookmix` is inside its error and Ctrl-C
    # handling (engine.cli.main) before the slow torch import starts
    if name == "State":
        from engine.state import State
        return State
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


__all__ = ["BadInput", "Command", "HookmixError", "Plugin", "PluginConflict", "State",
           "TrainingFailure", "field", "hookimpl", "non_negative", "one_of", "positive", "__version__"]
