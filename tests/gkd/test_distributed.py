"""GKD on 2 real gloo ranks (torch.distributed.run, one launch) against the 1-process run of the same global batch.

What makes them equal: the lmbda coin and every sampling seed come from a generator that is the same on every rank
(one draw per global batch); with ``sample_chunks = 2`` each rank samples its half of the prompts with the stream
one process uses for that half, so both runs train on the same sequences; and the loss divides by the step's
global token count (``step_totals``), so the mean of the ranks' gradients is the 1-process gradient.
"""

from __future__ import annotations

from conftest import STUDENT, TASK  # this folder is on sys.path (conftest.py)
from gkd_test_plugins import LocalGKD

from engine.testing import train
from engine.testing.distributed import assert_close_results, max_difference, run_distributed

PLUGINS = ["countdown", "tiny_policy", "teacher", "gkd", "countdown_reward", "adamw"]
STEPS = 4
RUN = {"threads": 1, "log_interval": 1, "eval_interval": 2}


def test_two_ranks_match_one_rank(teacher_run):
    """Tolerance 1e-4, the AdamW tolerance of tests/distributed/test_ddp.py: the 2-rank gradient is the mean of two
    half-batch sums, rounded differently from one batch's sum in the last float32 bits, and AdamW divides by the
    tiny sqrt(v) of its first steps. Measured: 1.6e-7 (lmbda 0.5: on- and off-policy batches both occur). The
    control, each rank's batchmean over its own tokens, is off by far more (measured 1.0e-2): ranks hold different
    numbers of response tokens, so the mean of their batchmeans is not the batch's."""
    cfg = {
        "countdown": {**TASK, "mode": "rl", "batch_size": 8},
        "tiny_policy": STUDENT,
        "teacher": {"run": teacher_run},
        "gkd": {"lmbda": 0.5, "beta": 0.5, "think_cap": 8, "answer_cap": 8, "sample_chunks": 2},
        "adamw": {"lr": 3e-3},
    }
    cases = [
        dict(plugins=PLUGINS, config=cfg, steps=STEPS, **RUN),
        dict(plugins=[p if p != "gkd" else LocalGKD for p in PLUGINS], config=cfg, steps=STEPS, **RUN),
    ]
    got, local = run_distributed(cases, nproc=2)
    assert got["checks"] == STEPS and local["checks"] == STEPS  # weights and plugin states equal on both ranks
    one = train(PLUGINS, cfg, STEPS, **RUN)
    one = {"model": one.model.state_dict(), "modules": one.state.modules.state_dict(), "metrics": one.metrics}
    on_policy = [m["gkd/on_policy"] for m in got["metrics"] if "gkd/on_policy" in m]
    assert set(on_policy) == {0.0, 1.0}  # both sources were trained on
    worst, what = max_difference(got, one)
    print(f"2 ranks vs 1: {worst:.2e} ({what}); per-rank batchmean control: {max_difference(local, one)[0]:.2e}")
    assert_close_results(got, one, 1e-4)
    assert max_difference(local, one)[0] > 1e-3
