"""DIST (``dist_kd``) and CTKD (``ctkd``) on 2 ranks (torch.distributed.run, gloo, one thread per rank) against
1 rank with the same global batch: the MNIST-1D MLP student of the distillation recipes (shrunk), AdamW, the CNN
teacher of conftest.py. All cases run in ONE launch (engine.testing.distributed.run_distributed); each checks after
every step that both ranks hold bit-identical weights, plugin modules (CTKD's theta) and plugin states.

- ``dist_kd``: its intra-class relation correlates the samples of the batch, so each rank gathers every rank's
  logits (``state.all_gather``, differentiable) and computes the loss of the global batch; the control, DIST on
  each rank's share without the gather, must be far off.
- ``ctkd``: the temperature's theta is a plugin module (``state.add_module``), inside the one module DDP wraps, so
  its gradient is averaged with the model's. The test also checks that theta moved far more than the tolerance, so
  that matching theta is not matching an untrained number. The control keeps the same theta outside the plugin
  modules (trained through a param group DDP does not know), so each rank steps it with its own share's gradient:
  the model stays identical on both ranks (DDP averages its gradients), but the run leaves the 1-rank one.

Tolerance ``TOL = 1e-4`` (max |weight difference| and metric difference relative to max(1, |value|)): the 2-rank
gradient is the mean of two half-batch means (plus, for DIST, the gather's row gradients summed over ranks), the
1-rank one a single batch mean; they differ in the last float32 bits (~1e-7 relative), and AdamW, which divides by
sqrt(v), amplifies that. It is the ADAMW tolerance of test_ddp.py. Measured with these cases (``MEASURED``): 4.5e-8
and 8.9e-8 for DIST, 1.8e-6 and 4.5e-6 for CTKD, whose theta is one number whose gradient sums terms of both signs
over the batch (the KL's derivative in T), so it carries more relative rounding than a weight's, which Adam's
normalised step passes on; theta itself moves by 0.036 in these 6 steps. The DIST control is off by 3.1e-2, the
CTKD control by 3.6e-4 (the logged temperature at step 6: 15.4946 against 15.4890; 3.6 x TOL, 80 x the registered
theta's worst).
"""

from __future__ import annotations

import pytest
from dist_plugins import MNIST1D_DATA as DATA  # this directory is on sys.path (conftest.py)

from engine import hookimpl
from engine.testing import train
from engine.testing.distributed import assert_close_results, max_difference, run_distributed
from plugins.ctkd.plugin import CTKD
from plugins.ctkd.temperature import GlobalTemperature
from plugins.dist_kd.losses import dist_loss
from plugins.dist_kd.plugin import DISTKD
from plugins.kd.distill_inputs import TEMPERATURE, distill_inputs

TOL = 1e-4
#: max differences 2 ranks vs 1 rank, measured by this module's cases (6 steps, x86_64, torch 2.13 CPU)
MEASURED = {
    "dist": 4.5e-8,
    "dist_ls": 8.9e-8,
    "ctkd": 1.8e-6,
    "ctkd_ls": 4.5e-6,
    "dist_share_only": 3.1e-2,
    "ctkd_unregistered": 3.6e-4,
}
STEPS = 6
RUN = {"threads": 1, "log_interval": 2, "eval_interval": 3}
STUDENT = ["mnist1d", "mlp", "adamw", "cross_entropy", "teacher"]


class ShareOnlyDIST(DISTKD):
    """The control: DIST on each rank's share of the batch, without state.all_gather (what a port of the
    single-process official code computes under DDP)."""

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        c = self.config
        s, t, _ = distill_inputs(self, batch, outputs, state)
        _, parts = dist_loss(s, t, c.beta, c.gamma, c.temperature)
        return {"dist_inter": c.weight * parts["inter"], "dist_intra": c.weight * parts["intra"]}


class UnregisteredCTKD(CTKD):
    """The control of theta's reduction: the same temperature kept outside the plugin modules (a plain attribute)
    and handed to the optimizer through a param group, so DDP never sees it and each rank steps theta with the
    gradient of its own share of the batch (rank 0's theta is what the result holds)."""

    @hookimpl
    def hookmix_setup_model(self, state):
        c = self.config
        self.temperature = GlobalTemperature(c.t_start, c.t_end, c.init).to(state.device)

    @hookimpl
    def hookmix_param_groups(self, model, state):
        return [{"name": "ctkd_theta", "params": [self.temperature.theta]}]

    @hookimpl
    def hookmix_aux_outputs(self, state):
        lam = self.lambda_at(state)
        temperature = self.temperature(lam)
        state.log("ctkd/temperature", temperature.detach())
        state.log("ctkd/lambda", lam)
        return {TEMPERATURE: temperature}


