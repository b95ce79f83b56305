"""``HOOKMIX_PROFILE=1``: wall time per hook and plugin, printed as a table at the end of a run."""

from __future__ import annotations

import time
from typing import Callable


class Profile:
    """Per-hook, per-plugin wall time (``HOOKMIX_PROFILE=1``), printed as a table at the end of a run.

    The manager hands every plugin's implementation to :meth:`timed` (or, for a wrapper of a wrapper
    hook, :meth:`timed_wrapper`) once at setup and calls what it gets back, so a run without
    profiling pays nothing. Times include the work a hook starts on the device only where it
    synchronises.
    """

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], list[float]] = {}  # (hook, plugin) -> [calls, seconds]

    def timed(self, hook_name: str, plugin: str, fn: Callable) -> Callable:
        """``fn`` (``plugin``'s implementation of ``hook_name``) adding the time of each call to the table."""

        def timed(*args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.add(hook_name, plugin, time.perf_counter() - t0)

        return timed

    def timed_wrapper(self, hook_name: str, plugin: str, fn: Callable) -> Callable:
        """``fn`` (a ``wrapper=True`` implementation: a generator function pluggy drives) timed over its own
        code, before its ``yield`` and after it; the calls it wraps are not counted as its time."""

        def timed(*args, **kwargs):
            wrapper = fn(*args, **kwargs)
            resume, value = wrapper.send, None  # the first send(None) runs it up to its yield
            seconds = 0.0
            try:
                while True:  # once for a well-behaved wrapper: it yields once
                    t0 = time.perf_counter()
                    try:
                        request = resume(value)
                    except StopIteration as stop:
                        return stop.value
                    finally:
                        seconds += time.perf_counter() - t0
                    try:
                        value, resume = (yield request), wrapper.send  # the inner calls run here
                    except GeneratorExit:
                        wrapper.close()
                        raise
                    except BaseException as exc:  # the inner calls failed: the wrapper sees the exception
                        value, resume = exc, wrapper.throw
            finally:
                self.add(hook_name, plugin, seconds)

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
