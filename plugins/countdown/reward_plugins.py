"""The reward plugins ``countdown_reward`` (verifiable 0/1) and ``format_reward`` (shaping)."""

from __future__ import annotations

import attrs
import torch

from engine import Plugin, field, hookimpl
from engine.validators import bounded

from . import task as cd
from .capabilities import RL
from .data_plugin import problems_from


@attrs.define
class RewardConfig:
    weight: float = field(1.0, "weight of the reward term", validator=bounded)


class CountdownReward(Plugin):
    """Verifiable 0/1 reward: the answer uses the numbers exactly once and hits the target (term `countdown`)."""

    name = "countdown_reward"
    Config = RewardConfig
    requires = (RL,)

    @hookimpl
    def hookmix_rewards(self, rollouts, state):
        r = rollouts["rollout"]  # the rollout record: its decoded answers and whether each finished
        vals = [
            cd.answer_reward(p, a, f) for p, a, f in zip(problems_from(rollouts), r.answer_text, r.finished.tolist())
        ]
        return {"countdown": self.config.weight * torch.tensor(vals, dtype=torch.float32)}


@attrs.define
class FormatRewardConfig:
    weight: float = field(0.1, "weight of the reward term", validator=bounded)


class FormatReward(Plugin):
    """Shaping reward: 1 when the rollout ends with <eos> and its answer parses as an expression (term `format`)."""

    name = "format_reward"
    Config = FormatRewardConfig
    requires = (RL,)

    @staticmethod
    def _parses(text: str) -> bool:
        try:
            cd.parse_expression(text.strip())
        except (ValueError, RecursionError):
            return False
        return True

    @hookimpl
    def hookmix_rewards(self, rollouts, state):
        r = rollouts["rollout"]
        vals = [float(f and self._parses(a)) for a, f in zip(r.answer_text, r.finished.tolist())]
        return {"format": self.config.weight * torch.tensor(vals, dtype=torch.float32)}
