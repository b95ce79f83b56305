"""run.strategy = "fsdp" (FSDP2 fully_shard, DCP checkpoints) on 2 real processes (gloo) against 1 process.

Every FSDP case runs in ONE torch.distributed.run launch (engine.testing.distributed.run_distributed), with the rank
agreement check after every step on the *full* weights (the shards differ by design). Tolerances (max
|weight difference|, metric difference relative to max(1, |value|)), measured by
``HOOKMIX_CACHE=/tmp/c python tests/distributed/measure_tolerances.py --fsdp``:

- ``ADAMW = 1e-4`` (mlp, the same as DDP): FSDP reduce-scatters the mean of two half-batch gradients, which
  differs from one batch mean in the last float32 bits; AdamW's 1/sqrt(v) amplifies that early on.
- ``MUON = 2e-2`` (lipschitz, the mix): torch.optim.Muon runs Newton-Schulz in bfloat16 on DTensors whose
  matmuls reduce partial products across the ranks, i.e. in another summation order than one process:
  the update differs by bf16 rounding (0.5-5.4% of the largest entry of one update, printed by
  fsdp_muon.py, the worker of test_muon_update_under_fsdp_equals_unsharded); over 6 steps at lr 0.1 the
  weights differ by 1.2e-2 (measured). The half-batch control of test_ddp.py (a missing gradient
  reduction) differs by 0.06-0.14; orthogonalising each row shard separately differs by 23-74% of an update.
- RL (grpo): rollout noise is per rank by design, so the run is compared with the DDP 2-rank run (same
  per-rank streams): equal up to reduction order (ADAMW).
- gpt (AdamW, ADAMW) and lipschitz_gpt (Muon + soft cap, MUON): the tiny transformers follow the same rules.
- Changing strategy at a resume (a DDP one-file checkpoint resumed under FSDP, an FSDP DCP checkpoint resumed
  under DDP): the weights and optimizer state at the checkpoint are exact (rows of the full tensors, or full
  tensors assembled from the rows), so the resumed run differs from the uninterrupted DDP run only by the
  gradient reduction's float order (all-reduce vs reduce-scatter of the mean) after the resume: ADAMW.

Frozen models (the teacher, GRPO's reference) are sharded too (``state.add_frozen_module``): FrozenCheck
checks after every step that a rank holds about half of their bytes (at most 0.55 on 2 ranks).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch
from dist_plugins import MNIST1D_DATA as DATA  # this directory is on sys.path (conftest.py)

from engine.testing import train
from engine.testing.distributed import (
    RankAgreement,
    assert_close_results,
    assert_identical_results,
    max_difference,
    run_distributed,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ADAMW, MUON = 1e-4, 2e-2
STEPS = 6
RUN = {"threads": 1, "log_interval": 2, "eval_interval": 3}
FSDP = {"strategy": "fsdp"}
MLP = dict(
    plugins=["mnist1d", "mlp", "adamw", "cross_entropy"],
    config={"mnist1d": DATA, "mlp": {"hidden": [32]}, "adamw": {"lr": 1e-2}},
)


def lip() -> dict:
    from dist_plugins import FullCapCheck

    return dict(
        plugins=["mnist1d", "lipschitz_mlp", "muon", "spectral_soft_cap", "cross_entropy", FullCapCheck],
        config={
            "mnist1d": DATA,
            "lipschitz_mlp": {"hidden": 32, "n_hidden_layers": 2},
            "muon": {"lr": 0.1},
            "spectral_soft_cap": {"w_max": 2.0},
            "full_cap_check": {"w_max": 2.0},
        },
    )


def capped(method: str, extra: dict, tol: float) -> dict:
    """lipschitz_mlp + muon + another spectral cap, checked on full matrices by FullCapCheck (slack ``tol``,
    as in tests/lipschitz/test_plugins.py: the hard cap's odd polynomial overshoots by up to 1.09%)."""
    base = lip()
    plugins = [method if p == "spectral_soft_cap" else p for p in base["plugins"]]
    config = {k: v for k, v in base["config"].items() if k != "spectral_soft_cap"}
    return dict(
        plugins=plugins,
        config={**config, method: {"w_max": 2.0, **extra}, "full_cap_check": {"w_max": 2.0, "tol": tol}},
    )


SHAKESPEARE = {"block_size": 16, "batch_size": 4, "eval_batches": 2}
GPT_STEPS = 4
GPT = dict(
    plugins=["tinyshakespeare", "gpt", "adamw", "cross_entropy"],
    config={"tinyshakespeare": SHAKESPEARE, "gpt": {"n_layer": 2, "n_head": 2, "n_embd": 32}, "adamw": {"lr": 1e-3}},
)
LIP_GPT = dict(
    plugins=["tinyshakespeare", "lipschitz_gpt", "muon", "spectral_soft_cap", "cross_entropy"],
    config={
        "tinyshakespeare": SHAKESPEARE,
        "lipschitz_gpt": {"d_model": 32, "n_layers": 2, "n_heads": 2},
        "muon": {"lr": 0.05},
        "spectral_soft_cap": {"w_max": 2.0},
    },
)


def frozen_check(case: dict, log: bool = False) -> dict:
    """``case`` with FrozenCheck: the frozen models are sharded (every rank holds at most 0.55 of their bytes, so
    at least 0.45 on 2 ranks); ``log``: logs the fraction and adds a frozen Linear in hookmix_on_train_start."""
    from dist_plugins import FrozenCheck

    return dict(
        case,
        plugins=[*case["plugins"], FrozenCheck],
        config={**case["config"], "frozen_check": {"max_fraction": 0.55, "log": log, "late": log}},
    )


def grpo(arm: str = "grpo") -> dict:
    """grpo (or soft_grpo) with the default kl_coef > 0: a frozen reference policy (sharded under FSDP)."""
    from dist_plugins import RankReward

    return dict(
        plugins=["countdown", "tiny_policy", "countdown_reward", "format_reward", RankReward, arm, "adamw"],
        config={
            "countdown": {"mode": "rl", "batch_size": 4, "val_problems": 0},
            "tiny_policy": {"d_model": 32, "n_layers": 2, "n_heads": 2},
            arm: {"group_size": 4, "think_cap": 8, "answer_cap": 8},
            "adamw": {"lr": 1e-3},
        },
        steps=3,
        threads=1,
        log_interval=1,
        eval_interval=3,
        agree_plugin_states=False,
    )


HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def hf_grpo() -> dict:
    """grpo with a random tiny llama through hf_policy (decoder layers as units; embed/forward_embeds gather)."""
    case = grpo()
    config = {k: v for k, v in case["config"].items() if k != "tiny_policy"}
    return dict(
        case,
        plugins=["hf_policy" if p == "tiny_policy" else p for p in case["plugins"]],
        config={**config, "hf_policy": {"arch": "llama", "hidden_size": 32, "layers": 2, "heads": 2}},
    )


@pytest.fixture(scope="module")
def gpt_teacher(tmp_path_factory, cache):
    """A gpt teacher (blocks as FSDP units) for a gpt student on the same data."""
    out = str(tmp_path_factory.mktemp("gpt_teacher") / "run")
    train(GPT["plugins"], GPT["config"], steps=3, out=out, threads=1)
    return out


def gpt_kd(teacher: str) -> dict:
    return dict(GPT, plugins=[*GPT["plugins"], "teacher", "kd"], config={**GPT["config"], "teacher": {"run": teacher}})


def mix(teacher: str) -> dict:
    base = lip()
    return dict(
        plugins=[*base["plugins"], "teacher", "kd", "logit_std"],
        config={
            **base["config"],
            "teacher": {"run": teacher},
            "cross_entropy": {"weight": 0.1},
            "kd": {"temperature": 2.0, "weight": 9.0},
        },
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, teacher, gpt_teacher):
    root = tmp_path_factory.mktemp("fsdp")
    stopped, to_one = str(root / "stopped"), str(root / "to_one")
    ddp_dir, fsdp_dir = str(root / "ddp_to_fsdp"), str(root / "fsdp_to_ddp")
    cases = {
        "mlp": dict(MLP, steps=STEPS, **RUN, **FSDP),
        "lipschitz": dict(lip(), steps=STEPS, **RUN, **FSDP),
        "mix": dict(frozen_check(mix(teacher)), steps=STEPS, **RUN, **FSDP),
        "frozen": dict(
            frozen_check(
                dict(
                    MLP,
                    plugins=[*MLP["plugins"], "teacher", "kd"],
                    config={**MLP["config"], "teacher": {"run": teacher}},
                ),
                log=True,
            ),
            steps=2,
            precision="bf16",
            **RUN,
            **FSDP,
        ),  # bf16: the student's MixedPrecisionPolicy
        "gpt_kd": dict(frozen_check(gpt_kd(gpt_teacher)), steps=GPT_STEPS, **RUN, **FSDP),
        "hard_cap": dict(capped("spectral_hard_cap", {}, 0.011), steps=4, **RUN, **FSDP),
        "normalize": dict(capped("spectral_normalize", {"estimator": "exact"}, 1e-5), steps=4, **RUN, **FSDP),
        "grpo": dict(frozen_check(grpo()), **FSDP),
        "grpo_ddp": grpo(),
        "soft_grpo": dict(frozen_check(grpo("soft_grpo")), **FSDP),
        "soft_grpo_ddp": grpo("soft_grpo"),
        "bf16": dict(MLP, steps=STEPS, precision="bf16", **RUN, **FSDP),
        "accum": dict(MLP, steps=4, grad_accum=2, grad_clip=0.5, **RUN, **FSDP),
        "shards": dict(MLP, plugins=[*MLP["plugins"], "dist_plugins:ShardCheck"], steps=2, **RUN, **FSDP),
        # stopped at step 3 (mid log interval: per-rank pending metrics are in the checkpoint)
        "stop": dict(MLP, steps=STEPS, out=stopped, stop_at=3, **RUN, **FSDP),
        "resume": dict(MLP, steps=STEPS, out=stopped, resume=True, **RUN, **FSDP),
        "to_one": dict(MLP, steps=STEPS, out=to_one, stop_at=4, checkpoint_interval=2, **RUN, **FSDP),
        "gpt": dict(GPT, steps=GPT_STEPS, **RUN, **FSDP),
        "lipschitz_gpt": dict(LIP_GPT, steps=GPT_STEPS, **RUN, **FSDP),
        # a strategy change at a resume, both ways, against the uninterrupted DDP run
        "ddp_mlp": dict(MLP, steps=STEPS, **RUN),
        "ddp_stop": dict(MLP, steps=STEPS, out=ddp_dir, stop_at=3, **RUN),
        "ddp_to_fsdp": dict(MLP, steps=STEPS, out=ddp_dir, resume=True, **RUN, **FSDP),
        "fsdp_stop": dict(MLP, steps=STEPS, out=fsdp_dir, stop_at=3, **RUN, **FSDP),
        "fsdp_to_ddp": dict(MLP, steps=STEPS, out=fsdp_dir, resume=True, **RUN),
    }
    if HAS_TRANSFORMERS:  # the optional `hf` extra
        cases.update({"hf_grpo": dict(hf_grpo(), **FSDP), "hf_grpo_ddp": hf_grpo()})
    out = dict(zip(cases, run_distributed(list(cases.values()), nproc=2)))
    out["to_one_dir"], out["ddp_dir"], out["fsdp_dir"] = to_one, ddp_dir, fsdp_dir
    return out


def single(case: dict, **extra) -> dict:
    case = {**case, **extra}
    case.pop("agree_plugin_states", None)
    case.pop("strategy", None)
    res = train(case.pop("plugins"), case.pop("config"), case.pop("steps"), **case)
    return {"model": res.model.state_dict(), "modules": res.state.modules.state_dict(), "metrics": res.metrics}


def test_fsdp_mlp_matches_one_process(runs):
    assert runs["mlp"]["checks"] == STEPS  # full weights bit-identical on both ranks after every step
    assert_close_results(runs["mlp"], single(dict(MLP, steps=STEPS, **RUN)), ADAMW)


def test_fsdp_lipschitz_matches_one_process_and_caps_full_matrices(runs):
    """Muon + soft cap: FullCapCheck saw full (plain) matrices with sigma_max <= w_max after every step;
    the certified bound is the 1-process bound within the Muon tolerance."""
    res = runs["lipschitz"]
    assert res["checks"] == STEPS
    one = single(dict(lip(), steps=STEPS, **RUN))
    assert_close_results(res, one, MUON)
    sigmas = [m["check/sigma_max"] for m in res["metrics"] if "check/sigma_max" in m]
    assert len(sigmas) == STEPS // RUN["log_interval"] and max(sigmas) <= 2.0 * (1 + 1e-6)
    bound = [m["lipschitz/bound"] for m in res["metrics"] if "lipschitz/bound" in m]
    assert bound and bound == pytest.approx(
        [m["lipschitz/bound"] for m in one["metrics"] if "lipschitz/bound" in m], rel=MUON
    )


@pytest.mark.parametrize("case", ["hard_cap", "normalize"])
def test_fsdp_hard_cap_and_normalize_hold_on_full_matrices_every_step(runs, case):
    assert runs[case]["checks"] == 4  # FullCapCheck raised (stopping the launch) if a full matrix broke the cap
    assert max(m["check/sigma_max"] for m in runs[case]["metrics"] if "check/sigma_max" in m) > 0


def test_fsdp_mix_matches_one_process(runs, teacher):
    """Frozen teacher (sharded by the engine: FrozenCheck held it to <= 0.55 of its bytes per rank after every
    step) + KD + logit_std + Lipschitz student with Muon and the soft cap; teacher/val_accuracy (each rank scores
    its share of the validation set, counts summed) equals the 1-process number."""
    assert runs["mix"]["checks"] == STEPS
    assert_close_results(runs["mix"], single(dict(mix(teacher), steps=STEPS, **RUN)), MUON)


def test_fsdp_shards_the_frozen_teacher_to_half_its_bytes_per_rank(runs):
    """state.add_frozen_module under FSDP: fully_shard splits the teacher (cnn1d) by rows, and a frozen Linear
    added in hookmix_on_train_start (after the engine sharded the run), so a rank holds half their parameter
    bytes between forwards (every dim splits evenly here; run in bf16: the frozen models get the student's
    MixedPrecisionPolicy, fp32 shards)."""
    fractions = [m["check/frozen_fraction"] for m in runs["frozen"]["metrics"] if "check/frozen_fraction" in m]
    assert fractions == [0.5]
    assert any("teacher/val_accuracy" in m for m in runs["frozen"]["metrics"])


def test_fsdp_gpt_student_with_a_sharded_gpt_teacher_matches_one_process(runs, gpt_teacher):
    """A teacher with fsdp_units() (gpt blocks) is sharded unit by unit (FrozenCheck: <= 0.55 of its bytes per
    rank after every step); KD from it under FSDP = 1 process within ADAMW."""
    assert runs["gpt_kd"]["checks"] == GPT_STEPS
    assert_close_results(runs["gpt_kd"], single(dict(gpt_kd(gpt_teacher), steps=GPT_STEPS, **RUN)), ADAMW)


def test_fsdp_gpt_matches_one_process(runs):
    """gpt (blocks as units, tied embedding/head in the root unit) + AdamW: 2 ranks = 1 process within ADAMW."""
    assert runs["gpt"]["checks"] == GPT_STEPS
    assert_close_results(runs["gpt"], single(dict(GPT, steps=GPT_STEPS, **RUN)), ADAMW)


def test_fsdp_lipschitz_gpt_matches_one_process(runs):
    """lipschitz_gpt (blocks as units) + Muon + soft cap, the certified bound on gathered matrices: within MUON."""
    res = runs["lipschitz_gpt"]
    assert res["checks"] == GPT_STEPS
    one = single(dict(LIP_GPT, steps=GPT_STEPS, **RUN))
    assert_close_results(res, one, MUON)
    bound = [m["lipschitz/bound"] for m in res["metrics"] if "lipschitz/bound" in m]
    assert bound and bound == pytest.approx(
        [m["lipschitz/bound"] for m in one["metrics"] if "lipschitz/bound" in m], rel=MUON
    )


def test_one_file_ddp_checkpoint_resumes_under_fsdp(runs):
    """A 2-rank DDP run stopped at step 3 (checkpoints/step-00000003.pt, full tensors) resumed with
    run.strategy=fsdp: each rank loads its rows; the end is the uninterrupted DDP run's within ADAMW (the module
    docstring says why)."""
    assert sorted(os.listdir(os.path.join(runs["ddp_dir"], "checkpoints")))[0] == "step-00000003.pt"
    assert runs["ddp_to_fsdp"]["checks"] == STEPS - 3
    assert_close_results(runs["ddp_to_fsdp"], runs["ddp_mlp"], ADAMW)


def test_fsdp_checkpoint_resumes_under_ddp_on_two_ranks(runs):
    """FSDP on 2 ranks stopped at step 3 (a DCP directory) resumed under DDP on 2 ranks: within ADAMW."""
    assert "step-00000003.dcp" in os.listdir(os.path.join(runs["fsdp_dir"], "checkpoints"))
    assert runs["fsdp_to_ddp"]["checks"] == STEPS - 3
    assert_close_results(runs["fsdp_to_ddp"], runs["ddp_mlp"], ADAMW)


def test_a_one_file_optimizer_state_without_a_row_layout_is_refused_under_fsdp():
    """shard_full: an optimizer state tensor shaped unlike its sharded parameter (e.g. a factored moment) cannot be
    split into the parameter's rows: one line naming it and run.strategy=ddp (a 1-rank mesh in this process)."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    from engine.distributed.sharded_checkpoint import shard_full
    from engine.errors import BadInput

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        model = torch.nn.Linear(4, 3, bias=False)
        mesh = init_device_mesh("cpu", (1,))
        model.weight = torch.nn.Parameter(distribute_tensor(model.weight.detach(), mesh, [Shard(0)]))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        full = {"weight": torch.ones(3, 4)}
        ok = {
            "model": dict(full),
            "modules": {},
            "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3, 4)}}, "param_groups": [{"params": [0]}]},
        }
        shard_full(ok, model, torch.nn.ModuleDict(), optimizer)
        assert isinstance(ok["model"]["weight"], DTensor) and isinstance(
            ok["optimizer"]["state"][0]["momentum_buffer"], DTensor
        )
        bad = {
            "model": dict(full),
            "modules": {},
            "optimizer": {"state": {0: {"row_moment": torch.ones(3)}}, "param_groups": [{"params": [0]}]},
        }
        with pytest.raises(BadInput, match="optimizer state 'row_moment' of shape \\(3,\\) has no row layout"):
            shard_full(bad, model, torch.nn.ModuleDict(), optimizer)
        with pytest.raises(BadInput, match="model weight has shape \\(4, 4\\), this run's \\(3, 4\\)"):
            shard_full(
                {"model": {"weight": torch.ones(4, 4)}, "modules": {}, "optimizer": {}},
                model,
                torch.nn.ModuleDict(),
                optimizer,
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("arm", ["grpo", "soft_grpo"])
def test_fsdp_grpo_matches_ddp(runs, arm):
    """The policy and its frozen reference (kl_coef > 0) both sharded (FrozenCheck: <= 0.55 of the reference's
    bytes per rank after every step). soft_grpo's reference may call embed a rank-dependent number of times (only
    rollouts with soft tokens rebuild a mixture): its root stays gathered until the engine reshards it after the
    micro-batch's forward, so those calls need no collective."""
    assert runs[arm]["checks"] == 3
    assert_close_results(runs[arm], runs[f"{arm}_ddp"], ADAMW)
    assert [m["train/reward/rank"] for m in runs[arm]["metrics"] if "train/reward/rank" in m] == [0.5] * 3


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="hf_policy needs transformers (the hf extra)")
def test_fsdp_hf_policy_grpo_matches_ddp(runs):
    assert runs["hf_grpo"]["checks"] == 3
    assert_close_results(runs["hf_grpo"], runs["hf_grpo_ddp"], ADAMW)


