"""SIGINT / SIGTERM: outside the training loop they stop the command at once (one line, exit
130 / 143); inside it they are deferred to the end of the current step, so the loop can write a
checkpoint before exiting. A second signal while one is pending stops at once.

SLURM and Kubernetes send SIGTERM some seconds before SIGKILL: the step in progress finishes,
the checkpoint is written, and the run is resumable with ``hookmix train --resume DIR``.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from engine.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _raise_at_start(signum, frame):
    raise Interrupted(f"interrupted by {_name(signum)} before training started; nothing was trained", signum)


def _raise_now(signum, frame):
    raise Interrupted(
        f"interrupted by a second {_name(signum)}; stopped without saving: the last checkpoint "
        f"remains, continue with `hookmix train --resume RUN_DIR`",
        signum,
    )


def _installable() -> bool:  # signal handlers can only be set from the main thread
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def stop_at_once():
    """SIGTERM raises :class:`Interrupted` (SIGINT keeps raising KeyboardInterrupt): for start-up."""
    if not _installable():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_at_start)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Pending:
    """The first signal received inside :func:`deferred`, or ``None``."""

    signum: int | None = None

    @property
    def name(self) -> str:
        return _name(self.signum) if self.signum is not None else ""


@contextlib.contextmanager
def deferred():
    """Record SIGINT/SIGTERM instead of acting on them; the caller polls ``pending.signum``."""
    pending = Pending()
    if not _installable():
        yield pending
        return

    def record(signum, frame):
        if pending.signum is not None:  # a second signal: the user insists
            _raise_now(signum, frame)
        pending.signum = signum

    previous = {s: signal.signal(s, record) for s in SIGNALS}
    try:
        yield pending
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
