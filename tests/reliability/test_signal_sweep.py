"""A signal at *every* moment of a command keeps the promise: one line on stderr, exit 130 / 143, and
either nothing written (before the run directory is claimed) or a resumable checkpoint (during training),
or a complete run (after it). Never a traceback, never exit 0 with the signal lost.

The moments are audit events (tests/reliability/signal_at_event.py): deterministic, so the test cannot
be flaky. The sweep covers the whole command, start-up most densely (imports, recipe, plugins, data,
model, the claim), where a raised KeyboardInterrupt used to land inside an import or a library's
``except BaseException``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from reliability_helpers import ROOT, TINY_GPT

SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "signal_at_event.py")
COMMAND = ["train", "shakespeare-gpt", *TINY_GPT, "run.steps=2", "run.checkpoint_interval=1", "--quiet"]


def _run(n: int, signame: str, out: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return subprocess.run(
        [sys.executable, SHIM, str(n), signame, *COMMAND, "--out", out],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _moments(total: int) -> list[int]:
    """Geometric up to a tenth of the events (the imports), even steps to 98%, then dense over the last 2%
    (the claim, the writes, training, the end: a few hundred events of the ~30,000 of a 2-step run)."""
    early = {max(1, round((total / 10) ** (i / 9))) for i in range(10)}
    middle = {round(total / 10 + 0.88 * total * i / 7) for i in range(7)}
    tail = {round(0.98 * total + 0.02 * total * i / 10) for i in range(10)}
    end = {total - k for k in (60, 40, 20, 10, 3, 1)}  # after the last step, after the command
    return sorted(n for n in early | middle | tail | end if 0 < n < total)


def _keeps_the_promise(proc: subprocess.CompletedProcess, signame: str, out: str) -> str | None:
    """None when the outcome is one of the promised ones, else what broke."""
    signum = getattr(signal, signame)
    lines = proc.stderr.splitlines()
    if proc.returncode != 128 + signum:
        return f"exit {proc.returncode}"
    if len(lines) != 1:
        return f"{len(lines)} lines on stderr"
    line = lines[0]
    if line == f"hookmix: interrupted by {signame} before training started; nothing was trained":
        return None if not os.path.exists(out) else "a run directory was left behind"
    step = re.fullmatch(rf"hookmix: interrupted by {signame} at step (\d+); checkpoint saved: .*--resume {out}`", line)
    if step:
        ok = os.path.exists(os.path.join(out, "checkpoints", f"step-{int(step[1]):08d}.pt"))
        return None if ok else "no checkpoint at the step it names"
    finished = (
        f"hookmix: interrupted by {signame} after the last step; the run is complete ({out})",
        f"hookmix: interrupted by {signame} after the command finished; its work is complete",
    )
    if line in finished:
        return None if os.path.exists(os.path.join(out, "summary.json")) else "no summary.json"
    return f"unexpected line {line!r}"


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_at_any_moment_keeps_the_promise(signame, tmp_path):
    calibration = _run(0, signame, str(tmp_path / "calibration"))
    assert calibration.returncode == 0, calibration.stderr
    total = int(calibration.stdout.splitlines()[-1].split()[1])
    moments = _moments(total)
    outs = {n: str(tmp_path / f"at-{n}") for n in moments}
    with ThreadPoolExecutor(max_workers=2) as pool:  # each run is its own process
        results = dict(zip(moments, pool.map(lambda n: _run(n, signame, outs[n]), moments)))
    sent = {n: proc for n, proc in results.items() if "not sent" not in proc.stdout}
    assert len(sent) >= 0.9 * len(moments), f"{len(moments) - len(sent)} moments came after the command ended"
    broken = {n: why for n, proc in sent.items() if (why := _keeps_the_promise(proc, signame, outs[n]))}
    assert not broken, {n: (why, results[n].stderr[-400:]) for n, why in broken.items()}
    kinds = [_kind(proc.stderr) for proc in sent.values()]
    assert set(kinds) == {"start-up", "training", "after"}, kinds  # the sweep covered the whole command
    counts = ", ".join(f"{kinds.count(k)} {k}" for k in ("start-up", "training", "after"))
    print(f"signal sweep {signame}: {len(sent)} moments of {total} events kept the promise ({counts})")


def _kind(line: str) -> str:
    return "start-up" if "before training started" in line else "training" if " at step " in line else "after"