def test_fsdp_bf16_mixed_precision_trains_close_to_fp32(runs):
    """MixedPrecisionPolicy(param_dtype=bf16): compute in bf16, fp32 shards and gradient reduction."""
    fp32 = single(dict(MLP, steps=STEPS, **RUN))
    loss = [m["train/loss"] for m in runs["bf16"]["metrics"] if "train/loss" in m]
    ref = [m["train/loss"] for m in fp32["metrics"] if "train/loss" in m]
    assert all(p.dtype == torch.float32 for p in runs["bf16"]["model"].values())
    assert loss == pytest.approx(ref, abs=2e-2)  # bf16 has 8 mantissa bits: ~4e-3 relative per op
    assert max_difference(runs["bf16"], runs["mlp"])[0] > 0  # not silently fp32


def test_fsdp_gradient_accumulation_and_clipping_match_one_process(runs):
    """set_requires_gradient_sync(False) on the first micro-batch, reduce-scatter on the last; the gradient
    norm of the sharded gradients (a DTensor reduction) is the 1-process norm (logged train/grad_norm)."""
    assert_close_results(runs["accum"], single(dict(MLP, steps=4, grad_accum=2, grad_clip=0.5, **RUN)), ADAMW)
    assert any("train/grad_norm" in m for m in runs["accum"]["metrics"])


