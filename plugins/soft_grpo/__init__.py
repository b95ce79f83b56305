"""SofT-GRPO plugin package: pure-PyTorch core (engine-independent).

Modules
-------
* :mod:`.countdown`: Countdown task, solver, safe verifier/reward, tokenizer, prompts, split.
* :mod:`.sft_traces`: gold scratchpad traces (optionally corrupted) and their collation for SFT.
* :mod:`.policy`: :class:`SoftPolicy` protocol, :class:`TinyPolicy` (pre-LN decoder, KV cache).
* :mod:`.hf_adapter`: Hugging Face causal-LM adapter (``transformers`` optional, imported lazily).
* :mod:`.record`: :class:`Rollout` record and shared soft-token helpers.
* :mod:`.sampling`: discrete and soft-thinking (Gumbel) rollouts.
* :mod:`.likelihood`: input rebuild and per-position log-likelihood (Gumbel density / categorical).
* :mod:`.objective`: group advantages, PPO-clip + dual clip, k3 KL, aggregation.
* :mod:`.passk`: unbiased and first-k pass@k, paired bootstrap.
"""

from .likelihood import LikelihoodConfig, position_loglik, rebuild_inputs_embeds, sequence_logprobs, soft_loglik
from .objective import ObjectiveConfig, group_advantages, k3_kl, policy_loss, rollout_loss
from .passk import first_k_pass, pass_at_k, pass_at_k_table
from .policy import SoftPolicy, TinyPolicy, TinyPolicyConfig, as_soft_policy
from .record import Rollout
from .sampling import SamplingConfig, generate_rollouts

__all__ = [
    "LikelihoodConfig",
    "ObjectiveConfig",
    "Rollout",
    "SamplingConfig",
    "SoftPolicy",
    "TinyPolicy",
    "TinyPolicyConfig",
    "as_soft_policy",
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
