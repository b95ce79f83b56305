"""The capabilities between the Countdown plugins and the rollout plugins that use them (docs/capabilities.md)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

#: Provided by the rollout plugins (grpo, soft_grpo): the Countdown reward plugins and RL-mode data require it.
RL = "rl"


@runtime_checkable
class CountdownTask(Protocol):
    """The Countdown data plugin as the RL plugins see it: its mode and its prompts per batch."""

    def task_mode(self) -> str:
        """``"rl"`` (batches of prompts for rollouts) or ``"sft"`` (teacher-forced solutions)."""
        ...

    def prompts_per_batch(self) -> int:
        """Prompts in one global training batch (the RL plugins split it into mini-batches)."""
        ...