def test_fsdp_holds_half_of_every_parameter_per_rank(runs):
    fractions = [m["check/local_fraction"] for m in runs["shards"]["metrics"] if "check/local_fraction" in m]
    assert fractions == [0.5]  # the MLP's dims (32, 40, 10) split evenly over 2 ranks


def test_dcp_resume_fsdp_to_fsdp_is_exact(runs):
    assert_identical_results(runs["mlp"], runs["resume"])


def test_fsdp_checkpoint_is_a_dcp_directory_resumed_by_one_process(runs, tmp_path):
    out = str(tmp_path / "one")
    shutil.copytree(runs["to_one_dir"], out)
    names = sorted(os.listdir(os.path.join(out, "checkpoints")))
    assert names == ["step-00000002.dcp", "step-00000002.pt", "step-00000004.dcp", "step-00000004.pt"]
    assert sorted(os.listdir(os.path.join(out, "checkpoints", "step-00000004.dcp"))) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    ]  # one file of rows per rank
    res = train([*MLP["plugins"], RankAgreement], MLP["config"], STEPS, out=out, resume=True, **RUN)
    resumed = {"model": res.model.state_dict(), "modules": res.state.modules.state_dict(), "metrics": res.metrics}
    assert_close_results(resumed, single(dict(MLP, steps=STEPS, **RUN)), ADAMW)


