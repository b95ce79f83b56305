"""The loss closure on 2 real processes (gloo, one thread per rank): ``sam`` under DDP and FSDP, and ``lbfgs`` under
DDP, against 1-process runs of the same recipes. Every case runs in ONE torch.distributed.run launch, with the rank
agreement check after every step (the full weights, bit-identical on both ranks).

Tolerances are the project's (tests/distributed/test_ddp.py, test_fsdp.py): ``ADAMW = 1e-4`` (max |weight
difference|, metric difference relative to max(1, |value|)). A gradient averaged over 2 ranks is not rounded like
one batch mean (last float32 bits); SAM normalises that gradient (rho * g / ||g||), re-evaluates at the perturbed
weights and AdamW divides by sqrt(v): measured 5e-8 (SAM) and 7e-8 (ASAM with accumulation), DDP and FSDP alike,
far below 1e-4. The control: in the same 6 steps SAM's weights end 0.044 away from plain AdamW's (ASAM: 0.053), so
the comparison tells SAM from its base optimizer; a missing reduction differs by 0.06-0.14 (test_ddp.py).

LBFGS (a full-batch method: batch = the whole 400-example split, 5 iterations per step) decides its line search
on the closure's loss, which the closure returns as the mean over ranks, so both ranks take the same branches; the
2-rank run equals the 1-rank run within ``ADAMW`` as well (measured: 1.1e-5, the head's bias).
"""

from __future__ import annotations

import pytest
from dist_plugins import MNIST1D_DATA as DATA  # this directory is on sys.path (conftest.py)

from engine.testing import train
from engine.testing.distributed import assert_close_results, max_difference, run_distributed

ADAMW = 1e-4
STEPS = 6
RUN = {"threads": 1, "log_interval": 2, "eval_interval": 3}
MLP = dict(
    plugins=["mnist1d", "mlp", "adamw", "cross_entropy"],
    config={"mnist1d": DATA, "mlp": {"hidden": [32]}, "adamw": {"lr": 1e-2}},
)
CASES = {
    "sam_ddp": dict(plugins=[*MLP["plugins"], "sam"], config=MLP["config"]),
    "asam_ddp_accum": dict(
        plugins=[*MLP["plugins"], "sam"],
        config={**MLP["config"], "sam": {"adaptive": True, "rho": 0.5}},
        grad_accum=2,
        grad_clip=1.0,
    ),
    "sam_fsdp": dict(plugins=[*MLP["plugins"], "sam"], config=MLP["config"], strategy="fsdp"),
    "asam_fsdp_accum": dict(
        plugins=[*MLP["plugins"], "sam"],
        config={**MLP["config"], "sam": {"adaptive": True, "rho": 0.5}},
        grad_accum=2,
        strategy="fsdp",
    ),
    "lbfgs_ddp": dict(
        plugins=["mnist1d", "mlp", "lbfgs", "cross_entropy"],
        config={"mnist1d": {**DATA, "batch_size": 400}, "mlp": {"hidden": [32]}, "lbfgs": {"max_iter": 5}},
    ),
}


@pytest.fixture(scope="module")
def runs(cache):
    """Every 2-rank case of this module, in one torch.distributed.run launch."""
    results = run_distributed([dict(case, steps=STEPS, **RUN) for case in CASES.values()], nproc=2)
    return dict(zip(CASES, results))


def single(case: dict) -> dict:
    """The case in this process (run.strategy is a no-op in one process: it trains as a plain run)."""
    case = {k: v for k, v in case.items() if k != "strategy"}
    res = train(case.pop("plugins"), case.pop("config"), STEPS, **case, **RUN)
    return {"model": res.model.state_dict(), "modules": res.state.modules.state_dict(), "metrics": res.metrics}


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_match_one_rank(runs, name):
    assert runs[name]["checks"] == STEPS  # the full weights bit-identical on both ranks after every step
    assert_close_results(runs[name], single(CASES[name]), ADAMW)
    assert any("train/loss" in m for m in runs[name]["metrics"])


def test_sam_is_not_plain_adamw_under_ddp_or_fsdp(runs):
    """The control: the comparison above tells SAM from its base optimizer by far more than the tolerance."""
    plain = single(MLP)
    for name in ("sam_ddp", "sam_fsdp"):
        worst, _ = max_difference({**runs[name], "metrics": plain["metrics"]}, plain)
        assert worst > 10 * ADAMW, f"{name}: SAM's weights are within {worst:.3g} of plain AdamW's"
        assert all("sam/perturbed_loss" in m for m in runs[name]["metrics"] if "train/loss" in m)
