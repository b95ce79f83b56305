"""SIGKILL during a run that writes a checkpoint and a metrics record every step, at random
moments (even trials) and as soon as a checkpoint's temporary file appears (odd trials): after
each kill ``--resume`` must start, and the finished run must equal an uninterrupted one.

``HOOKMIX_KILL_TRIALS`` sets the number of kills (default 3, about 15 s); the figure in
docs/reliability.md comes from ``HOOKMIX_KILL_TRIALS=30 python -m pytest tests/reliability/test_kill_trials.py -s``.
"""

from __future__ import annotations

import os
import random
import time

import torch
from reliability_helpers import TINY_GPT, cli, hookmix_process, records

TRIALS = int(os.environ.get("HOOKMIX_KILL_TRIALS", "3"))
STEPS = 40 + 50 * TRIALS  # a process trains at most 0.25 s (under 50 steps here) before its kill
# every step writes a checkpoint and a metrics record, so most kills land in or near a write
ARGS = [
    *TINY_GPT,
    f"run.steps={STEPS}",
    "run.log_interval=1",
    "run.checkpoint_interval=1",
    "run.eval_interval=25",
    "run.keep_checkpoints=2",
]


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _leftovers(out: str) -> tuple[bool, bool]:
    """(a temporary checkpoint file was left, the metrics file ends in a partial line)."""
    tmp = (
        any(n.startswith(".tmp-") for n in os.listdir(f"{out}/checkpoints"))
        if os.path.isdir(f"{out}/checkpoints")
        else False
    )
    try:
        with open(f"{out}/metrics.jsonl", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = b""
    return tmp, bool(data) and not data.endswith(b"\n")


def test_kills_at_random_moments_lose_nothing(tmp_path, capsys):
    out = str(tmp_path / "run")
    rng = random.Random(int(os.environ.get("HOOKMIX_KILL_SEED", "0")))
    kills, mid_checkpoint, mid_metrics = 0, 0, 0
    proc = hookmix_process("train", "shakespeare-gpt", *ARGS, "--quiet", "--out", out)
    for trial in range(TRIALS):
        started = time.time_ns()
        while proc.poll() is None and not (
            os.path.exists(f"{out}/metrics.jsonl") and os.stat(f"{out}/metrics.jsonl").st_mtime_ns > started
        ):
            time.sleep(0.01)  # wait until this process trains (it rewrites metrics.jsonl when it starts)
        if trial % 2:  # odd trials: aim at a checkpoint write (kill as soon as its temporary file exists)
            deadline = time.monotonic() + 5
            while (
                proc.poll() is None
                and time.monotonic() < deadline
                and not any(n.startswith(".tmp-") for n in _listdir(f"{out}/checkpoints"))
            ):
                time.sleep(0.0005)
        else:  # even trials: a random moment of training
            time.sleep(rng.uniform(0.0, 0.25))
        if proc.poll() is not None:
            break  # finished before the kill
        proc.kill()
        proc.communicate()
        kills += 1
        tmp, partial = _leftovers(out)
        mid_checkpoint += tmp
        mid_metrics += partial
        proc = hookmix_process("train", "--resume", out, "--quiet")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    with capsys.disabled():
        print(
            f"\nkill trials: {kills} kills, {mid_checkpoint} left a partial checkpoint, {mid_metrics} a partial "
            f"metrics line; the resumed run equals the uninterrupted one"
        )
    assert kills == TRIALS  # the run was long enough for every kill to land during training

    straight = str(tmp_path / "straight")
    assert cli("train", "shakespeare-gpt", *ARGS, "--quiet", "--out", straight, capsys=capsys)[0] == 0
    with open(f"{out}/metrics.jsonl") as a, open(f"{straight}/metrics.jsonl") as b:
        assert records(a.read()) == records(b.read())
    last = f"checkpoints/step-{STEPS:08d}.pt"
    a = torch.load(f"{out}/{last}", weights_only=True)
    b = torch.load(f"{straight}/{last}", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
