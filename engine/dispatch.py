"""Hook callers written once per run: one direct call per implementation, in plan order.

A generic dispatch loop (pluggy's, or one over prepared calls) builds a keyword dict per call,
loops over the implementations, picks each one's arguments out of the dict and collects the
results, several times per training step (``python tests/perf/dispatch_cost.py`` times it). The
plan is fixed when a run starts, so the manager writes, for every hook that is not a wrapper, a
small function that does only the calls, and combines the results as the hook's convention says
(engine/hookspecs.py). With ``kd`` and a plugin whose implementation takes only ``outputs``::

    def hookmix_loss_terms(batch, outputs, state):       # merge: named results, a name twice is an error
        merged, owners = {}, {}
        r = kd__hookmix_loss_terms(batch, outputs, state)
        if r is not None:
            merge_into(merged, owners, r, 'kd', what)
        r = probe__hookmix_loss_terms(outputs)
        if r is not None:
            merge_into(merged, owners, r, 'probe', what)
        return merged

    def hookmix_transform_logits(logits, role, consumer, kind, state):   # fold over ``logits``
        r = logit_std__hookmix_transform_logits(logits, role, consumer, kind, state)
        if r is not None:
            logits = r
        return logits

Each implementation is bound in the caller's namespace under its plugin's name and the hook's
(``kd__hookmix_loss_terms``); the text holds nothing else but the spec's argument names (checked
against the spec), the plugin names as string literals and the names of this module's helpers.
As attrs does for the methods it writes, the text is registered in :mod:`linecache` under
``<hookmix caller HOOK>``, so a traceback through a caller shows its line, and pdb and
``inspect.getsource`` show the whole caller. The manager binds the per-step hooks' callers as its
methods (engine/manager.py), so that a hook call in the training step is one Python call.
"""

from __future__ import annotations

import linecache
import re
from typing import Any, Callable

from engine.errors import PluginConflict
from engine.hookspecs import Convention

Impl = tuple[str, Callable, tuple[str, ...]]  # (plugin name, function, the argument names it takes)

# the names a caller's text uses besides the spec's arguments and the bound implementations
_OWN_NAMES = frozenset({"r", "results", "merged", "owners", "merge_into", "what"})


def choose_provider(hook_name: str, impls: list[Impl], default_hooks: dict[str, tuple]) -> tuple[list[Impl], list[str]]:
    """The implementations an exclusive hook's caller calls, and the default providers set aside (plugin API 1.1).

    ``default_hooks``: each implementing plugin's ``default_hooks``. One implementation that is not a default
    replaces the defaults; otherwise more than one implementation is a :class:`PluginConflict` naming two of
    them, the explicit ones first (two explicit providers are refused even beside a default).
    """
    explicit = [i for i in impls if hook_name not in default_hooks[i[0]]]
    if len(explicit) == 1 and len(impls) > 1:
        return explicit, [i[0] for i in impls if i is not explicit[0]]
    if len(impls) > 1:  # two explicit providers, or two defaults and nothing to replace them
        a, b = [i[0] for i in (explicit if len(explicit) > 1 else impls)][:2]
        raise PluginConflict(
            f"plugins {a!r} and {b!r} both implement {hook_name}, which takes one provider; "
            f"remove one of them from run.plugins"
        )
    return impls, []


