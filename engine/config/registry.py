"""Plugin discovery through the ``hookmix.plugins`` entry-point group.

Discovery reads entry-point metadata only; a plugin's module is imported when a recipe names it
(or when ``hookmix plugins`` lists everything). A module that fails to import is reported as
broken with its error and fails a run only if the run enables it.
"""

from __future__ import annotations

import difflib
from importlib import metadata

import attrs

from engine.errors import BadInput
from engine.plugin import INSTANCE_SEPARATOR, Plugin, check_instance_name, check_plugin_class, split_instance

GROUP = "hookmix.plugins"


@attrs.define
class PluginInfo:
    """What is known about one discoverable plugin."""

    name: str
    dist: str
    version: str
    target: str  # "module:Class", or "<local>" for classes passed in code
    cls: type[Plugin] | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        return "ok" if self.error is None else f"broken: {self.error}"


class Registry:
    """All plugins a run could enable: installed entry points plus classes passed in code."""

    def __init__(self, local: dict[str, type[Plugin]] | None = None, *, entry_points: bool = True):
        self._infos: dict[str, PluginInfo] = {}
        self._eps: dict[str, metadata.EntryPoint] = {}
        if entry_points:
            for ep in metadata.entry_points(group=GROUP):
                dist = ep.dist.name if ep.dist else "?"
                version = ep.dist.version if ep.dist else "?"
                if ep.name in self._infos:  # two distributions claim one name: unusable
                    self._infos[
                        ep.name
                    ].error = f"name claimed by both {self._infos[ep.name].dist} and {dist}; uninstall one"
                    continue
                self._infos[ep.name] = PluginInfo(ep.name, dist, version, ep.value)
                self._eps[ep.name] = ep
        for name, cls in (local or {}).items():
            info = self._infos[name] = PluginInfo(name, "<local>", getattr(cls, "version", "0"), "<local>")
            try:
                check_plugin_class(cls, name)
                info.cls = cls
            except TypeError as exc:
                info.error = str(exc).splitlines()[0]

    def names(self) -> list[str]:
        return sorted(self._infos)

    def info(self, name: str) -> PluginInfo:
        """Return the plugin's info, importing its class on first use.

        An instance name ``NAME@LABEL`` (plugin API 1.1) gives NAME's info under the instance's name; bad
        input when the label is malformed or NAME does not declare ``multi_instance = True``.
        """
        if INSTANCE_SEPARATOR in name:
            return self._instance_info(name)
        if name not in self._infos:
            raise BadInput(unknown_name_message("plugin", name, self.names(), "see `hookmix plugins`"))
        info = self._infos[name]
        if info.cls is None and info.error is None:
            try:
                cls = self._eps[name].load()
            except Exception as exc:  # a broken plugin must not break discovery of the others
                info.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                return info
            try:
                check_plugin_class(cls, name)  # wrong declarations: this plugin is broken, no other
                info.cls = cls
            except TypeError as exc:
                info.error = str(exc).splitlines()[0]
        return info

    def _instance_info(self, name: str) -> PluginInfo:
        try:
            check_instance_name(name)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        base, label = split_instance(name)
        info = self.info(base)  # an unknown plugin: the usual message, with a close match
        if info.cls is not None and not info.cls.multi_instance:
            # a 1.0 plugin may keep fixed names (a loss term, a metric) that a second instance would share
            raise BadInput(
                f"{name!r} would enable plugin {base!r} a second time (instance {label!r}), but {base} does not "
                f"declare multi_instance = True; enable it once, as {base!r} (docs/authoring.md, Plugin instances)"
            )
        return attrs.evolve(info, name=name)

    def load(self, name: str) -> type[Plugin]:
        """Return the plugin class for a name a recipe enabled; bad input if unknown or broken."""
        info = self.info(name)
        if info.error is not None:
            raise BadInput(
                f"plugin {name!r} ({info.dist} {info.version}) is broken: {info.error}; "
                f"fix or reinstall it, or remove it from run.plugins"
            )
        assert info.cls is not None
        return info.cls

    def all(self) -> list[PluginInfo]:
        return [self.info(n) for n in self.names()]

    def ok(self) -> list[PluginInfo]:
        """Every plugin that loads and whose declarations are valid."""
        return [i for i in self.all() if i.cls is not None]

    def providers_of(self, capability: str) -> list[str]:
        """Installed plugins that provide ``capability`` (by name or declaration), for hints."""
        from engine.plugin import offers

        return [i.name for i in self.ok() if offers(i.name, i.cls, capability)]


def unknown_declarations(plugins: dict[str, Plugin], known: set[str], registry: Registry | None) -> list[str]:
    """Plan warnings for the names in ``conflicts`` / ``before`` / ``after`` that no installed plugin is or provides.

    Such a declaration does nothing (a typo, or a capability its provider stopped declaring), yet the plugin it
    means may simply not be installed here: a warning, never an error. ``known``: what the enabled plugins are
    and provide. Installed plugins are imported to read their ``provides`` only when a name is not otherwise known.
    """
    from engine.plugin import base_name, capability_name

    if registry is None:
        return []
    installed, declared, out = set(registry.names()), None, []
    for name, plugin in plugins.items():
        for label in ("conflicts", "before", "after"):
            for entry in (e for e in getattr(plugin, label) if isinstance(e, str)):  # a Protocol is never a typo
                if entry in known or base_name(entry) in installed:
                    continue
                if declared is None:
                    declared = {capability_name(c) for info in registry.ok() for c in info.cls.provides}
                if entry not in declared:
                    close = did_you_mean(entry, sorted(installed | declared | known))
                    out.append(
                        f"plugin {name!r} declares {label}={entry!r}, which no installed plugin is or provides, "
                        f"so it does nothing{close}"
                    )
    return out


def did_you_mean(name: str, valid: list[str]) -> str:
    """``"; did you mean 'x'?"`` naming the closest valid name, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, valid, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_name_message(what: str, name: str, valid: list[str], hint: str = "") -> str:
    """One line: the unknown name, the closest valid one, and where to look."""
    close = did_you_mean(name, valid)
    msg = f"unknown {what} {name!r}{close}"
    if not close and valid:
        msg += f"; valid: {', '.join(valid)}"
    return msg + (f" ({hint})" if hint else "")
