"""Launching and failing: the torchrun environment, `hookmix train --nproc`, torchrun on engine.cli,
bad input on every rank, a rank that raises, and an elastic restart after SIGKILL (real processes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from dist_plugins import MLP_CLI

from engine.distributed import ddp
from engine.distributed.env import read_env
from engine.errors import BadInput
from engine.testing.distributed import launch_cases, read_results, write_cases

DATA = {"num_train": 400, "num_test": 100, "batch_size": 50}
MLP = dict(
    plugins=["mnist1d", "mlp", "adamw", "cross_entropy"],
    config={"mnist1d": DATA, "mlp": {"hidden": [32]}, "adamw": {"lr": 1e-2}},
)
SMALL = MLP_CLI
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


@pytest.mark.parametrize(
    "environ, problem",
    [
        ({"RANK": "0"}, "WORLD_SIZE"),
        ({"RANK": "abc", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "RANK='abc'"),
        ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "RANK=2"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"}, "MASTER_ADDR"),
    ],
)
def test_bad_torchrun_environment_is_one_line_bad_input(environ, problem):
    with pytest.raises(BadInput, match=problem) as exc:
        read_env(environ)
    assert "\n" not in str(exc.value)


def test_no_torchrun_environment_is_one_process():
    env = read_env({})
    assert (env.rank, env.world_size, env.launched) == (0, 1, False)


def test_bad_environment_through_the_cli_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys, cache):
    from engine.cli.main import main

    monkeypatch.setenv("RANK", "abc")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    assert main(["train", "mnist1d-mlp", "--out", str(tmp_path / "x"), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RANK='abc'" in err[0]
    assert not (tmp_path / "x").exists()


def test_shard_slices_dim_0_contiguously():
    batch = {"input": torch.arange(12).reshape(6, 2), "target": torch.arange(6), "meta": 3}
    parts = [ddp.shard(batch, r, 3) for r in range(3)]
    assert [p["target"].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert torch.equal(torch.cat([p["input"] for p in parts]), batch["input"]) and parts[2]["meta"] == 3
    with pytest.raises(BadInput, match="not divisible by the world size 4"):
        ddp.check_divisible(batch, 4)


def test_indivisible_global_batch_exits_2_on_every_rank_before_writing(tmp_path, cache):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "train",
            "mnist1d-mlp",
            "--nproc",
            "2",
            "--out",
            str(out),
            *SMALL,
            "plugins.mnist1d.batch_size=51",
        ],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    # every rank detects it (each computes the divisibility check before the setup's safe point); the
    # launcher prints one line for the group: the lowest refusing rank's
    assert proc.stderr.splitlines() == [
        "hookmix: error: rank 0: the global batch has 51 rows, not divisible by the world size 2; "
        "set the data plugin's batch_size to a multiple of 2"
    ], proc.stderr[-2000:]
    assert not out.exists()


def test_torchrun_on_engine_cli_trains_and_only_rank_0_writes(tmp_path, cache):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "engine.cli",
            "train",
            "mnist1d-mlp",
            "--out",
            str(out),
            *SMALL,
        ],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done: 4 steps") == 1  # rank 0 reports; rank 1 is silent
    assert "distributed: world size 2, backend gloo, strategy ddp; rank 0 cpu, rank 1 cpu" in proc.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 4]  # one writer: no duplicated records
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


def test_a_rank_that_raises_stops_every_rank_within_seconds(tmp_path, cache):
    from dist_plugins import Fault

    work = write_cases(
        [
            dict(
                MLP,
                plugins=[*MLP["plugins"], Fault],
                steps=20,
                threads=1,
                out=str(tmp_path / "run"),
                config={**MLP["config"], "fault": {"step": 3, "rank": 1, "kind": "raise"}},
            )
        ]
    )
    proc = launch_cases(work, ["--standalone", "--nproc-per-node", "2"])
    _, err = proc.communicate(timeout=300)
    ended = time.time()
    assert proc.returncode != 0
    assert re.search(r"hookmix: error: rank 1: .*RuntimeError: injected fault at step 3", err), err
    fault = float((tmp_path / "run" / "fault-time").read_text())
    assert ended - fault < 20, f"the other rank took {ended - fault:.0f}s to stop"  # not the 120 s pg timeout


def test_sigkill_of_a_rank_restarts_the_group_which_resumes_to_the_same_result(tmp_path, cache):
    """torchrun --max-restarts 1: rank 1 dies with SIGKILL at step 5 (checkpoints every 2 steps); the
    restarted group resumes from step 4 in the same run directory and ends as the uninterrupted run."""
    from dist_plugins import Fault

    def case(name, kill_step):
        return dict(
            MLP,
            plugins=[*MLP["plugins"], Fault],
            steps=8,
            threads=1,
            out=str(tmp_path / name),
            log_interval=2,
            eval_interval=4,
            checkpoint_interval=2,
            config={**MLP["config"], "fault": {"step": kill_step, "rank": 1, "kind": "kill"}},
        )

    work = write_cases([case("straight", 99), case("killed", 5)])
    proc = launch_cases(work, ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGKILL" in err or "Signals.SIGKILL" in err or "exitcode: -9" in err  # the agent saw the kill
    straight, killed = read_results(work, 2)
    assert killed["metrics"] == straight["metrics"]
    for key in straight["model"]:
        assert torch.equal(straight["model"][key], killed["model"][key]), key