def cases(teacher: str) -> dict[str, dict]:
    base = {"mnist1d": DATA, "mlp": {"hidden": [32]}, "adamw": {"lr": 1e-2}, "teacher": {"run": teacher}}
    dist = {**base, "dist_kd": {"temperature": 4.0, "weight": 2.0}}  # the official CIFAR settings, CE 1
    # lambda -0.5 at step 1, -1 from step 2: theta is trained from the first step
    ctkd = {**base, "cross_entropy": {"weight": 0.1}, "kd": {"weight": 0.9}, "ctkd": {"decay_steps": 2}}
    ctkd_ls = {**ctkd, "kd": {"weight": 9.0}}  # the KD+LS weights, the learned T as LS's base temperature
    return {
        "dist": dict(plugins=[*STUDENT, "dist_kd"], config=dist),
        "dist_ls": dict(plugins=[*STUDENT, "dist_kd", "logit_std"], config=dist),
        "ctkd": dict(plugins=[*STUDENT, "kd", "ctkd"], config=ctkd),
        "ctkd_ls": dict(plugins=[*STUDENT, "kd", "logit_std", "ctkd"], config=ctkd_ls),
        "dist_share_only": dict(plugins=[*STUDENT, ShareOnlyDIST], config=dist),
        "ctkd_unregistered": dict(plugins=[*STUDENT, "kd", UnregisteredCTKD], config=ctkd),
    }


@pytest.fixture(scope="module")
def runs(teacher):
    """Every 2-rank case of this module, in one torch.distributed.run launch."""
    named = cases(teacher)
    results = run_distributed([dict(case, steps=STEPS, **RUN) for case in named.values()], nproc=2)
    return dict(zip(named, results))


def one_rank(teacher: str, name: str) -> dict:
    case = cases(teacher)[name]
    res = train(case["plugins"], case["config"], STEPS, **RUN)
    return {"model": res.model.state_dict(), "modules": res.state.modules.state_dict(), "metrics": res.metrics}


@pytest.mark.parametrize("name", ["dist", "dist_ls", "ctkd", "ctkd_ls"])
def test_two_ranks_match_one_rank(runs, teacher, name):
    got = runs[name]
    assert got["checks"] == STEPS  # weights, theta and plugin states bit-identical on both ranks after every step
    one = one_rank(teacher, name)
    worst, what = max_difference(got, one)
    print(f"{name}: 2 ranks vs 1 rank, max difference {worst:.3g} ({what})")
    assert_close_results(got, one, TOL)
    if name.startswith("dist"):
        assert any("train/loss/dist_intra" in m for m in got["metrics"])


@pytest.mark.parametrize("name", ["ctkd", "ctkd_ls"])
def test_the_temperature_trains_identically_on_two_ranks(runs, teacher, name):
    theta = runs[name]["modules"]["ctkd.theta"]
    one = one_rank(teacher, name)["modules"]["ctkd.theta"]
    assert abs(theta.item() - 1.0) > 100 * TOL  # trained away from its init, far beyond the tolerance
    assert abs(theta.item() - one.item()) <= TOL
    temperatures = [m["ctkd/temperature"] for m in runs[name]["metrics"] if "ctkd/temperature" in m]
    assert len(temperatures) == STEPS // RUN["log_interval"] and len(set(temperatures)) > 1


def test_dist_on_each_ranks_share_is_not_the_one_rank_loss(runs, teacher):
    """The control: without the gather, 2 ranks train another function (the intra-class term of a share)."""
    assert runs["dist_share_only"]["checks"] == STEPS  # ranks still agree: DDP averages whatever each computed
    worst, _ = max_difference(runs["dist_share_only"], one_rank(teacher, "dist"))
    assert worst > 100 * TOL


def test_a_temperature_ddp_does_not_reduce_leaves_the_one_rank_run(runs, teacher):
    """The control: theta outside the plugin modules trains on each rank's share; the comparison above catches it."""
    got = runs["ctkd_unregistered"]
    assert got["checks"] == STEPS and got["modules"] == {}  # the model agrees on both ranks; theta is not a module
    one = one_rank(teacher, "ctkd")
    worst, what = max_difference(got, dict(one, modules={}))
    print(f"ctkd control: {worst:.3g} ({what})")
    assert worst > 2 * TOL
