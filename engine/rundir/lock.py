"""One writer per run directory: an exclusive lock file, ``.hookmix.lock``, in the directory.

On a local disk the lock is ``fcntl.flock`` on a file that stays open while the run lives: the
kernel drops it when the process dies, however it dies, so a lock left by ``kill -9`` is never
mistaken for a live one. The file holds the holder's host, pid and start time, which a second
writer reports. A lock file whose flock is free is stale (its holder is gone): it is taken over
with a note naming the old holder.

Other fsspec filesystems (``memory://``, object stores) have no locks. There the lock file is
advisory: written when absent and refused when present, but two processes that check at the
same moment can both win, and a lock left by a killed process on another host must be removed
by hand (the message says which file). docs/reliability.md states these guarantees.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
import weakref

from engine.errors import BadInput
from engine.rundir.directory import RunDir

NAME = ".hookmix.lock"
_HELD: dict[str, weakref.ref] = {}  # advisory locks held by this process: url -> its RunLock


def _holder_text() -> str:
    return json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    )


def _describe(text: str) -> tuple[str, dict]:
    try:
        info = json.loads(text)
        if not isinstance(info, dict):
            raise ValueError
    except ValueError:
        return "an unknown process", {}
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (since {info.get('started', '?')})", info


def write_error(url: str, exc: OSError) -> BadInput:
    """Bad input naming the run directory that cannot be written and what to do."""
    reason = os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
    fix = {
        errno.ENOSPC: "free disk space or choose another --out",
        errno.EDQUOT: "free quota or choose another --out",
    }.get(exc.errno, "choose a writable --out")
    return BadInput(f"cannot write to run directory {url} ({reason}); {fix}")


class RunLock:
    """Held from ``acquire()`` to ``release()`` (or until the process ends)."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self.url = run_dir.url(NAME)
        self._file = None
        self._finalizer = None
        self.taken_over: str | None = None  # description of a stale holder we replaced

    def acquire(self) -> None:
        if self.run_dir.is_local:
            self._acquire_local(os.path.join(self.run_dir.path, NAME))
        else:
            self._acquire_advisory()
        if self.taken_over:
            print(
                f"hookmix: note: {self.run_dir.url()} was locked by {self.taken_over}, which is gone "
                f"(killed?); taking the run directory over",
                file=sys.stderr,
            )

    def _acquire_local(self, path: str) -> None:
        for _ in range(10):  # retried only when the holder unlinked the file between our open and flock
            try:
                f = open(path, "a+")
            except OSError as exc:
                raise write_error(self.run_dir.url(), exc) from None
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                who, _ = _describe(f.read())
                f.close()
                raise BadInput(
                    f"run directory {self.run_dir.url()} is in use by {who}; wait for that run to "
                    f"end or stop it, or pass another --out"
                ) from None
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # we locked a file its holder had just removed: lock the current one
                f.close()
                continue
            f.seek(0)
            previous = f.read()
            if previous.strip():
                self.taken_over, _ = _describe(previous)
            try:
                f.seek(0)
                f.truncate()
                f.write(_holder_text() + "\n")
                f.flush()
                os.fsync(f.fileno())  # also the writability probe: a full disk fails here
            except OSError as exc:
                f.close()
                raise write_error(self.run_dir.url(), exc) from None
            self._file = f
            self._finalizer = weakref.finalize(self, _unlink_local, f, path)
            return
        raise BadInput(
            f"run directory {self.run_dir.url()} lock file keeps changing; is another run starting "
            f"there? pass another --out"
        )

    def _acquire_advisory(self) -> None:
        name = NAME
        if self.run_dir.exists(name):
            who, info = _describe(self.run_dir.read_text(name))
            mine = info.get("host") == socket.gethostname()
            held_here = (ref := _HELD.get(self.url)) is not None and ref() is not None
            alive = mine and info.get("pid") != os.getpid() and _pid_alive(info.get("pid"))
            if held_here or alive or not mine:
                raise BadInput(
                    f"run directory {self.run_dir.url()} is in use by {who}; wait for that run to end, "
                    f"or, if it is gone, delete {self.url} (this filesystem has no locks)"
                )
            self.taken_over = who
        try:
            self.run_dir.write_text_atomic(name, _holder_text() + "\n")
        except OSError as exc:
            raise write_error(self.run_dir.url(), exc) from None
        _HELD[self.url] = weakref.ref(self)
        self._finalizer = weakref.finalize(self, _remove_advisory, self.run_dir, self.url)

    def release(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
            self._file = None


def _unlink_local(f, path: str) -> None:
    # unlink while still holding the flock, so no one locks the file we are about to drop
    try:
        os.unlink(path)
    except OSError:
        pass
    f.close()


def _remove_advisory(run_dir: RunDir, url: str) -> None:
    _HELD.pop(url, None)
    try:
        run_dir.remove(NAME)
    except OSError:
        pass


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
