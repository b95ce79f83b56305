"""Test plugins the distributed workers import: a rank that dies or raises at a given step."""

import os
import signal
import time

import attrs
import torch

from engine import Plugin, field, hookimpl


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
