"""2-rank runs (torch.distributed.run, gloo, one thread per rank) against 1-rank runs of the same recipe.

Every shipped recipe family runs in ONE launch (startup is paid once; see engine.testing.distributed.run_distributed),
with a rank-agreement check after every step: model, plugin modules and plugin states (EMA's shadow,
the optimizer-side state lives in the optimizer and follows from identical gradients) bit-identical on
both ranks. Tolerances against the 1-rank run (max |weight difference|, and metric difference relative to
max(1, |value|)), measured with 6 steps on 2 ranks by ``python tests/distributed/measure_tolerances.py``:

- The 2-rank gradient is the mean of two half-batch means, the 1-rank one a single batch mean: they differ
  in the last float32 bits (~1e-7 relative). Optimizers amplify that differently:
  ``ADAMW = 1e-4``: AdamW divides by sqrt(v) (tiny early in training) and USKD ranks classes (near-ties
  can flip): measured 1e-7 (mlp) and 2.2e-5 (uskd).
  ``MUON = 1e-3``: torch's Muon orthogonalises in bfloat16 (8-bit mantissa), so a last-bit difference can
  round a Newton-Schulz entry the other way: measured 1.9e-4 (lipschitz, ema_constraints), 1.4e-7 (mix).
- Control: a gradient that is not the global mean (the 1-rank run on half the batch, i.e. a missing
  all-reduce) differs by 0.06-0.14, far above both tolerances.
- RL (grpo, soft_grpo): rollout noise is drawn per rank, so the samples differ from the 1-rank run's by
  construction; the checks are that the run trains, ranks agree bit-exactly after every step, and the
  reward metrics are the mean over both ranks' groups.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from dist_plugins import MNIST1D_DATA as DATA  # this directory is on sys.path (conftest.py)

from engine.testing import train
from engine.testing.distributed import RankAgreement, assert_close_results, assert_identical_results, run_distributed

ADAMW, MUON = 1e-4, 1e-3
TOL = {"mlp": ADAMW, "uskd": ADAMW, "lipschitz": MUON, "ema_constraints": MUON, "mix": MUON}
STEPS = 6
RUN = {"threads": 1, "log_interval": 2, "eval_interval": 3}
MLP = dict(
    plugins=["mnist1d", "mlp", "adamw", "cross_entropy"],
    config={"mnist1d": DATA, "mlp": {"hidden": [32]}, "adamw": {"lr": 1e-2}},
)
LIP = dict(
    plugins=["mnist1d", "lipschitz_mlp", "muon", "spectral_soft_cap", "cross_entropy"],
    config={
        "mnist1d": DATA,
        "lipschitz_mlp": {"hidden": 32, "n_hidden_layers": 2},
        "muon": {"lr": 0.1},
        "spectral_soft_cap": {"w_max": 2.0},
    },
)
USKD = dict(plugins=[*MLP["plugins"], "uskd"], config={**MLP["config"], "uskd": {"alpha": 0.1, "beta": 0.1, "mu": 0.1}})
TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2}
RL_DATA = {"mode": "rl", "batch_size": 4, "val_problems": 0}
CAPS = {"group_size": 4, "think_cap": 8, "answer_cap": 8}
PASSK = {"problems": 4, "samples": 4, "ks": [1, 4], "taus": [0.1], "chunk": 64}


def rl(arm: str) -> dict:
    from dist_plugins import RankReward

    return dict(
        plugins=["countdown", "tiny_policy", "countdown_reward", "format_reward", RankReward, arm, "adamw", "passk"],
        config={"countdown": RL_DATA, "tiny_policy": TINY, arm: CAPS, "adamw": {"lr": 1e-3}, "passk": PASSK},
        steps=2,
        threads=1,
        log_interval=1,
        eval_interval=2,
        agree_plugin_states=False,
    )


def mix(teacher: str) -> dict:
    return dict(
        plugins=[*LIP["plugins"], "teacher", "kd", "logit_std"],
        config={
            **LIP["config"],
            "teacher": {"run": teacher},
            "cross_entropy": {"weight": 0.1},
            "kd": {"temperature": 2.0, "weight": 9.0},
        },
    )


def ema_constraints() -> dict:
    from hookmix_ema import EMA

    return dict(plugins=[*LIP["plugins"], EMA], config={**LIP["config"], "ema": {"decay": 0.5}})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, teacher):
    """Every 2-rank case of this module, in one torch.distributed.run launch."""
    root = tmp_path_factory.mktemp("dist")
    stopped, to_one = str(root / "stopped"), str(root / "to_one")
    cases = {
        "mlp": dict(MLP, steps=STEPS, **RUN),
        "lipschitz": dict(LIP, steps=STEPS, **RUN),
        "mix": dict(mix(teacher), steps=STEPS, **RUN),
        "uskd": dict(USKD, steps=STEPS, **RUN),
        "ema_constraints": dict(ema_constraints(), steps=STEPS, **RUN),
        "grpo": rl("grpo"),
        "soft_grpo": rl("soft_grpo"),
        # stopped at step 3 (odd: mid log interval, so per-rank pending metrics are in the checkpoint)
        "stop": dict(MLP, steps=STEPS, out=stopped, stop_at=3, **RUN),
        "resume": dict(MLP, steps=STEPS, out=stopped, resume=True, **RUN),
        "to_one": dict(MLP, steps=STEPS, out=to_one, stop_at=4, **RUN),
    }
    results = run_distributed(list(cases.values()), nproc=2)
    out = dict(zip(cases, results))
    out["to_one_dir"] = to_one
    return out


def single(case: dict, **extra) -> dict:
    case = {**case, **extra}
    case.pop("agree_plugin_states", None)
    res = train(case.pop("plugins"), case.pop("config"), case.pop("steps"), **case)
    return {"model": res.model.state_dict(), "modules": res.state.modules.state_dict(), "metrics": res.metrics}


@pytest.mark.parametrize("name", ["mlp", "lipschitz", "uskd", "ema_constraints"])
def test_two_ranks_match_one_rank(runs, name):
    case = {"mlp": MLP, "lipschitz": LIP, "uskd": USKD, "ema_constraints": ema_constraints()}[name]
    assert runs[name]["checks"] == STEPS  # weights bit-identical on both ranks after every step
    assert_close_results(runs[name], single(dict(case, steps=STEPS, **RUN)), TOL[name])


def test_uskd_weak_head_is_trained_under_ddp(runs):
    head = runs["uskd"]["modules"]
    assert head and any(k.startswith("uskd_head") for k in head)


def test_the_mix_matches_one_rank(runs, teacher):
    assert runs["mix"]["checks"] == STEPS
    assert_close_results(runs["mix"], single(dict(mix(teacher), steps=STEPS, **RUN)), TOL["mix"])


def test_val_accuracy_is_the_one_rank_number_exactly(runs):
    one = single(dict(MLP, steps=STEPS, **RUN))
    val = [(m["step"], m["val/accuracy"]) for m in runs["mlp"]["metrics"] if "val/accuracy" in m]
    assert val == [(m["step"], m["val/accuracy"]) for m in one["metrics"] if "val/accuracy" in m]


@pytest.mark.parametrize("arm", ["grpo", "soft_grpo"])
def test_rl_trains_on_two_ranks_and_reduces_rewards(runs, arm):
    res = runs[arm]
    assert res["checks"] == 2  # weights bit-identical on both ranks after each step
    one = single(rl(arm))
    assert [sorted(m) for m in res["metrics"]] == [sorted(m) for m in one["metrics"]]
    rewards = [m["train/reward/rank"] for m in res["metrics"] if "train/reward/rank" in m]
    assert rewards == [0.5, 0.5]  # the mean over rank 0's and rank 1's groups
    assert all(m["train/reward/rank"] == 0.0 for m in one["metrics"] if "train/reward/rank" in m)
    assert 0.0 <= res["metrics"][-1]["passk/discrete/pass@4"] <= 1.0


def test_resume_on_two_ranks_is_exact(runs):
    assert_identical_results(runs["mlp"], runs["resume"])


def test_two_rank_checkpoint_resumes_on_one_rank(runs, tmp_path):
    out = str(tmp_path / "one")
    shutil.copytree(runs["to_one_dir"], out)
    # the workers' runs include the test kit's rank_agreement plugin; a resume needs the same plugins
    res = train([*MLP["plugins"], RankAgreement], MLP["config"], STEPS, out=out, resume=True, **RUN)
    resumed = {"model": res.model.state_dict(), "modules": res.state.modules.state_dict(), "metrics": res.metrics}
    # the data order continues exactly (the data generator is global); the arithmetic is 1-rank from step 4
    assert_close_results(resumed, single(dict(MLP, steps=STEPS, **RUN)), ADAMW)
    assert os.path.exists(os.path.join(out, "checkpoints", "step-00000006.pt"))


def test_two_nodes_on_one_machine_equal_one_node_with_two_processes(runs):
    """Two torchrun launchers (--nnodes 2, c10d rendezvous on 127.0.0.1), one process each."""
    import socket

    from engine.testing.distributed import launch_cases, read_results, write_cases

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The rendezvous store lives in this process, as on a cluster where it outlives every node: when node 0's
    # launcher hosted it, node 1's worker could lose it while shutting down (seen as an abort under load).
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    work = write_cases([dict(MLP, steps=STEPS, **RUN)])
    nodes = [
        launch_cases(
            work,
            [
                "--nnodes",
                "2",
                "--node-rank",
                str(rank),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "t",
                "--rdzv-conf",
                "is_host=false",
            ],
        )
        for rank in (0, 1)
    ]
    errs = [node.communicate(timeout=300)[1] for node in nodes]
    del store
    assert [node.returncode for node in nodes] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    (two_nodes,) = read_results(work, 1)
    assert two_nodes["metrics"] == runs["mlp"]["metrics"]
    for key in two_nodes["model"]:
        assert torch.equal(two_nodes["model"][key], runs["mlp"]["model"][key]), key