def test_interrupted_dcp_save_leaves_the_previous_checkpoint_loadable(runs, tmp_path):
    """A save killed while the ranks wrote (a .tmp directory) or after the rename but before the .pt that
    commits it: the checkpoint does not exist, and the run resumes from the previous one."""
    out = str(tmp_path / "interrupted")
    shutil.copytree(runs["to_one_dir"], out)
    ck = os.path.join(out, "checkpoints")
    os.rename(os.path.join(ck, "step-00000004.pt"), os.path.join(tmp_path, "step-00000004.pt"))  # never committed
    os.makedirs(os.path.join(ck, ".step-00000006.dcp.tmp"))
    with open(os.path.join(ck, ".step-00000006.dcp.tmp", "__0_0.distcp"), "wb") as f:
        f.write(b"half")
    res = train([*MLP["plugins"], RankAgreement], MLP["config"], STEPS, out=out, resume=True, **RUN)
    assert res.state.start_step == 2
    assert_close_results(
        {"model": res.model.state_dict(), "modules": res.state.modules.state_dict(), "metrics": res.metrics},
        single(dict(MLP, steps=STEPS, **RUN)),
        ADAMW,
    )


def test_muon_update_under_fsdp_equals_unsharded():
    """torch.optim.Muon on a DTensor row-sharded over 2 ranks vs the 1-process update (see fsdp_muon.py)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            os.path.join(HERE, "fsdp_muon.py"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("shape")]
    assert len(lines) == 4, proc.stdout


def test_a_plugin_needing_full_weights_where_fsdp_has_shards_is_refused_before_training():
    """needs_full_weights + a hook on sharded weights (after_backward): bad input (exit 2) on every rank, one
    line naming the plugin and the hook, before anything is written."""
    from dist_plugins import NeedsFullInBackward

    from engine.testing.distributed import launch_cases, write_cases

    work = write_cases([dict(MLP, plugins=[*MLP["plugins"], NeedsFullInBackward], steps=2, **RUN, **FSDP)])
    proc = launch_cases(work, ["--standalone", "--nproc-per-node", "2"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "exitcode  : 2" in err  # torchrun's report of the first failing rank
    lines = [line for line in err.splitlines() if line.startswith("hookmix: error: rank")]
    # every rank refuses; torchrun stops the others once the first exits, so one or both lines are printed
    assert 1 <= len(lines) <= 2 and all(
        "plugin 'needs_full_in_backward' needs full weight matrices" in line and "hookmix_after_backward" in line
        for line in lines
    ), err[-2000:]
    assert not os.path.exists(os.path.join(work, "case0", "checkpoints"))


def test_needs_full_weights_must_be_a_bool():
    from engine.plugin import Plugin, check_plugin_class

    class Bad(Plugin):
        name = "bad"
        needs_full_weights = "yes"

    with pytest.raises(TypeError, match="needs_full_weights must be True or False"):
        check_plugin_class(Bad, "bad")


def test_dcp_metadata_needing_arbitrary_unpickling_is_refused(tmp_path):
    """DCP's own reader unpickles .metadata with pickle.load; hookmix's reader admits DCP's classes only."""
    import pickle

    from engine.distributed.sharded_checkpoint import SafeReader
    from engine.errors import BadInput

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(BadInput, match="is not allowed in a checkpoint's DCP metadata"):
        SafeReader(str(tmp_path / "ck")).read_metadata()
    assert not (tmp_path / "pwned").exists()


