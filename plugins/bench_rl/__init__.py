"""``hookmix bench rl [--against trl]``: hookmix's ``grpo`` and ``soft_grpo`` steps side by side with TRL's ``GRPOTrainer``
on the same work (docs/performance.md, "GRPO side by side with TRL"). TRL is the optional extra ``trl``.

* :mod:`.fixtures` -- the shared settings, the Countdown vocabulary as a ``PreTrainedTokenizerFast``, the tiny random
  Llama both sides load (its LM head keeps every row at full length), the planned prompts, ``require_trl``.
* :mod:`.worker` -- one contestant in its own process (hookmix ``Trainer.advance()`` or TRL ``GRPOTrainer.train()``):
  per-step wall and CPU time, generation time and tokens, no-grad log-prob forwards, the problems seen, peak RSS.
* :mod:`.losses` -- the loss each side computes on identical rollouts (hookmix ``policy_loss``, TRL ``_compute_loss``),
  on the same log-probs and on each side's own, for every loss type of TRL 1.16.
* :mod:`.cli` -- the command's options, the contestants' rounds, the two tables.
* :mod:`.commands` -- the ``bench-rl`` entry of the ``hookmix.commands`` group.

Not a plugin: nothing here is registered in ``hookmix.plugins``; the contestants are the ``grpo`` / ``soft_grpo`` /
``hf_policy`` / ``countdown`` plugins themselves.
"""
