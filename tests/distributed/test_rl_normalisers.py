"""The GRPO family's normalisers count the whole optimizer step (issue: TRL #2995, #3256, #6024).

A token-level loss (``dapo``, ``cispo``) divides by the step's *global* token count, ``dr_grpo`` by its sequences ×
``max_completion_length``, ``grpo`` / ``sapo`` / ``luspo`` by its sequences; the engine rolls out all of a step's
micro-batches first and hands each the totals over micro-batches and ranks (``batch["step_totals"]``). So:

- **accumulation 2 = 1**: one step on 16 rollouts as one micro-batch equals the same 16 rollouts as two
  micro-batches of 8 (``minibatches = 2`` with ``grad_accum = 2``: the rollouts are sampled once, split);
- **2 ranks = 1 rank**: 2 ranks (one slot each) equal 1 rank accumulating the same 2 slots (the ``slot_*`` test
  plugins sample per slot, so both runs see the same rollouts);
- ``bnpo`` is per micro-batch by definition (TRL: the local token count): its accumulated step is the mean of
  the micro-batch token means, and the same comparison tells it apart, which shows the test can fail.

SGD (no momentum, no decay) makes the update ``-lr · gradient``: unlike AdamW's first step, whose per-weight
``g / |g|`` hides any scale, a wrong normaliser shows up in the weights.
Tolerance: ``REL = 1e-4`` of the largest update. The two sides sum the same float32 per-token terms in a
different grouping and teacher-force θ_old on 8- vs 16-row batches (last-bit differences): measured ≤ 2.3e-7
for accumulation (every type, both arms) and exactly 0 for 2 ranks vs 1 (``pytest -s`` prints the gaps). A
wrong normaliser is off by the ratio of the micro-batch token counts: bnpo 6e-2 (discrete) and 1.1e-1 (soft),
the rank-local control 4e-2, both far above ``REL``. ``EarlyEnd`` makes those counts differ.
"""

from __future__ import annotations

import pytest
from rl_slot_plugins import (  # this directory is on sys.path
    EarlyEnd,
    LocalSlotGRPO,
    SlotGRPO,
    SlotSoftGRPO,
    ThinkReward,
)

from engine import Plugin, hookimpl
from engine.testing import train
from engine.testing.distributed import run_distributed

REL = 1e-4
TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2}
CAPS = {"group_size": 4, "think_cap": 8, "answer_cap": 8, "kl_coef": 0.01}
SGD = {"lr": 0.5, "momentum": 0.0, "weight_decay": 0.0}
# (loss_type, importance_sampling_level, extra options); cispo's epsilon_high is an absolute cap on the ratio
LOSSES = {
    "grpo": ("grpo", "token", {}),
    "bnpo": ("bnpo", "token", {}),
    "dr_grpo": ("dr_grpo", "token", {}),
    "dapo": ("dapo", "token", {}),
    "cispo": ("cispo", "token", {"clip_eps_high": 5.0}),
    "sapo": ("sapo", "token", {}),
    "luspo": ("luspo", "token", {}),
    "vespo": ("vespo", "token", {}),
    "gspo": ("grpo", "sequence", {}),
    "gspo-dapo": ("dapo", "sequence", {}),
}
GLOBAL = [name for name in LOSSES if name != "bnpo"]


class Start(Plugin):
    """Records the weights the run starts from."""

    name = "start"
    weights: dict = {}

    @hookimpl
    def hookmix_on_train_start(self, state):
        Start.weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}


def arm_config(loss: str, **extra) -> dict:
    loss_type, level, options = LOSSES[loss]
    return {**CAPS, "loss_type": loss_type, "importance_sampling_level": level, **options, **extra}


def update(arm: str | type, loss: str, prompts: int, accum: int, minibatches: int = 1) -> dict:
    """The first step's weight change of ``arm`` (``model`` after one SGD step minus the start)."""
    name = arm if isinstance(arm, str) else arm.name
    result = train(
        ["countdown", "tiny_policy", EarlyEnd, ThinkReward, arm, "sgd", Start],
        {
            "countdown": {"mode": "rl", "batch_size": prompts, "val_problems": 0},
            "tiny_policy": TINY,
            name: arm_config(loss, minibatches=minibatches),
            "sgd": SGD,
        },
        steps=1,
        grad_accum=accum,
        threads=1,
    )
    return {k: v - Start.weights[k] for k, v in result.model.state_dict().items()}


