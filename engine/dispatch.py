"""Hook callers written once per run: one direct call per implementation, in plan order.

A generic dispatch loop (pluggy's, or one over prepared calls) builds a keyword dict per call,
loops over the implementations, picks each one's arguments out of the dict and collects the
results, several times per training step (``python tests/perf/dispatch_cost.py`` times it). The
plan is fixed when a run starts, so the manager writes, for every hook, a small function that does
only the calls (the implementations it calls and the plugin names are bound in its namespace; the text
holds nothing but argument names, which pluggy has checked against the hook spec):

    def hookmix_loss_terms(batch, outputs, state):       # collect-all
        results = []
        r = _f0(batch, outputs, state)                   # cross_entropy
        if r is not None:
            results.append((_n0, r))
        r = _f1(outputs)                                 # a plugin that takes only ``outputs``
        if r is not None:
            results.append((_n1, r))
        return results

    def hookmix_transform_logits(logits, role, consumer, kind, state):   # ordered fold over ``logits``
        r = _f0(logits, role, consumer, kind, state)
        if r is not None:
            logits = r
        return logits

A caller takes the spec's arguments by position or keyword and keeps its text in ``source``.
"""

from __future__ import annotations

from typing import Any, Callable

Impl = tuple[str, Callable, tuple[str, ...]]  # (plugin name, function, the argument names it takes)


def make_caller(hook_name: str, params: tuple[str, ...], impls: list[Impl], fold: str | None = None,
                collect: bool = True) -> Callable:
    """The caller of ``hook_name``: collect-all (a list of (plugin, result) for results that are not
    None); with ``fold``, an ordered fold that passes each result on as argument ``fold``; with
    ``collect=False``, calls only (hooks whose results the engine does not use: it returns None)."""
    namespace: dict[str, Any] = {}
    lines = [f"def {hook_name}({', '.join(params)}):"]
    if fold is None and collect:
        lines.append("    results = []")
    for i, (plugin, fn, argnames) in enumerate(impls):
        unknown = set(argnames) - set(params)
        if unknown:  # pluggy refuses these at registration; never write a name the spec does not have
            raise ValueError(f"{plugin}.{hook_name} takes {sorted(unknown)}, not in the spec {params}")
        namespace[f"_f{i}"], namespace[f"_n{i}"] = fn, plugin
        call = f"_f{i}({', '.join(argnames)})"
        if fold is None and not collect:
            lines.append(f"    {call}")
        else:
            lines += [f"    r = {call}", "    if r is not None:",
                      f"        {fold} = r" if fold else f"        results.append((_n{i}, r))"]
    lines.append(f"    return {fold or ('results' if collect else 'None')}")
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<hookmix caller {hook_name}>", "exec"), namespace)  # noqa: S102 - text built above
    caller = namespace[hook_name]
    caller.source = source
    return caller
