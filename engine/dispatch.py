"""Hook callers written once per run: one direct call per implementation, in plan order.

A generic dispatch loop (pluggy's, or one over prepared calls) builds a keyword dict per call,
loops over the implementations, picks each one's arguments out of the dict and collects the
results, several times per training step (``python tests/perf/dispatch_cost.py`` times it). The
plan is fixed when a run starts, so the manager writes, for every hook, a small function that does
only the calls (the implementations it calls and the plugin names are bound in its namespace; the text
holds nothing but argument names, which pluggy has checked against the hook spec):

    def hookmix_loss_terms(batch, outputs, state):       # merged named results
        merged, owners = {}, {}
        r = _f0(batch, outputs, state)                   # kd
        if r is not None:
            _merge(merged, owners, r, _n0, _what)        # a name given twice: an error naming both
        r = _f1(outputs)                                 # a plugin that takes only ``outputs``
        if r is not None:
            _merge(merged, owners, r, _n1, _what)
        return merged

    def hookmix_transform_logits(logits, role, consumer, kind, state):   # ordered fold over ``logits``
        r = _f0(logits, role, consumer, kind, state)
        if r is not None:
            logits = r
        return logits

The manager binds the per-step hooks' callers as its methods (engine/manager.py), so that a hook
call in the training step is one Python call into this text. A caller takes the spec's arguments
by position or keyword and keeps its text in ``source``.
"""

from __future__ import annotations

from typing import Any, Callable

from engine.errors import PluginConflict

Impl = tuple[str, Callable, tuple[str, ...]]  # (plugin name, function, the argument names it takes)


def make_caller(
    hook_name: str,
    params: tuple[str, ...],
    impls: list[Impl],
    combine: str = "collect",
    into: str | None = None,
    what: str = "result",
) -> Callable:
    """The caller of ``hook_name``; ``combine`` says what it does with the results:

    - ``"collect"``: returns a list of (plugin, result) for the results that are not None;
    - ``"call"``: calls only and returns None (hooks whose results the engine does not use);
    - ``"exclusive"``: returns the one implementation's result (None without one);
    - ``"fold"``: each result that is not None replaces argument ``into``; returns it;
    - ``"merge"``: the returned dicts merged into a new dict, or into argument ``into``; a name
      returned twice is a :class:`PluginConflict` naming both plugins (``what``: the kind of name).
    """
    if combine == "exclusive" and len(impls) > 1:
        raise ValueError(f"{hook_name} takes one provider, not {len(impls)}")
    namespace: dict[str, Any] = {"_merge": merge_into, "_what": what}
    lines = [f"def {hook_name}({', '.join(params)}):"]
    alone = combine == "merge" and into is None and len(impls) == 1  # nothing to clash with: a copy
    if combine == "collect":
        lines.append("    results = []")
    elif combine == "merge" and not alone:
        lines.append(f"    merged, owners = {into or '{}'}, {{}}")
    for i, (plugin, fn, argnames) in enumerate(impls):
        unknown = set(argnames) - set(params)
        if unknown:  # pluggy refuses these at registration; never write a name the spec does not have
            raise ValueError(f"{plugin}.{hook_name} takes {sorted(unknown)}, not in the spec {params}")
        namespace[f"_f{i}"], namespace[f"_n{i}"] = fn, plugin
        call = f"_f{i}({', '.join(argnames)})"
        if combine == "call":
            lines.append(f"    {call}")
        elif combine == "exclusive":
            lines.append(f"    return {call}")
        elif alone:
            lines += [f"    r = {call}", "    return {} if r is None else dict(r)"]
        else:
            then = {
                "collect": f"results.append((_n{i}, r))",
                "fold": f"{into} = r",
                "merge": f"_merge(merged, owners, r, _n{i}, _what)",
            }[combine]
            lines += [f"    r = {call}", "    if r is not None:", f"        {then}"]
    if not alone and not (combine == "exclusive" and impls):
        result = {"collect": "results", "call": "None", "exclusive": "None", "fold": into, "merge": "merged"}[combine]
        lines.append(f"    return {result}")
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<hookmix caller {hook_name}>", "exec"), namespace)  # noqa: S102 - text built above
    caller = namespace[hook_name]
    caller.source = source
    return caller


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
