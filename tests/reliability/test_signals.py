"""SIGINT/SIGTERM: during training a checkpoint is written first (exit 130/143, one line naming how
to resume, and the resumed run equals an uninterrupted one); during start-up one line, never a
traceback or exit 0."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time

import attrs
import pytest
import torch
from reliability_helpers import TINY_GPT, cli, hookmix_process, records

from engine import Plugin, field, hookimpl
from engine.errors import Interrupted
from engine.loop import Trainer
from engine.rundir.directory import RunDir
from engine.testing import TOY, make_recipe

# checkpoint only at the end; long enough that the first metrics (written a second after the start) come early
LONG = [*TINY_GPT, "run.steps=1200", "run.log_interval=1", "run.checkpoint_interval=0"]


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
    _wait_for(lambda: _lines(f"{out}/metrics.jsonl") >= 1, proc)  # training is under way
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    name = signal.Signals(signum).name
    match = re.fullmatch(
        rf"hookmix: interrupted by {name} at step (\d+); checkpoint saved: continue with "
        rf"`hookmix train --resume {re.escape(out)}`\n",
        err,
    )
    assert match, err
    step = int(match.group(1))
    assert os.listdir(f"{out}/checkpoints") == [f"step-{step:08d}.pt"]  # written on the signal, not by interval
    assert json.loads(open(f"{out}/metrics.jsonl").readlines()[-1])["step"] == step  # nothing lost

    code, _, _ = cli("train", "--resume", out, "--quiet", capsys=capsys)
    assert code == 0
    straight = str(tmp_path / "straight")
    assert cli("train", "shakespeare-gpt", *LONG, "--quiet", "--out", straight, capsys=capsys)[0] == 0
    assert records(open(f"{out}/metrics.jsonl").read()) == records(open(f"{straight}/metrics.jsonl").read())
    a = torch.load(f"{out}/checkpoints/step-00001200.pt", weights_only=True)["model"]
    b = torch.load(f"{straight}/checkpoints/step-00001200.pt", weights_only=True)["model"]
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
    # the signal lands in start-up (a loaded machine may delay it past the last start-up check: then it is
    # the training loop's, a checkpoint after one step); every moment is swept in test_signal_sweep.py
    name = signal.Signals(signum).name
    if err == f"hookmix: interrupted by {name} before training started; nothing was trained\n":
        assert not os.path.exists(out)
    else:
        assert re.fullmatch(rf"hookmix: interrupted by {name} at step 1; checkpoint saved: .*\n", err), err


@attrs.define
class SignalAtConfig:
    hook: str = field("on_train_end", "last_step or on_train_end")


class SignalAt(Plugin):
    """Sends this process SIGTERM from a hook: after the last optimizer step, or in on_train_end."""

    name = "signal_at"
    Config = SignalAtConfig

    @hookimpl
    def hookmix_after_optimizer_step(self, state):
        if self.config.hook == "last_step" and state.step == state.run.steps:
            os.kill(os.getpid(), signal.SIGTERM)

    @hookimpl
    def hookmix_on_train_end(self, state):
        if self.config.hook == "on_train_end":
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("hook", ["last_step", "on_train_end"])
def test_a_signal_after_the_last_step_lets_the_run_finish_and_says_so(hook):
    recipe, registry = make_recipe([*TOY, SignalAt], {"signal_at": {"hook": hook}}, steps=3)
    with pytest.raises(Interrupted) as exc:
        Trainer(recipe, registry, stream=io.StringIO()).run()
    assert exc.value.exit_code == 128 + signal.SIGTERM
    assert str(exc.value) == (f"interrupted by SIGTERM after the last step; the run is complete ({recipe.run.out})")
    run_dir = RunDir(recipe.run.out)
    assert json.loads(run_dir.read_text("summary.json"))["steps"] == 3  # every file of a finished run
    assert [json.loads(line)["step"] for line in run_dir.read_text("metrics.jsonl").splitlines()][-1] == 3
