"""SIGINT / SIGTERM, from the command's first statement to its end. A signal is never lost, and it
never lands in the middle of an import or a write:

- start-up (:func:`start_up`, entered first thing by ``hookmix``): the signal is *recorded*;
  :func:`check` raises it as :class:`Interrupted` at the next safe point (between start-up phases,
  before the run directory is claimed, before anything is written): one line, exit 130 / 143,
  nothing written. A second signal stops at once (the user insists);
- training (:func:`deferred`): the signal is recorded and the loop acts on it at the end of the current
  step, after writing a checkpoint. A signal recorded after start-up's last check (the run directory
  is written by then) is handed over to the loop, which treats it the same way.

Why record instead of raising ``KeyboardInterrupt``: raised at a random moment, it lands inside an
import (torch cannot be imported a second time after that), or inside a library's ``except
BaseException`` that swallows it, or before the CLI's own handler is set: a traceback, or a signal
lost and the run trained anyway. SLURM and Kubernetes send SIGTERM some seconds before SIGKILL: the
step in progress finishes, the checkpoint is written, and ``hookmix train --resume DIR`` continues.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from engine.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _name(signum: int) -> str:
    return signal.Signals(signum).name


class Pending:
    """The first signal received and not yet acted on, or ``None``."""

    signum: int | None = None

    @property
    def name(self) -> str:
        return _name(self.signum) if self.signum is not None else ""


_start = Pending()  # recorded during start-up; read by check() and handed over to deferred()
_recording = False  # start_up() is in effect (the CLI); a library caller keeps Python's own handlers


def _installable() -> bool:  # signal handlers can only be set from the main thread
    return threading.current_thread() is threading.main_thread()


def _before_training(signum: int) -> Interrupted:
    return Interrupted(f"interrupted by {_name(signum)} before training started; nothing was trained", signum)


def _record_at_start(signum, frame):
    if _start.signum is not None:  # a second signal: stop at once
        raise _before_training(_start.signum)
    _start.signum = signum


@contextlib.contextmanager
def start_up():
    """Record SIGINT/SIGTERM until :func:`check` (or the training loop) acts on them. Re-entrant."""
    global _recording
    if _recording or not _installable():
        yield
        return
    _start.signum = None
    previous = {s: signal.signal(s, _record_at_start) for s in SIGNALS}
    _recording = True
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _recording = False
        _start.signum = None


def check(finished: bool = False) -> None:
    """A safe point of start-up: raise :class:`Interrupted` if a signal was recorded (else nothing).

    ``finished``: the command's work is done; a signal recorded since still decides the exit code.
    """
    if _start.signum is None:
        return
    signum, _start.signum = _start.signum, None
    if finished:
        raise Interrupted(f"interrupted by {_name(signum)} after the command finished; its work is complete", signum)
    raise _before_training(signum)


def _raise_now(signum, frame):
    raise Interrupted(
        f"interrupted by a second {_name(signum)}; stopped without saving: the last checkpoint "
        f"remains, continue with `hookmix train --resume RUN_DIR`",
        signum,
    )


@contextlib.contextmanager
def deferred():
    """Record SIGINT/SIGTERM instead of acting on them; the caller polls ``pending.signum``.

    A signal recorded at start-up after its last :func:`check` is pending from the start.
    """
    pending = Pending()
    pending.signum, _start.signum = _start.signum, None
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
