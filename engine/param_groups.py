"""Merging the optimizer param groups that plugins contribute (``hookmix_param_groups``)."""

from __future__ import annotations

from engine.errors import PluginConflict
from engine.state import State


def merge_param_groups(contributed: list[tuple[str, dict]], state: State) -> list[dict]:
    """Combine the plugins' param groups: unique group names, each parameter in one group only, every
    unclaimed trainable parameter (model and plugin modules) in a group named "default"."""
    names = {id(p): n for n, p in state.model.named_parameters()}
    names.update({id(p): f"<{n}>" for n, p in state.modules.named_parameters()})
    owner: dict[int, tuple[str, str]] = {}
    groups, group_names = [], set()
    for plugin, group in contributed:
        gname = group.get("name")
        if not gname or gname in group_names:
            raise PluginConflict(
                f"plugin {plugin!r} returned a param group with a missing or repeated name "
                f"{gname!r}; give each group a unique 'name'"
            )
        group_names.add(gname)
        for p in group["params"]:
            if id(p) in owner:
                g0, p0 = owner[id(p)]
                raise PluginConflict(
                    f"parameter {names.get(id(p), '?')} is in param group {g0!r} ({p0}) and "
                    f"{gname!r} ({plugin}); a parameter may be in one group only"
                )
            owner[id(p)] = (gname, plugin)
        groups.append(dict(group, params=list(group["params"])))
    rest = [
        p for p in [*state.model.parameters(), *state.modules.parameters()] if p.requires_grad and id(p) not in owner
    ]
    if rest:
        groups.append({"name": "default", "params": rest})
    return groups
