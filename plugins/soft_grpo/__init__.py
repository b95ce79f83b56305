"""SofT-GRPO: Gumbel-reparameterised soft-thinking policy optimisation, and its GRPO baseline (docs/soft-grpo.md).

* :mod:`.record` -- the :class:`Rollout` record and shared soft-token helpers.
* :mod:`.sampling` -- discrete and soft-thinking (Gumbel) rollouts.
* :mod:`.likelihood` -- input rebuild and per-position log-likelihood (Gumbel density / categorical).
* :mod:`.objective` -- group advantages (``scale_rewards``), PPO-clip + dual clip, k3 KL, the loss assembled.
* :mod:`.loss_types` -- TRL's loss types by name (grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo), GSPO's
  sequence ratio, each type's normaliser.
* :mod:`.dapo` -- DAPO's dynamic sampling (groups with a reward spread) and soft overlong punishment.
* :mod:`.passk` -- unbiased and first-k pass@k, paired bootstrap.
* :mod:`.rl_plugins` -- plugins ``grpo`` and ``soft_grpo``.
* :mod:`.passk_plugin` -- plugin ``passk`` (pass@k evaluation on held-out Countdown problems).
* :mod:`.compare` -- ``hookmix countdown-compare``: SFT, GRPO vs SofT-GRPO over seeds, the pass@k report.
* :mod:`.runs` -- what the Countdown experiment commands share: train or reuse a run, the log, reading runs back.
* :mod:`.variants` -- ``hookmix countdown-variants``: grpo, dr_grpo, dapo, gspo × discrete and soft, over seeds.
* :mod:`.bench_rollouts` -- ``hookmix bench-rollouts``: soft vs discrete rollout throughput.
* :mod:`.commands` -- the three commands' entries of the ``hookmix.commands`` group.

The task is :mod:`plugins.countdown`, the policies :mod:`plugins.policies`; ``recipes/`` holds the recipes.
The names below are the pure-PyTorch core (no engine import).
"""

from .likelihood import LikelihoodConfig, position_loglik, rebuild_inputs_embeds, sequence_logprobs, soft_loglik
from .objective import ObjectiveConfig, group_advantages, k3_kl, policy_loss, rollout_loss
from .passk import first_k_pass, pass_at_k, pass_at_k_table
from .record import Rollout
from .sampling import SamplingConfig, generate_rollouts

__all__ = [
    "LikelihoodConfig",
    "ObjectiveConfig",
    "Rollout",
    "SamplingConfig",
    "first_k_pass",
    "generate_rollouts",
    "group_advantages",
    "k3_kl",
    "pass_at_k",
    "pass_at_k_table",
    "policy_loss",
    "position_loglik",
    "rebuild_inputs_embeds",
    "rollout_loss",
    "sequence_logprobs",
    "soft_loglik",
]
