"""One writer per run directory: the lock, its holder in the message, stale locks, real racing processes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid

import pytest
from reliability_helpers import TINY_GPT, cli, hookmix_process, one_line

from engine import BadInput
from engine.rundir.directory import RunDir
from engine.rundir.lock import NAME, RunLock


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@pytest.mark.parametrize("url", ["local", "memory"])
def test_second_writer_is_refused_naming_the_holder(url, tmp_path):
    url = str(tmp_path / "run") if url == "local" else f"memory://lock-{uuid.uuid4().hex}"
    run_dir = RunDir(url)
    run_dir.makedirs()
    first = RunLock(run_dir)
    first.acquire()
    with pytest.raises(
        BadInput,
        match=rf"^run directory {re.escape(url)} is in use by pid {os.getpid()} on host "
        rf"{re.escape(socket.gethostname())} \(since [\d\-T:+]+\); wait for that run",
    ):
        RunLock(run_dir).acquire()
    first.release()
    assert NAME not in run_dir.list("")  # released: the lock file is gone
    second = RunLock(run_dir)
    second.acquire()  # and the directory is free again
    second.release()


@pytest.mark.parametrize("url", ["local", "memory"])
def test_lock_left_by_a_killed_process_is_taken_over(url, tmp_path, capsys):
    url = str(tmp_path / "run") if url == "local" else f"memory://lock-{uuid.uuid4().hex}"
    run_dir = RunDir(url)
    pid = _dead_pid()
    run_dir.write_text_atomic(NAME, json.dumps({"host": socket.gethostname(), "pid": pid, "started": "then"}))
    lock = RunLock(run_dir)
    lock.acquire()
    assert lock.taken_over == f"pid {pid} on host {socket.gethostname()} (since then)"
    assert one_line(capsys.readouterr().err) == (
        f"hookmix: note: {url} was locked by pid {pid} on host "
        f"{socket.gethostname()} (since then), which is gone (killed?); "
        f"taking the run directory over"
    )
    assert json.loads(run_dir.read_text(NAME))["pid"] == os.getpid()
    lock.release()


def test_lock_of_another_host_on_a_lockless_filesystem_is_respected():
    url = f"memory://lock-{uuid.uuid4().hex}"
    run_dir = RunDir(url)
    run_dir.write_text_atomic(NAME, json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
    with pytest.raises(
        BadInput,
        match=rf"in use by pid 1 on host elsewhere \(since then\); wait for that run to "
        rf"end, or, if it is gone, delete {re.escape(url)}/{NAME} \(this filesystem",
    ):
        RunLock(run_dir).acquire()


def test_a_run_holds_the_lock_until_it_ends(tmp_path, capsys):
    out = str(tmp_path / "run")
    code, _, _ = cli("train", "shakespeare-gpt", *TINY_GPT, "run.steps=2", "--quiet", "--out", out, capsys=capsys)
    assert code == 0
    assert NAME not in os.listdir(out)  # released at exit


def test_two_processes_racing_for_one_run_directory(tmp_path):
    """Two real `hookmix train` with the same fresh --out: exactly one runs, the other is refused."""
    out = str(tmp_path / "run")
    args = ["train", "shakespeare-gpt", *TINY_GPT, "run.steps=40", "run.log_interval=1", "--quiet", "--out", out]
    procs = [hookmix_process(*args) for _ in range(2)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser_err = next(err for code, _, err in results if code == 2)
    assert re.fullmatch(
        rf"hookmix: error: run directory {re.escape(out)} (is in use by pid \d+ on host \S+ "
        rf"\(since \S+\); wait for that run to end or stop it, or pass another --out|already holds "
        rf"a run; pass --out NEW_DIR, or --resume {re.escape(out)})\n",
        loser_err,
    ), loser_err
    steps = [json.loads(line)["step"] for line in open(os.path.join(out, "metrics.jsonl"))]
    assert steps == [*range(1, 41), 40]  # one writer: no interleaved or repeated records (+ the final eval)