def test_dcp_directory_with_non_tensor_entries_is_refused(tmp_path):
    """A bytes entry would be loaded by DCP with torch.load(weights_only=False): refused before loading."""
    import torch.distributed.checkpoint as dcp

    from engine.distributed.sharded_checkpoint import SafeReader
    from engine.errors import BadInput

    dcp.save({"w": torch.ones(2), "note": {"any": "object"}}, checkpoint_id=str(tmp_path / "ck"), no_dist=True)
    with pytest.raises(BadInput, match="non-tensor entry"):
        SafeReader(str(tmp_path / "ck")).read_metadata()
    dcp.save({"w": torch.ones(2)}, checkpoint_id=str(tmp_path / "ok"), no_dist=True)
    assert list(SafeReader(str(tmp_path / "ok")).read_metadata().state_dict_metadata) == ["w"]


def test_ema_is_refused_under_fsdp_before_training():
    """contrib's EMA swaps whole weights in its evaluation wrapper: under run.strategy=fsdp (row shards) the
    engine refuses it with one line (it declares needs_full_weights), not a RuntimeError at the first evaluation."""
    from hookmix_ema import EMA

    from engine.distributed.fsdp import check_full_weight_plugins
    from engine.errors import BadInput
    from engine.manager import Manager

    with pytest.raises(BadInput, match=r"plugin 'ema' needs full weight matrices .* in hookmix_evaluate"):
        check_full_weight_plugins(Manager({"ema": EMA()}))
