"""One writer per run directory: an exclusive lock file, ``.hookmix.lock``, in the directory.

On a local disk the lock is ``fcntl.flock`` on a file that stays open while the run lives: the
kernel drops it when the process dies, however it dies, so a lock left by ``kill -9`` is never
mistaken for a live one. The file holds the holder's host, pid and start time, which a second
writer reports. A lock file whose flock is free is stale (its holder is gone): it is taken over
with a note naming the old holder.

The lock file is opened with ``O_NOFOLLOW`` and must be a regular file with one link: a symbolic
link, a hard link to another file, a directory or a FIFO in its place is refused (one line naming
it), so hookmix never truncates or writes a file that a ``.hookmix.lock`` entry points to.

A lock file whose content is no holder record (empty, cut short, not UTF-8, not JSON, another
shape, over 4 KiB) is, on a local disk, stale once its flock is free: every live hookmix holder
keeps the flock, and a kill between truncating and rewriting the file leaves exactly such content,
so refusing it would strand every run killed at that moment. It is taken over with a note saying
the record was unreadable. Without flock (below) nothing proves it stale, so it is refused.

Other fsspec filesystems (``memory://``, object stores) have no locks. There the lock file is
advisory: written when absent and refused when present, but two processes that check at the
same moment can both win, and a lock left by a killed process on another host must be removed
by hand (the message says which file). Object stores have no links to follow; the lock file is
written to a temporary name and moved into place, which replaces a directory entry rather than
writing through it. docs/reliability.md states these guarantees.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
import weakref

from engine.errors import BadInput
from engine.rundir.directory import RunDir

NAME = ".hookmix.lock"
MAX_RECORD = 4096  # a holder record is about 100 bytes: more is not one, and is not read further
_HELD: dict[str, weakref.ref] = {}  # advisory locks held by this process: url -> its RunLock
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}


def _holder_text() -> str:
    return json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    )


def parse_holder(data: bytes) -> tuple[dict | None, str]:
    """(the holder record in a lock file's bytes, "") or (None, why they are not one).

    A record is a JSON object with a printable ``host``, a positive integer ``pid`` and, optionally, a
    printable ``started``; only such values reach a message (a newline in one would split the line).
    """
    if not data.strip():
        return None, "it is empty"
    if len(data) > MAX_RECORD:
        return None, f"it is over {MAX_RECORD} bytes"
    try:
        info = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "it is not UTF-8 text"
    except ValueError:
        return None, "it is not JSON"
    if not isinstance(info, dict):
        return None, f"it holds a JSON {type(info).__name__}, not an object"
    host, pid, started = info.get("host"), info.get("pid"), info.get("started", "?")
    if not (_printable(host) and _printable(started) and type(pid) is int and pid > 0):  # bool is no pid
        return None, "it lacks a host, a pid or a start time of the right type"
    return {"host": host, "pid": pid, "started": started}, ""


def _printable(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 255 and value.isprintable()


def describe(info: dict | None, why: str = "") -> str:
    """The holder as a message names it."""
    if info is None:
        return f"an unknown process (the lock file holds no holder record: {why})" if why else "an unknown process"
    return f"pid {info['pid']} on host {info['host']} (since {info['started']})"


def write_error(url: str, exc: OSError, resume: bool = False) -> BadInput:
    """Bad input naming the run directory that cannot be written and what to do."""
    reason = os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
    if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST) and exc.filename:  # the layout, not the disk
        fix = f"{exc.filename} is in the way: move it away"
        return BadInput(f"cannot write to run directory {url} ({reason}); {fix}, {again(url, resume)}")
    if resume:
        action = "free disk space or quota" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
        return BadInput(f"cannot write to run directory {url} ({reason}); {action}, {again(url, resume)}")
    fix = {
        errno.ENOSPC: "free disk space or choose another --out",
        errno.EDQUOT: "free quota or choose another --out",
    }.get(exc.errno, "choose a writable --out")
    return BadInput(f"cannot write to run directory {url} ({reason}); {fix}")


def again(url: str, resume: bool) -> str:
    """The end of a fix: how to retry the command that was refused."""
    return f"then run `hookmix train --resume {url}` again" if resume else "or pass another --out"


class RunLock:
    """Held from ``acquire()`` to ``release()`` (or until the process ends)."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self.url = run_dir.url(NAME)
        self._file = None
        self._finalizer = None
        self.taken_over: str | None = None  # description of a stale holder we replaced
        self.resume = False  # the refused command was a --resume (its fix differs)

    def acquire(self, resume: bool = False) -> None:
        self.resume = resume
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

    def _refuse(self, problem: str, action: str) -> BadInput:
        """One line: the lock file, what is wrong with it, the fix."""
        return BadInput(
            f"run directory {self.run_dir.url()}: {self.url} {problem}; {action}, "
            f"{again(self.run_dir.url(), self.resume)}"
        )

    def _open_local(self, path: str):
        """The lock file opened for reading and writing, or bad input when what is there is no lock file.

        O_NOFOLLOW: a link in its place fails (ELOOP) instead of creating or truncating its target.
        O_NONBLOCK: opening a FIFO that raced in after the check below does not wait for a writer.
        """
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            self._check_kind(path, st)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if os.path.islink(path) or os.path.isdir(path):  # swapped in after the check
                self._check_kind(path, os.lstat(path))
            if exc.errno in (errno.EACCES, errno.EPERM) and os.path.lexists(path):
                raise self._refuse(
                    f"cannot be opened ({os.strerror(exc.errno)})", "if no run is using the directory, remove it"
                ) from None
            raise write_error(self.run_dir.url(), exc, self.resume) from None
        f = os.fdopen(fd, "r+b")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            f.close()
            self._check_kind(path, st)
        return f

    def _check_kind(self, path: str, st: os.stat_result) -> None:
        """Bad input for anything but a regular file with one link where the lock file belongs."""
        if stat.S_ISLNK(st.st_mode):
            raise self._refuse(
                f"is a symbolic link (to {_link_target(path)!r}), which hookmix does not write through",
                "remove the link",
            )
        if stat.S_ISDIR(st.st_mode):
            raise self._refuse("is a directory where hookmix's lock file belongs", "move it away")
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise self._refuse(f"is {kind} where hookmix's lock file belongs", "remove it")
        if st.st_nlink > 1:  # a hard link: writing the lock would rewrite that other file too
            raise self._refuse(
                f"has {st.st_nlink} hard links (it is another file too), which hookmix would overwrite",
                "remove this link",
            )

    def _acquire_local(self, path: str) -> None:
        for _ in range(10):  # retried only when the holder unlinked the file between our open and flock
            f = self._open_local(path)
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                info, _ = parse_holder(f.read(MAX_RECORD + 1))
                f.close()
                who = describe(info)  # a live holder whose record is unreadable (mid-write?) is "an unknown process"
                raise BadInput(
                    f"run directory {self.run_dir.url()} is in use by {who}; wait for that run to "
                    f"end or stop it, {again(self.run_dir.url(), self.resume)}"
                ) from None
            try:
                same = os.fstat(f.fileno()).st_ino == os.lstat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # we locked a file its holder had just removed (or one swapped away): lock the current one
                f.close()
                continue
            f.seek(0)
            previous = f.read(MAX_RECORD + 1)
            if previous.strip():  # the flock is free, so whatever the record says, its holder is gone
                self.taken_over = describe(*parse_holder(previous))
            try:
                f.seek(0)
                f.truncate()
                f.write((_holder_text() + "\n").encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())  # also the writability probe: a full disk fails here
            except OSError as exc:
                f.close()
                raise write_error(self.run_dir.url(), exc, self.resume) from None
            self._file = f
            self._finalizer = weakref.finalize(self, _unlink_local, f, path)
            return
        raise BadInput(
            f"run directory {self.run_dir.url()} lock file keeps changing; is another run starting "
            f"there? wait for it, {again(self.run_dir.url(), self.resume)}"
        )

    def _acquire_advisory(self) -> None:
        name, run_dir = NAME, self.run_dir
        if run_dir.isdir(name):
            raise self._refuse("is a directory where hookmix's lock file belongs", "move it away")
        if run_dir.exists(name):
            try:
                info, why = parse_holder(run_dir.read_head(name, MAX_RECORD + 1))
            except OSError as exc:
                raise self._refuse(
                    f"cannot be read ({exc.strerror or type(exc).__name__})",
                    "if no run is using the directory, delete it",
                ) from None
            if info is None:  # without flock nothing proves it stale: refuse rather than guess
                raise self._refuse(
                    f"holds no holder record ({why}), and this filesystem has no locks to tell whether "
                    f"a run holds the directory",
                    "if none does, delete it",
                )
            mine = info["host"] == socket.gethostname()
            held_here = (ref := _HELD.get(self.url)) is not None and ref() is not None
            alive = mine and info["pid"] != os.getpid() and _pid_alive(info["pid"])
            if held_here or alive or not mine:
                raise BadInput(
                    f"run directory {run_dir.url()} is in use by {describe(info)}; wait for that run to end, "
                    f"or, if it is gone, delete {self.url} (this filesystem has no locks)"
                )
            self.taken_over = describe(info)
        try:
            run_dir.write_text_atomic(name, _holder_text() + "\n")
        except OSError as exc:
            raise write_error(run_dir.url(), exc, self.resume) from None
        _HELD[self.url] = weakref.ref(self)
        self._finalizer = weakref.finalize(self, _remove_advisory, run_dir, self.url)

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


def _link_target(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # removed since: the message still names the link
        return "?"


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
