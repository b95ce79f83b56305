"""Turning an exception raised by a plugin's setup hook into one line that names the plugin.

A config value can pass its validators and still fail inside torch (a shape torch refuses, an
allocation too large for the machine). During setup such an error is the recipe's fault, not a
crash: it becomes :class:`BadInput` naming the plugin whose hook raised it and, when the error
message mentions one, the config key.
"""

from __future__ import annotations

import os
import re
import traceback

import attrs

from engine.errors import BadInput

_MANAGER = os.path.join("engine", "manager.py")


def failing_plugin(exc: BaseException, plugins: dict) -> str | None:
    """The plugin (of ``plugins``) whose hook raised ``exc``: the outermost hook call in the traceback.

    The manager dispatches every hook in ``Manager._each`` with the plugin's name in the local
    ``name``; outermost, because a hook may run another run's plugins (a teacher builds its model).
    """
    frames = [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
    for frame in frames:
        if frame.f_code.co_filename.endswith(_MANAGER) and frame.f_locals.get("name") in plugins:
            return frame.f_locals["name"]
    for frame in frames:  # a hook called directly, outside the manager
        owner = frame.f_locals.get("self")
        for name, plugin in plugins.items():
            if owner is plugin:
                return name
    return None


def mentioned_key(message: str, config) -> str | None:
    """The first config field named in ``message`` (e.g. torch's error repeats an argument name)."""
    if config is None or not attrs.has(type(config)):
        return None
    for f in attrs.fields(type(config)):
        if re.search(rf"\b{re.escape(f.name)}\b", message):
            return f.name
    return None


def setup_failure(exc: Exception, what: str, plugins: dict) -> BadInput:
    """Bad input for ``exc`` raised while the setup step ``what`` (e.g. "build the model") ran."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    cause = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    name = failing_plugin(exc, plugins)
    if name is None:
        return BadInput(f"setup failed to {what} ({cause}); check the plugin settings of the recipe")
    key = mentioned_key(text, getattr(plugins[name], "config", None))
    where = f"plugins.{name}.{key}" if key else f"[plugins.{name}]"
    return BadInput(f"plugin {name!r} failed to {what} ({cause}); check {where}")
