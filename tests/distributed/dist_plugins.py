"""Test plugins the distributed workers import: a rank that dies or raises at a given step."""

import os
import signal
import time

import attrs
import torch

from engine import Plugin, TrainingFailure, WeightConstraint, field, hookimpl

#: The MNIST-1D settings of the distributed tests (and of the shared teacher in conftest.py).
MNIST1D_DATA = {"num_train": 400, "num_test": 100, "batch_size": 50}
# the same small MLP run as `hookmix train mnist1d-mlp` overrides (the CLI tests of launching)
MLP_CLI = [
    "plugins.mnist1d.num_train=400",
    "plugins.mnist1d.num_test=100",
    "plugins.mlp.hidden=[32]",
    "run.threads=1",
    "run.steps=4",
    "run.log_interval=2",
]


@attrs.define
class FaultConfig:
    step: int = field(3, "the step at which the fault happens")
    rank: int = field(1, "the rank that fails")
    kind: str = field("raise", "raise: a RuntimeError; kill: SIGKILL (first attempt only, as a crashed node)")


class Fault(Plugin):
    """Makes one rank fail mid-run: raise an exception, or SIGKILL itself before torchrun's first restart."""

    name = "fault"
    Config = FaultConfig

    @hookimpl
    def hookmix_after_optimizer_step(self, model, state):
        c = self.config
        if state.step != c.step or state.rank != c.rank:
            return
        if c.kind == "kill":
            if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
                os.kill(os.getpid(), signal.SIGKILL)
            return
        with open(os.path.join(state.run_dir.path, "fault-time"), "w") as f:  # when the fault happened
            f.write(repr(time.time()))
        raise RuntimeError(f"injected fault at step {state.step}")


class RankReward(Plugin):
    """Test reward: term `rank` is the rank's number (its logged mean must be the mean over ranks), and
    `think_length` gives every group a spread, so the policy gradient is not zero."""

    name = "rank_reward"

    @hookimpl
    def hookmix_rewards(self, rollouts, state):
        think = rollouts["rollout"].think_lengths.float()
        return {"rank": torch.full_like(think, float(state.rank)), "think_length": 0.1 * think}


@attrs.define
class FullCapConfig:
    w_max: float = field(2.0, "the cap every constrained matrix must respect")
    tol: float = field(1e-6, "relative slack: the hard cap's polynomial overshoots by <= 1.09%")


class FullCapCheck(Plugin):
    """Test check of the full-matrix contract: after every step (after every weight constraint) every
    constrained matrix is a plain full tensor whose exact largest singular value is at most w_max."""

    name = "full_cap_check"
    Config = FullCapConfig
    needs_full_weights = True
    after = (WeightConstraint,)

    @hookimpl
    def hookmix_after_optimizer_step(self, model, state):
        from torch.distributed.tensor import DTensor

        names = set(state.provider(WeightConstraint).constrained_parameters(model))
        params = dict(model.named_parameters())
        worst = 0.0
        for name in names:
            p = params[name]
            if isinstance(p, DTensor):
                raise TrainingFailure(f"step {state.step}: {name} is a shard, not the full matrix")
            if p.ndim == 2:
                worst = max(worst, torch.linalg.matrix_norm(p.double(), 2).item())
        if worst > self.config.w_max * (1 + self.config.tol):
            raise TrainingFailure(f"step {state.step}: sigma_max {worst} > w_max {self.config.w_max}")
        state.log("check/sigma_max", worst)


class NeedsFullInBackward(Plugin):
    """Test plugin: needs full weights in a hook where FSDP holds only shards (must be refused)."""

    name = "needs_full_in_backward"
    needs_full_weights = True

    @hookimpl
    def hookmix_after_backward(self, model, state):
        pass


class ShardCheck(Plugin):
    """Test check that FSDP shards: logs the fraction of the model's elements this rank holds (0.5 on 2 ranks
    for dims that split evenly), and that every parameter is a DTensor outside the gathered view."""

    name = "shard_check"

    @hookimpl
    def hookmix_after_optimizer_step(self, model, state):
        from torch.distributed.tensor import DTensor

        params = list(model.parameters())
        if not all(isinstance(p, DTensor) for p in params):
            raise TrainingFailure(f"step {state.step}: a parameter is not sharded")
        state.log("check/local_fraction", sum(p.to_local().numel() for p in params) / sum(p.numel() for p in params))


@attrs.define
class FrozenCheckConfig:
    max_fraction: float = field(1.0, "the most of a frozen model's parameter bytes one rank may hold")
    log: bool = field(True, "log check/frozen_fraction (a metric a 1-process run would give as 1.0)")
    late: bool = field(
        False,
        "also add a frozen Linear in hookmix_on_train_start (after the engine sharded the "
        "run) and call it in every forward",
    )


class FrozenCheck(Plugin):
    """Test check of frozen-model sharding (state.add_frozen_module): after every step, the fraction of the
    frozen models' parameter bytes this rank holds (outside their forwards: the engine resharded them), at
    most ``max_fraction``; their parameters never require gradients."""

    name = "frozen_check"
    Config = FrozenCheckConfig

    @hookimpl
    def hookmix_on_train_start(self, state):
        if self.config.late:
            self.late = state.add_frozen_module("frozen_check_late", torch.nn.Linear(8, 6))

    @hookimpl
    def hookmix_aux_outputs(self, batch, state):
        if self.config.late:
            with torch.no_grad():
                self.late(torch.ones(2, 8, device=state.device))

    @hookimpl
    def hookmix_after_optimizer_step(self, model, state):
        from torch.distributed.tensor import DTensor

        params = [p for m in state.frozen_modules.values() for p in m.parameters()]
        if not params or any(p.requires_grad for p in params):
            raise TrainingFailure(f"step {state.step}: no frozen module, or one that requires gradients")
        local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size() for p in params)
        fraction = local / sum(p.numel() * p.element_size() for p in params)
        if fraction > self.config.max_fraction:
            raise TrainingFailure(f"step {state.step}: this rank holds {fraction:.3f} of the frozen models' bytes")
        if self.config.log:
            state.log("check/frozen_fraction", fraction)
