"""``HOOKMIX_PROFILE=1``: wall time per hook and plugin, printed as a table at the end of a run."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from engine.manager import Manager


class Profile:
    """Per-hook, per-plugin wall time (``HOOKMIX_PROFILE=1``), printed as a table at the end of a run.

    Timing wraps each implementation once at setup, so a run without the variable pays nothing.
    Times include the work a hook starts on the device only where it synchronises.
    """

    def __init__(self, manager: Manager) -> None:
        self.totals: dict[tuple[str, str], list[float]] = {}
        for hook_name, impls in manager._impls.items():
            manager._impls[hook_name] = [
                (name, self._timed(hook_name, name, fn), argnames) for name, fn, argnames in impls
            ]

    def _timed(self, hook_name: str, plugin: str, fn: Callable) -> Callable:
        def timed(*args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.add(hook_name, plugin, time.perf_counter() - t0)

        return timed

    def seconds(self, hook_name: str, plugin: str | None = None) -> float:
        """Total time spent in ``hook_name`` (by ``plugin``, or by all of them) so far."""
        return sum(t for (h, p), (_, t) in self.totals.items() if h == hook_name and plugin in (None, p))

    def reset(self) -> None:
        self.totals.clear()

    def add(self, hook_name: str, plugin: str, seconds: float) -> None:
        entry = self.totals.setdefault((hook_name, plugin), [0, 0.0])
        entry[0] += 1
        entry[1] += seconds

    def table(self) -> str:
        rows = sorted(self.totals.items(), key=lambda kv: -kv[1][1])
        lines = [
            "hookmix profile (HOOKMIX_PROFILE=1): time in hooks, by hook and plugin",
            f"  {'hook':<30} {'plugin':<22} {'calls':>7} {'total s':>9} {'per call ms':>12}",
        ]
        for (hook_name, plugin), (calls, total) in rows:
            lines.append(f"  {hook_name:<30} {plugin:<22} {calls:>7} {total:>9.3f} {1e3 * total / calls:>12.3f}")
        return "\n".join(lines)