def make_caller(hook_name: str, params: tuple[str, ...], impls: list[Impl], convention: Convention) -> Callable:
    """The caller of ``hook_name`` (spec arguments ``params``); what it returns follows ``convention.kind``:

    - ``notify``: calls only and returns None (the engine does not use the results);
    - ``collect`` and ``per plugin``: a list of (plugin, result) for the results that are not None;
    - ``exclusive``: the one implementation's result (None without one);
    - ``fold``: each result that is not None replaces argument ``convention.into``; returns it;
    - ``merge``: the returned dicts merged into a new dict, or into argument ``convention.into``; a
      name returned twice is a :class:`PluginConflict` naming both plugins (``convention.names``:
      what the names are).

    Wrapper hooks have no caller: pluggy calls them (engine/manager.py).
    """
    kind, into = convention.kind, convention.into
    if kind == "wrapper":
        raise ValueError(f"{hook_name} is a wrapper hook: pluggy calls its wrappers, not a written caller")
    if kind == "exclusive" and len(impls) > 1:
        raise ValueError(f"{hook_name} takes one provider, not {len(impls)}")
    if _OWN_NAMES & set(params):
        raise ValueError(f"{hook_name}'s arguments {sorted(_OWN_NAMES & set(params))} clash with the caller's names")
    namespace: dict[str, Any] = {"merge_into": merge_into, "what": convention.names}
    lines = [f"def {hook_name}({', '.join(params)}):"]
    alone = kind == "merge" and into is None and len(impls) == 1  # nothing to clash with: a copy
    if kind in ("collect", "per plugin"):
        lines.append("    results = []")
    elif kind == "merge" and not alone:
        lines.append(f"    merged, owners = {into or '{}'}, {{}}")
    for plugin, fn, argnames in impls:
        unknown = set(argnames) - set(params)
        if unknown:  # pluggy refuses these at registration; never write a name the spec does not have
            raise ValueError(f"{plugin}.{hook_name} takes {sorted(unknown)}, not in the spec {params}")
        callee = _callee_name(plugin, hook_name, namespace)
        namespace[callee] = fn
        call = f"{callee}({', '.join(argnames)})"
        if kind == "notify":
            lines.append(f"    {call}")
        elif kind == "exclusive":
            lines.append(f"    return {call}")
        elif alone:
            lines += [f"    r = {call}", "    return {} if r is None else dict(r)"]
        else:
            then = {
                "fold": f"{into} = r",
                "merge": f"merge_into(merged, owners, r, {plugin!r}, what)",
            }.get(kind, f"results.append(({plugin!r}, r))")
            lines += [f"    r = {call}", "    if r is not None:", f"        {then}"]
    if not alone and not (kind == "exclusive" and impls):
        result = {"notify": "None", "exclusive": "None", "fold": into, "merge": "merged"}.get(kind, "results")
        lines.append(f"    return {result}")
    source = "\n".join(lines) + "\n"
    filename = _register_source(source, f"<hookmix caller {hook_name}>")
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - text built above from names only
    return namespace[hook_name]


def _callee_name(plugin: str, hook_name: str, taken: dict[str, Any]) -> str:
    """``plugin__hook_name`` as an identifier not in ``taken`` (plugin names are identifiers; any
    other character becomes ``_``, and a second plugin that maps to the same name gets a number)."""
    safe = re.sub(r"\W", "_", plugin)
    if not safe.isidentifier():  # empty, or starts with a digit
        safe = f"_{safe}"
    name, count = f"{safe}__{hook_name}", 1
    while name in taken:
        count += 1
        name = f"{safe}_{count}__{hook_name}"
    return name


def _register_source(source: str, filename: str) -> str:
    """Put ``source`` in :mod:`linecache` under ``filename`` and return the name; another text already
    there under that name (another run's plan) keeps it, and this one gets a numbered name."""
    base, count = filename, 1
    while True:
        entry = (len(source), None, source.splitlines(True), filename)  # no mtime: checkcache keeps it
        if linecache.cache.setdefault(filename, entry) == entry:
            return filename
        count += 1
        filename = f"{base[:-1]} #{count}>"


def merge_into(merged: dict, owners: dict[str, str], named: dict, plugin: str, what: str) -> None:
    """Add ``plugin``'s named results to ``merged`` (``owners``: who gave each name; names already in
    ``merged`` without an owner came with it, e.g. the model's outputs); a name given twice is an error."""
    for key, value in named.items():
        if key in merged:
            raise PluginConflict(
                f"{what} {key!r} returned by both {owners.get(key, 'the model outputs')} and "
                f"{plugin}; rename one (plugin config) or disable one plugin"
            )
        merged[key] = value
        owners[key] = plugin
