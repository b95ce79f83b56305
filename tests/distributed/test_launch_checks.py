"""`hookmix train --nproc` keeps the one-line promise: launcher arguments and the torchrun environment are
checked before anything starts, a restarted attempt means what the command meant, a signal to the launcher
stops the workers after a checkpoint, a missing node times out when the user said (real processes)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from dist_plugins import MLP_CLI

from engine.distributed import launch
from engine.distributed.env import read_env
from engine.errors import BadInput

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = [*MLP_CLI, "--quiet"]


def hookmix(*argv: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *argv],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def snapshot(path) -> dict:
    return {
        os.path.relpath(os.path.join(root, name), path): open(os.path.join(root, name), "rb").read()
        for root, _, files in os.walk(path)
        for name in files
    }


# --- launcher arguments: a generator of bad ones, each refused before anything starts ------------------

BAD_ARGUMENTS = [
    (["--nproc", "0"], "--nproc 0"),
    (["--nproc", "-2"], "--nproc -2"),
    (["--nproc", "two"], "invalid int value"),
    (["--nproc", "2", "--max-restarts", "-1"], "--max-restarts -1"),
    (["--nproc", "2", "--nnodes", "0"], "--nnodes 0"),
    (["--nproc", "2", "--nnodes", "2"], "needs --rdzv-endpoint"),
    (["--nproc", "2", "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"], "--node-rank 2"),
    (["--nproc", "2", "--node-rank", "-1"], "--node-rank -1"),
    (["--nproc", "2", "--rdzv-endpoint", "127.0.0.1:notaport"], "is not HOST:PORT"),
    (["--nproc", "2", "--rdzv-endpoint", ":29500"], "is not HOST:PORT"),
    (["--nproc", "2", "--rdzv-endpoint", "127.0.0.1:"], "is not HOST:PORT"),
    (["--nproc", "2", "--rdzv-endpoint", "127.0.0.1:0"], "is not HOST:PORT"),
    (["--nproc", "2", "--rdzv-endpoint", "127.0.0.1:70000"], "is not HOST:PORT"),
    (["--nproc", "2", "--rdzv-endpoint", "localhost"], "is not HOST:PORT"),
    (["--nproc", "2", "--rdzv-timeout", "0"], "--rdzv-timeout 0"),
    (["--nproc", "2", "--rdzv-timeout", "-5"], "--rdzv-timeout -5"),
    (["--nproc", "2", "--rdzv-timeout", "nan"], "--rdzv-timeout nan"),
    (["--npro", "2"], "unrecognized arguments: --npro 2"),
    (["--nprocs", "2"], "unrecognized arguments: --nprocs 2"),
    (["--nproc", "2", "--max-restart", "1"], "unrecognized arguments: --max-restart 1"),
    (["--nproc", "2", "--rdzv_endpoint", "h:1"], "unrecognized arguments: --rdzv_endpoint h:1"),
    (["--nproc", "2", "--resume", "somewhere", "--out", "x"], "drop --out"),
]


@pytest.mark.parametrize("argv, problem", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_launcher_arguments_are_one_line_before_anything_starts(argv, problem, tmp_path, capsys, monkeypatch):
    from engine.cli.main import main

    started = []
    monkeypatch.setattr(launch, "_run_torchrun", lambda *a: started.append(a) or 0)
    monkeypatch.chdir(tmp_path)
    code = main(["train", "mnist1d-mlp", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and problem in err[0], err
    assert not started and os.listdir(tmp_path) == []


def test_the_launcher_refuses_to_run_inside_a_launcher(capsys, monkeypatch, tmp_path):
    from engine.cli.main import main

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setattr(launch, "_run_torchrun", lambda *a: pytest.fail("launched"))
    assert main(["train", "mnist1d-mlp", "--nproc", "2", "--out", str(tmp_path / "x")]) == 2
    assert "already runs under a launcher" in capsys.readouterr().err


# --- the torchrun environment of one process ---------------------------------------------------------------

BAD_ENVIRONMENTS = [
    ({"MASTER_PORT": "abc"}, "MASTER_PORT='abc' is not an integer"),
    ({"MASTER_PORT": "0"}, "MASTER_PORT=0 is not a port"),
    ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a port"),
    ({"MASTER_ADDR": " "}, "MASTER_ADDR is empty"),
    ({"WORLD_SIZE": "0"}, "RANK=0 is not in 0..WORLD_SIZE-1"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK=-1"),
    ({"MASTER_ADDR": None}, "MASTER_ADDR is not"),
]


@pytest.mark.parametrize("change, problem", BAD_ENVIRONMENTS, ids=[str(c) for c, _ in BAD_ENVIRONMENTS])
def test_bad_torchrun_environment_is_named(change, problem):
    environ = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", **change}
    with pytest.raises(BadInput, match=problem):
        read_env({k: v for k, v in environ.items() if v is not None})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_environment_problems_found_at_the_rendezvous_are_one_line(tmp_path, cache):
    """A port in use, WORLD_SIZE=2 with one process, rank 1 without rank 0: one line each, exit 2,
    bounded by run.dist_timeout (2 s here), nothing written."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cases = [
        ({"RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": str(busy.getsockname()[1])}, "already in use"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": str(_free_port())}, "did not all meet"),
        ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": str(_free_port())}, "nothing listens"),
    ]
    try:
        for i, (env, problem) in enumerate(cases):
            out = tmp_path / f"run{i}"
            env = {**env, "MASTER_ADDR": "127.0.0.1", "LOCAL_RANK": "0"}
            proc = hookmix("train", "mnist1d-mlp", *SMALL, "run.dist_timeout=2", "--out", str(out), env=env)
            assert proc.returncode == 2 and problem in one_line(proc), proc.stderr[-2000:]
            assert not out.exists()
    finally:
        busy.close()