def relative_gap(a: dict, b: dict) -> float:
    scale = max(v.abs().max().item() for v in a.values())
    assert scale > 1e-4, "the step did not move the weights: the comparison would be vacuous"
    return max((a[k] - b[k]).abs().max().item() for k in a) / scale


@pytest.mark.parametrize("arm", ["grpo", "soft_grpo"])
@pytest.mark.parametrize("loss", GLOBAL)
def test_accumulation_2_equals_1(arm, loss):
    if arm == "soft_grpo" and loss in ("cispo", "sapo", "luspo", "vespo"):
        pytest.skip("the soft arm shares every normaliser with the discrete one; its four main variants suffice")
    one = update(arm, loss, prompts=4, accum=1)
    two = update(arm, loss, prompts=4, accum=2, minibatches=2)
    gap = relative_gap(one, two)
    print(f"{arm}/{loss}: accumulation 2 vs 1, relative gap {gap:.2e}")  # pytest -s shows the measured gaps
    assert gap <= REL


@pytest.mark.parametrize("arm", ["grpo", "soft_grpo"])
def test_bnpo_is_per_micro_batch_so_accumulation_changes_it(arm):
    one = update(arm, "bnpo", prompts=4, accum=1)
    two = update(arm, "bnpo", prompts=4, accum=2, minibatches=2)
    gap = relative_gap(one, two)
    print(f"{arm}/bnpo: accumulation 2 vs 1, relative gap {gap:.2e}")
    assert gap > 100 * REL  # TRL's bnpo: the local token count, by definition


def case(arm: type, loss: str, **run) -> dict:
    return dict(
        plugins=["countdown", "tiny_policy", EarlyEnd, ThinkReward, arm, "sgd"],
        config={
            "countdown": {"mode": "rl", "batch_size": 4, "val_problems": 0},
            "tiny_policy": TINY,
            arm.name: arm_config(loss),
            "sgd": SGD,
        },
        steps=STEPS,
        threads=1,
        agree_plugin_states=False,  # each rank reseeds its noise per slot: the generators differ by design
        **run,
    )


STEPS = 2
DIST = {f"{arm.name}/{loss}": (arm, loss) for arm in (SlotGRPO,) for loss in LOSSES} | {
    f"slot_soft_grpo/{loss}": (SlotSoftGRPO, loss) for loss in ("grpo", "dr_grpo", "dapo", "gspo")
}


@pytest.fixture(scope="module")
def two_ranks(cache):
    names = list(DIST)
    results = run_distributed([case(*DIST[name]) for name in names], nproc=2)
    return dict(zip(names, results))


def one_rank(arm: type, loss: str) -> dict:
    """The same global batch on one rank: 2 prompts per micro-batch, 2 micro-batches (slot = micro-batch)."""
    name = arm.name
    result = train(
        ["countdown", "tiny_policy", EarlyEnd, ThinkReward, arm, "sgd", Start],
        {
            "countdown": {"mode": "rl", "batch_size": 2, "val_problems": 0},
            "tiny_policy": TINY,
            name: arm_config(loss),
            "sgd": SGD,
        },
        steps=STEPS,
        grad_accum=2,
        threads=1,
    )
    return {k: v - Start.weights[k] for k, v in result.model.state_dict().items()}


def start_of(arm: type, loss: str) -> dict:
    one_rank(arm, loss)
    return Start.weights


@pytest.mark.parametrize("name", list(DIST))
def test_two_ranks_equal_one_rank(two_ranks, name):
    arm, loss = DIST[name]
    single = one_rank(arm, loss)
    start = Start.weights  # the same initialisation on both sides (run.seed)
    dist = {k: v - start[k] for k, v in two_ranks[name]["model"].items()}
    assert two_ranks[name]["checks"] == STEPS
    gap = relative_gap(single, dist)
    print(f"{name}: 2 ranks vs 1 rank, relative gap {gap:.2e}")  # pytest -s shows the measured gaps
    assert gap <= REL


def test_a_rank_local_normaliser_is_caught(two_ranks):
    # the control: the same 1-rank accumulation, but each micro-batch divides by its own token count
    single = one_rank(LocalSlotGRPO, "dapo")
    start = Start.weights
    dist = {k: v - start[k] for k, v in two_ranks["slot_grpo/dapo"]["model"].items()}
    gap = relative_gap(single, dist)
    print(f"control (micro-batch token counts): relative gap {gap:.2e}")
    assert gap > 100 * REL
