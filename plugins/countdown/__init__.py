"""The Countdown arithmetic task, for the methods that train policies on it (docs/soft-grpo.md).

* :mod:`.task` -- problems, solver, safe verifier and reward, character tokenizer, prompts, split.
* :mod:`.sft_traces` -- gold scratchpad traces (optionally corrupted) and their collation for SFT.
* :mod:`.tokenizers` -- a Hugging Face tokenizer behind the character tokenizer's interface.
* :mod:`.capabilities` -- ``RL`` and ``CountdownTask``: what the data plugin and the rollout plugins ask of each other.
* :mod:`.data_plugin` -- plugin ``countdown`` (rollout prompts or SFT traces, held-out split).
* :mod:`.reward_plugins` -- plugins ``countdown_reward`` and ``format_reward``.
"""