# --- a restart does not change what the command means -----------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = hookmix("train", "mnist1d-mlp", *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_a_refused_command_stays_refused_under_restarts(finished_run):
    """The directory holds a run: refused before anything launches, with restarts or without."""
    before = snapshot(finished_run)
    proc = hookmix("train", "mnist1d-mlp", *SMALL, "--nproc", "2", "--max-restarts", "2", "--out", str(finished_run))
    assert proc.returncode == 2 and "already holds a run" in one_line(proc)
    assert snapshot(finished_run) == before


def test_torchrun_restarts_of_a_refused_command_are_refused_again(finished_run):
    """Under torchrun itself (no pre-flight): every attempt is refused; none resumes the run."""
    before = snapshot(finished_run)
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        + ["--max-restarts", "1", "-m", "engine.cli", "train", "mnist1d-mlp", *SMALL, "run.steps=8"]
        + ["--out", str(finished_run)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode != 0
    refusals = [line for line in proc.stderr.splitlines() if "already holds a run" in line]
    assert len(refusals) >= 2  # the first attempt and the restarted one
    assert snapshot(finished_run) == before  # nothing resumed, nothing extended


def test_a_stray_restart_count_in_a_plain_shell_changes_nothing(finished_run):
    before = snapshot(finished_run)
    proc = hookmix("train", "mnist1d-mlp", *SMALL, "--out", str(finished_run), env={"TORCHELASTIC_RESTART_COUNT": "1"})
    assert proc.returncode == 2 and "already holds a run" in one_line(proc)
    assert snapshot(finished_run) == before


def test_bad_input_found_by_the_workers_is_one_line_and_not_run_again(tmp_path, cache):
    """Only the workers can see it (the world size does not divide the batch): the launcher prints the
    refusing rank's line; the restarted attempts exit at once (the launch remembers the refusal)."""
    out = tmp_path / "run"
    proc = hookmix(
        *("train", "mnist1d-mlp", *SMALL, "plugins.mnist1d.batch_size=51"),
        *("--nproc", "2", "--max-restarts", "2", "--out", str(out)),
    )
    assert proc.returncode == 2
    assert "not divisible by the world size 2" in one_line(proc)
    assert not out.exists()


def test_a_worker_refusal_is_remembered_by_the_launch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(launch.LAUNCH_DIR, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    assert not launch.refused_before()
    launch.say("hookmix: error: rank 1: bad", 2)
    assert capsys.readouterr().err == ""  # said to the launcher, not to the terminal
    assert launch.refused_before()
    assert launch._lines(str(tmp_path)) == {1: (2, "hookmix: error: rank 1: bad")}
    from engine.cli.main import main

    assert main(["train", "anything"]) == 2 and capsys.readouterr() == ("", "")  # a restarted attempt


def test_a_missing_node_times_out_when_the_user_said(tmp_path, cache):
    out = tmp_path / "run"
    started = time.monotonic()
    proc = hookmix(
        *("train", "mnist1d-mlp", *SMALL, "--nproc", "1", "--nnodes", "2", "--out", str(out)),
        *("--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-timeout", "3"),
    )
    assert proc.returncode == 1
    assert "did not meet" in one_line(proc) and "--rdzv-timeout 3" in proc.stderr
    assert time.monotonic() - started < 120  # bounded by the timeout given, not torchrun's 600 s
    assert not out.exists()


# --- signals to the launcher ------------------------------------------------------------------------------


def _launcher(out, steps: int) -> subprocess.Popen:
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "train", "mnist1d-mlp", *SMALL, f"run.steps={steps}"]
        + ["run.checkpoint_interval=1000", "--nproc", "2", "--out", str(out)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_while_the_workers_start_is_one_line(signum, tmp_path, cache):
    proc = _launcher(tmp_path / "run", 4000)
    time.sleep(2.0)  # past the launcher's own start-up: the workers are starting
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"interrupted by {signal.Signals(signum).name}" in err


def test_sigterm_to_the_launcher_in_training_checkpoints_and_the_run_resumes(tmp_path, cache):
    out = tmp_path / "run"
    proc = _launcher(out, 100000)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    line = err.strip().splitlines()
    assert len(line) == 1 and "checkpoint saved" in line[0], err
    step = int(line[0].split(" at step ")[1].split(";")[0])
    saved = torch.load(out / "checkpoints" / f"step-{step:08d}.pt", weights_only=True)
    assert saved["step"] == step
    proc = hookmix("train", "--resume", str(out), f"run.steps={step + 2}", "--nproc", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"done: {step + 2} steps" in proc.stdout
