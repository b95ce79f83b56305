"""What a plugin is: a class with a name, a typed config, declarations and hook implementations.

A plugin package registers its classes under the ``hookmix.plugins`` entry-point group::

    [project.entry-points."hookmix.plugins"]
    ema = "hookmix_ema:EMA"

The engine imports a class only when a recipe names it, instantiates it with no arguments,
structures the recipe's ``[plugins.NAME]`` table into ``Config`` and sets ``plugin.config``.
"""

from __future__ import annotations

from typing import ClassVar

import pluggy

hookimpl = pluggy.HookimplMarker("hookmix")


class Plugin:
    """Base class for hookmix plugins. Subclass it, set the declarations, implement hooks.

    Declarations (class attributes):

    ``name``
        The name recipes use; must equal the entry-point name.
    ``Config``
        An attrs class (fields with defaults and ``metadata={"help": ...}``) or ``None``.
    ``provides`` / ``requires`` / ``conflicts``
        Capability names. Every plugin provides its own name. A run fails when a required
        capability is not provided by an enabled plugin, or a conflicting one is.
    ``before`` / ``after``
        Names of plugins this one must run before / after, in every hook (ignored when the
        other plugin is not enabled). The engine sorts topologically and fails on cycles.
    ``recipes``
        A package (dotted name) whose ``*.toml`` files are recipes shipped with the plugin.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type | None] = None
    provides: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    conflicts: ClassVar[tuple[str, ...]] = ()
    before: ClassVar[tuple[str, ...]] = ()
    after: ClassVar[tuple[str, ...]] = ()
    recipes: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.config = self.Config() if self.Config is not None else None

    @classmethod
    def summary(cls) -> str:
        """One line describing the plugin: the first line of its docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @hookimpl
    def hookmix_plugin_config(self) -> type | None:
        return self.Config
