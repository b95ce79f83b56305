"""SIGINT/SIGTERM: during training a checkpoint is written first (exit 130/143, one line naming how
to resume, and the resumed run equals an uninterrupted one); during start-up one line, never a
traceback or exit 0."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
import torch
from reliability_helpers import TINY_GPT, cli, hookmix_process, records

LONG = [*TINY_GPT, "run.steps=300", "run.log_interval=1", "run.checkpoint_interval=0"]  # checkpoint only at the end


def _wait_for(predicate, proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"process ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _lines(path: str) -> int:
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_training_checkpoints_first_and_the_run_resumes_exactly(signum, tmp_path, capsys):
    out = str(tmp_path / "run")
    proc = hookmix_process("train", "shakespeare-gpt", *LONG, "--quiet", "--out", out)
    _wait_for(lambda: _lines(f"{out}/metrics.jsonl") >= 5, proc)  # training is under way
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    name = signal.Signals(signum).name
    match = re.fullmatch(rf"hookmix: interrupted by {name} at step (\d+); checkpoint saved: continue with "
                         rf"`hookmix train --resume {re.escape(out)}`\n", err)
    assert match, err
    step = int(match.group(1))
    assert os.listdir(f"{out}/checkpoints") == [f"step-{step:08d}.pt"]  # written on the signal, not by interval
    assert json.loads(open(f"{out}/metrics.jsonl").readlines()[-1])["step"] == step  # nothing lost

    code, _, _ = cli("train", "--resume", out, "--quiet", capsys=capsys)
    assert code == 0
    straight = str(tmp_path / "straight")
    assert cli("train", "shakespeare-gpt", *LONG, "--quiet", "--out", straight, capsys=capsys)[0] == 0
    assert records(open(f"{out}/metrics.jsonl").read()) == records(open(f"{straight}/metrics.jsonl").read())
    a = torch.load(f"{out}/checkpoints/step-00000300.pt", weights_only=True)["model"]
    b = torch.load(f"{straight}/checkpoints/step-00000300.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _torch_loaded(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return "libtorch" in f.read()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc to see start-up progress")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up_is_one_line(signum, tmp_path):
    out = str(tmp_path / "run")
    proc = hookmix_process("train", "shakespeare-gpt", *TINY_GPT, "--out", out)
    _wait_for(lambda: _torch_loaded(proc.pid), proc)  # inside the command, importing torch or building
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert err == (f"hookmix: interrupted by {signal.Signals(signum).name} before training started; "
                   f"nothing was trained\n")
    assert not os.path.exists(out)
