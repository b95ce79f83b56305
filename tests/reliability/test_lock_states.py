"""Every state a ``.hookmix.lock`` entry can be in, for a fresh run and for ``--resume``.

Each state either proceeds (a stale lock taken over, with a note) or is refused with one line,
exit 2, naming the lock file and the fix for that command; never a traceback, never a write through
a link to the file it points to, and a refusal leaves the run directory as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import uuid

import pytest
from reliability_helpers import TINY_GPT, cli, one_line

from engine import BadInput
from engine.rundir.claim import Claim
from engine.rundir.directory import RunDir
from engine.rundir.lock import NAME

HOST = socket.gethostname()
STALE = "taken over"  # the state proceeds: a note names the old holder, then the run trains
FREE = "free"  # the state proceeds without a note (nothing to take over)


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _record(**fields) -> bytes:
    return json.dumps(fields).encode()


def _write(data: bytes):
    def make(lock: str, outside: str) -> None:
        with open(lock, "wb") as f:
            f.write(data)

    return make


def _symlink_to(kind: str):
    def make(lock: str, outside: str) -> None:
        target = os.path.join(outside, "target")
        if kind == "file":
            with open(target, "w") as f:
                f.write("precious: not hookmix's\n")
        elif kind == "directory":
            os.mkdir(target)
        os.symlink(target, lock)

    return make


def _hard_link(lock: str, outside: str) -> None:
    target = os.path.join(outside, "target")
    with open(target, "w") as f:
        f.write("precious: not hookmix's\n")
    os.link(target, lock)


def _special(kind: str):
    def make(lock: str, outside: str) -> None:
        if kind == "fifo":
            os.mkfifo(lock)
        elif kind == "directory":
            os.mkdir(lock)
            with open(os.path.join(lock, "inside"), "w") as f:
                f.write("x")
        else:  # an unreadable lock file (only for users chmod stops)
            with open(lock, "wb") as f:
                f.write(_record(host=HOST, pid=_dead_pid(), started="then"))
            os.chmod(lock, 0)

    return make


_LINK = r"is a symbolic link \(to '[^']+'\), which hookmix does not write through; remove the link"
# state name -> (how to make it, expected outcome: FREE, STALE + what the note says, or a refusal's pattern)
LOCAL_STATES = {
    "absent": (lambda lock, outside: None, FREE),
    "empty": (_write(b""), FREE),
    "whitespace": (_write(b"\n \n"), FREE),
    "own host, live pid, no flock": (_write(_record(host=HOST, pid=1, started="then")), (STALE, r"pid 1 on host")),
    "own host, dead pid": (_write(_record(host=HOST, pid=_dead_pid(), started="then")), (STALE, r"pid \d+ on host")),
    "other host": (_write(_record(host="elsewhere", pid=1, started="then")), (STALE, "on host elsewhere")),
    "cut short by a kill": (_write(b'{"host": "h", "pi'), (STALE, "it is not JSON")),
    "garbage bytes": (_write(b"\x00\x01\x02garbage{{"), (STALE, "it is not JSON")),
    "non-UTF-8": (_write(b"\xff\xfe\x80\x81 lock"), (STALE, "it is not UTF-8 text")),
    "huge": (_write(b"x" * (5 << 20)), (STALE, "it is over 4096 bytes")),
    "JSON list": (_write(b"[1, 2]"), (STALE, "it holds a JSON list, not an object")),
    "JSON wrong types": (_write(_record(host=5, pid="abc")), (STALE, "lacks a host, a pid or a start time")),
    "JSON bool pid": (_write(_record(host=HOST, pid=True, started="x")), (STALE, "lacks a host, a pid")),
    "JSON newline in host": (_write(_record(host="a\nb", pid=3, started="x")), (STALE, "lacks a host, a pid")),
    "symlink to a file": (_symlink_to("file"), _LINK),
    "dangling symlink": (_symlink_to("nothing"), _LINK),
    "symlink to a directory": (_symlink_to("directory"), _LINK),
    "hard link to another file": (
        _hard_link,
        r"has 2 hard links \(it is another file too\), which hookmix would overwrite; remove this link",
    ),
    "directory": (_special("directory"), r"is a directory where hookmix's lock file belongs; move it away"),
    "fifo": (_special("fifo"), r"is a FIFO where hookmix's lock file belongs; remove it"),
    "no permission": (_special("unreadable"), r"cannot be opened \(Permission denied\); if no run is using"),
}


def _fix(mode: str, out: str) -> str:
    return (
        r", or pass another --out"
        if mode == "fresh"
        else rf", then run `hookmix train --resume {re.escape(out)}` again"
    )


def _tree(path: str) -> dict:
    """Every entry under ``path`` as (kind, bytes or link target), without following links or opening FIFOs."""
    entries = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                entries[full] = ("link", os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    entries[full] = ("file", f.read())
            else:
                entries[full] = (stat.S_IFMT(st.st_mode), None)
    return entries


@pytest.mark.parametrize("mode", ["fresh", "resume"])
@pytest.mark.parametrize("state", list(LOCAL_STATES))
def test_lock_file_state(state, mode, finished_run, tmp_path, capsys):
    make, expected = LOCAL_STATES[state]
    if state == "no permission" and os.geteuid() == 0:
        pytest.skip("root opens a file chmod 000 regardless")
    out, outside = str(tmp_path / "run"), str(tmp_path / "outside")
    os.makedirs(outside)
    if mode == "fresh":
        os.makedirs(out)
    else:
        shutil.copytree(finished_run, out)
    lock = os.path.join(out, NAME)
    make(lock, outside)
    before, before_outside = _tree(out), _tree(outside)
    if mode == "fresh":
        argv = ["train", "shakespeare-gpt", *TINY_GPT, "run.steps=1", "--quiet", "--out", out]
    else:
        argv = ["train", "--resume", out, "run.steps=3", "--quiet"]

    code, stdout, err = cli(*argv, capsys=capsys)

    assert "Traceback" not in err
    assert _tree(outside) == before_outside  # nothing written through a link, nothing created at its target
    if isinstance(expected, str) and expected != FREE:  # refused
        line = one_line(err)
        assert code == 2, line
        pattern = rf"hookmix: error: run directory {re.escape(out)}: {re.escape(lock)} {expected}{_fix(mode, out)}"
        assert re.fullmatch(pattern, line), line
        assert _tree(out) == before  # the lock entry and the run's files as they were
        return
    assert code == 0, err
    assert "done:" in stdout
    assert not os.path.lexists(lock)  # released at exit
    notes = [n for n in err.splitlines() if "recipe changed on resume" not in n]
    if expected == FREE:
        assert notes == []
    else:
        (note,) = notes
        assert re.fullmatch(
            rf"hookmix: note: {re.escape(out)} was locked by .*{expected[1]}.*, which is gone \(killed\?\); "
            rf"taking the run directory over",
            note,
        ), note


def _holding_process(lock: str, content: bytes) -> subprocess.Popen:
    """A process that holds the flock of ``lock`` (content as given) until its stdin closes."""
    code = (
        "import fcntl, os, sys\n"
        f"f = open({lock!r}, 'wb')\n"
        "fcntl.flock(f, fcntl.LOCK_EX)\n"
        f"f.write({content!r}); f.flush()\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


@pytest.mark.parametrize("mode", ["fresh", "resume"])
@pytest.mark.parametrize("garbled", [False, True])
def test_lock_held_by_a_live_process_is_refused(garbled, mode, finished_run, tmp_path, capsys):
    out = str(tmp_path / "run")
    if mode == "fresh":
        os.makedirs(out)
    else:
        shutil.copytree(finished_run, out)
    lock = os.path.join(out, NAME)
    content = b"\xff garbled" if garbled else _record(host=HOST, pid=4242, started="then")
    holder = _holding_process(lock, content)
    try:
        before = _tree(out)
        argv = ["train", "--resume", out, "run.steps=3"] if mode == "resume" else []
        argv = argv or ["train", "shakespeare-gpt", *TINY_GPT, "run.steps=1", "--out", out]
        code, _, err = cli(*argv, capsys=capsys)
        who = "an unknown process" if garbled else f"pid 4242 on host {re.escape(HOST)} \\(since then\\)"
        line = one_line(err)
        assert code == 2
        assert re.fullmatch(
            rf"hookmix: error: run directory {re.escape(out)} is in use by {who}; wait for that run to end or "
            rf"stop it{_fix(mode, out)}",
            line,
        ), line
        assert _tree(out) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


# --- filesystems without locks (memory://): the lock file is advisory ------------------------

MEMORY_STATES = {
    "absent": (None, FREE),
    "own host, dead pid": (_record(host=HOST, pid=_dead_pid(), started="then"), STALE),
    "own host, live pid": (_record(host=HOST, pid=1, started="then"), r"is in use by pid 1 on host"),
    "other host": (_record(host="elsewhere", pid=1, started="then"), r"is in use by pid 1 on host elsewhere"),
    "empty": (b"", r"holds no holder record \(it is empty\)"),
    "cut short": (b'{"host": "h", "pi', r"holds no holder record \(it is not JSON\)"),
    "non-UTF-8": (b"\xff\xfe\x80", r"holds no holder record \(it is not UTF-8 text\)"),
    "huge": (b"{" * (1 << 20), r"holds no holder record \(it is over 4096 bytes\)"),
    "JSON list": (b"[1]", r"holds no holder record \(it holds a JSON list, not an object\)"),
    "JSON wrong types": (_record(host=["x"], pid=-1), r"holds no holder record \(it lacks a host"),
    "directory": ("directory", r"is a directory where hookmix's lock file belongs; move it away"),
}


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
@pytest.mark.parametrize("state", list(MEMORY_STATES))
def test_advisory_lock_file_state(state, resume, capsys):
    content, expected = MEMORY_STATES[state]
    url = f"memory://lock-states-{uuid.uuid4().hex}/run"
    run_dir = RunDir(url)
    run_dir.makedirs()
    if resume:  # what the claim looks at: a recipe and a checkpoint name
        run_dir.write_text_atomic("recipe.toml", "[run]\n")
        run_dir.write_text_atomic("checkpoints/step-00000002.pt", "")
    if content == "directory":
        run_dir.makedirs(NAME)
    elif content is not None:
        run_dir.write_bytes_atomic(NAME, content)
    before = {p: run_dir.fs.cat_file(p) for p in run_dir.fs.find(run_dir.path)}
    claim = Claim(run_dir)
    if expected in (FREE, STALE):
        assert claim.take(resume) is resume
        assert json.loads(run_dir.read_text(NAME))["pid"] == os.getpid()
        claim.release()
        assert not run_dir.exists(NAME)
        err = capsys.readouterr().err
        assert ("was locked by pid" in err) is (expected == STALE)
        return
    with pytest.raises(BadInput) as refused:
        claim.take(resume)
    message = str(refused.value)
    assert "\n" not in message
    assert re.search(expected, message), message
    if "in use by" not in message:
        assert message.startswith(f"run directory {url}: {url}/{NAME} ")
        assert message.endswith("then run `hookmix train --resume " + url + "` again" if resume else "another --out")
    assert {p: run_dir.fs.cat_file(p) for p in run_dir.fs.find(run_dir.path)} == before  # nothing changed
