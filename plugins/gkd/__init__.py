"""On-policy distillation: GKD (Agarwal et al., ICLR 2024) composed of existing pieces (docs/gkd.md).

* :mod:`.losses` -- the generalized Jensen-Shannon divergence with TRL's conventions (``generalized_jsd_loss``:
  beta, temperature, batchmean over unmasked tokens); no engine import.
* :mod:`.sequences` -- student / teacher samples and gold traces as a Countdown LM batch and a rollout record.
* :mod:`.plugin` -- plugin ``gkd``: the lmbda coin, the sequences (``hookmix_generate_rollouts``) and the loss
  term ``gkd``; the teacher is the ``teacher`` plugin of :mod:`plugins.kd` holding a policy.
* :mod:`.experiment` -- ``hookmix countdown-gkd``: teacher SFT, on-policy vs off-policy GKD vs SFT over seeds,
  pass@k report (docs/gkd-countdown.md); registered in :mod:`.commands`.

``recipes/`` holds ``countdown-sft-teacher``, ``countdown-gkd`` (on-policy) and ``countdown-gkd-offpolicy``.
"""
