"""Turning a drawn batch into rollouts for RL training (runs with a ``hookmix_generate_rollouts`` plugin).

The policy samples without gradients in eval mode, the reward plugins score the samples (named
terms, summed and logged), and the advantages plugin turns rewards into advantages (the rewards
themselves when there is none). The result is the batch the loss plugins see.
"""

from __future__ import annotations

import torch

from engine.errors import BadInput
from engine.manager import Manager
from engine.state import State


def roll_out(model: torch.nn.Module, batch: dict, state: State, manager: Manager) -> dict:
    model.eval()
    with torch.no_grad(), state.autocast():
        rollouts = manager.generate_rollouts(model, batch, state)
    model.train()
    terms = manager.rewards(rollouts, state)
    if not terms:
        raise BadInput("a rollout plugin is enabled but no plugin returns rewards; add a reward plugin")
    reward = sum(terms.values())
    for name, term in terms.items():
        state.log(f"train/reward/{name}", term.float().mean())
    state.log("train/reward", reward.float().mean())
    rollouts["reward"] = reward
    advantages = manager.advantages(rollouts, reward, state)
    rollouts["advantages"] = reward if advantages is None else advantages
    return rollouts
