"""The loss each side computes on identical rollouts: hookmix's ``policy_loss`` against TRL's ``_compute_loss``.

One batch of rollouts is sampled once (hookmix's discrete sampler, the bench model, prompts of one token length so
that no row is padded: TRL's scoring forward numbers positions from the first pad, hookmix's from the first
token, and with padding the two log-probs would differ for that reason alone). Then, for each loss setting:

* **same log-probs**: one tensor of log-probs ``ℓ`` (the model's, hookmix-computed), old log-probs ``ℓ + 0.2·z``,
  reference log-probs ``ℓ + 0.2·z'`` (so that the clip, the caps and the KL act) and random advantages go to
  :func:`plugins.soft_grpo.objective.policy_loss` and to ``GRPOTrainer._compute_loss``, whose log-prob function
  is replaced by one returning ``ℓ``. Compared: the two losses and their gradients with respect to ``ℓ``.
* **own log-probs**: each side scores the rollouts' tokens with the model itself (hookmix's
  ``sequence_logprobs`` with the ``grpo`` plugin's likelihood settings, TRL's fused LM head) and computes its loss;
  compared: the log-probs, the losses and the gradients with respect to every parameter of the model, the input
  embedding matrix included (both sides train it: hookmix's discrete arm scores with undetached inputs).

Both sides use TRL's settings: no dual clip (``dual_clip_c=None``), TRL's KL bias correction, the loss mask
excluding the ``</think>`` forced by the think cap (TRL's ``tool_mask``), one process, no accumulation. The
formulas are then the same except hookmix's guards (the ±20 log-ratio clamp, the [−10, 10] k3 clamp), which
these inputs never reach, and VESPO's constants, given to both sides (:data:`.fixtures.VESPO`). Every loss
type of TRL 1.16 is compared, ``vespo`` included.
"""

from __future__ import annotations

import tempfile
from collections import Counter

from .fixtures import VESPO, Settings

#: (loss_type, changes) pairs compared; "level" is importance_sampling_level (sequence: GSPO).
CASES: list[tuple[str, dict]] = [
    ("grpo", {}),
    ("bnpo", {}),
    ("dr_grpo", {}),
    ("dapo", {}),
    ("cispo", {"epsilon_high": 5.0}),
    ("sapo", {}),
    ("luspo", {}),
    ("vespo", {}),
    ("dapo", {"beta": 0.04}),
    ("grpo", {"beta": 0.04}),
    ("vespo", {"beta": 0.04}),
    ("dapo", {"epsilon_high": 0.28}),
    ("grpo", {"delta": 1.5}),
    ("grpo", {"level": "sequence"}),
    ("dapo", {"level": "sequence", "beta": 0.04}),
]
# Tolerances. Same log-probs: both sides run float32 ops on the same tensors and differ only in the order of the
# sums (a few hundred terms of size <= ~5): rounding of ~1e-7 relative per sum, so 1e-6 · max(1, |loss|) has
# margin without admitting any formula difference (a one-token change of a normaliser moves the loss by ~1e-2).
# Own log-probs: the log-probs themselves come from different kernels (TRL's tiled log-sum-exp, hookmix's
# log_softmax of the full logits), ~1e-6 apart; 1e-5 for the losses and for the relative gradient difference.
# vespo is the most sensitive: its weight exp(λ + k·log w − λ·w) takes log w as a row's *sum* of log-ratios, so the
# per-token log-prob differences (<= 4.8e-7 here) add up over <= 39 tokens and are multiplied by |k − λ·w| (< 8.8
# for these inputs, |log w| <= 2.2): up to a few 1e-6 (measured 1.3e-6 on the losses, 2.0e-6 on the gradients), still
# under 1e-5, while a changed constant k or λ moves the loss by > 1e-3 (tests/bench/test_bench_rl.py).
SAME_TOL = 1e-6
OWN_TOL = 1e-5


def sample_rollouts(s: Settings, fixtures: dict, prompts: int, seed: int = 0):
    """``(model, rollout)``: ``prompts`` × ``group_size`` discrete rollouts of equal-length prompts."""
    import torch
    from transformers import AutoModelForCausalLM

    from plugins.countdown import task as cd
    from plugins.countdown.tokenizers import HFCountdownTokenizer
    from plugins.soft_grpo.sampling import SamplingConfig, generate_rollouts

    tok = HFCountdownTokenizer(fixtures["tokenizer"])
    encoded = [tok.encode(cd.prompt_text(cd.Problem(tuple(n), t))) for step in fixtures["problems"] for n, t in step]
    length = Counter(len(ids) for ids in encoded).most_common(1)[0][0]
    chosen = [ids for ids in encoded if len(ids) == length][:prompts]
    model = AutoModelForCausalLM.from_pretrained(fixtures["model"]).float()
    cfg = SamplingConfig(
        mode="discrete",
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        think_cap=s.think_cap,
        answer_cap=s.answer_cap,
        suppress_ids=(),
    )
    rollout = generate_rollouts(
        model,
        [ids for ids in chosen for _ in range(s.group_size)],
        cfg,
        think_end_id=tok.think_end_id,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        generator=torch.Generator().manual_seed(seed),
    )
    return model, rollout


def _trl_trainer(s: Settings, fixtures: dict, loss_type: str, changes: dict, out: str):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from .worker import trl_args

    args = trl_args(
        s,
        out,
        loss_type=loss_type,
        beta=changes.get("beta", 0.0),
        epsilon_high=changes.get("epsilon_high"),
        delta=changes.get("delta"),
        importance_sampling_level=changes.get("level", "token"),
        per_device_train_batch_size=s.group_size,
        max_steps=1,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(fixtures["model"]).float(),
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["<bos>1 2 3:6<think>"] * s.group_size}),
        processing_class=AutoTokenizer.from_pretrained(fixtures["tokenizer"]),
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by its training loop, which does not run here
    return trainer


def _objective(s: Settings, loss_type: str, changes: dict):
    from plugins.soft_grpo.objective import ObjectiveConfig

    return ObjectiveConfig(
        clip_eps=0.2,
        clip_eps_high=changes.get("epsilon_high"),
        dual_clip_c=None,  # TRL has no dual clip
        kl_coef=changes.get("beta", 0.0),
        loss_type=loss_type,
        importance_sampling_level=changes.get("level", "token"),
        delta=changes.get("delta"),
        kl_bias_correction=True,  # TRL's use_bias_correction_kl (default on)
        **{f"vespo_{k}": v for k, v in VESPO.items()},  # the values trl_args gives TRL
    )


def _likelihood():
    """The ``grpo`` plugin's likelihood settings (its discrete arm: the inputs not detached, the embeddings trained)."""
    from plugins.soft_grpo.rl_plugins import GRPO, GRPOConfig

    plugin = GRPO()
    plugin.config = GRPOConfig()
    return plugin.likelihood_config()


def compare_losses(s: Settings, fixtures: dict, prompts: int = 4, cases=None, seed: int = 0) -> list[dict]:
    """One row per case: both losses, their differences, on the same and on their own log-probs."""
    import torch

    from plugins.soft_grpo.likelihood import sequence_logprobs
    from plugins.soft_grpo.objective import policy_loss

    _, rollout = sample_rollouts(s, fixtures, prompts, seed)
    P, R = rollout.prompt_length, s.completion_length
    g = torch.Generator().manual_seed(seed + 1)
    B = rollout.input_ids.shape[0]
    # rows of different lengths, so that the normalisers differ (the bench model never ends a row early): row i
    # ends after ends[i] tokens, as if it had sampled <eos> there; TRL's attention mask ends there too
    ends = torch.randint(1, R + 1, (B,), generator=g)
    kept = torch.arange(R).unsqueeze(0) < ends.unsqueeze(1)
    mask = rollout.loss_mask[:, P:] & kept  # hookmix's loss mask: generated, not the forced </think>
    advantages = torch.randn(B, generator=g)
    z_old, z_ref = torch.randn(B, R, generator=g), torch.randn(B, R, generator=g)
    inputs = {
        "prompt_ids": rollout.input_ids[:, :P],
        "prompt_mask": rollout.attention_mask[:, :P].long(),
        "completion_ids": rollout.input_ids[:, P:],
        "completion_mask": kept.long(),  # attention: every generated token up to the row's end
        "tool_mask": rollout.loss_mask[:, P:].long(),  # not the forced </think>: TRL's loss mask is the product
        "advantages": advantages,
        "num_items_in_batch": mask.sum(),
    }
    likelihood = _likelihood()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hookmix-bench-rl-loss-") as out:
        for loss_type, changes in cases or CASES:
            trainer = _trl_trainer(s, fixtures, loss_type, changes, out)
            model, cfg = trainer.model, _objective(s, loss_type, changes)
            scorer = trainer._get_per_token_logps_and_entropies
            with torch.no_grad():
                logp = sequence_logprobs(model, rollout, likelihood)[:, P:]
            old, ref = logp + 0.2 * z_old, logp + 0.2 * z_ref
            batch = {**inputs, "old_per_token_logps": old, "ref_per_token_logps": ref}
            use_ref = ref if cfg.kl_coef else None

            # same log-probs: one leaf tensor into both losses
            ours_in = logp.clone().requires_grad_(True)
            ours, _ = policy_loss(ours_in, old, advantages, mask, cfg, use_ref, max_completion_length=R)
            (d_ours,) = torch.autograd.grad(ours, ours_in)
            theirs_in = logp.clone().requires_grad_(True)
            trainer._get_per_token_logps_and_entropies = lambda *a, **k: (theirs_in, torch.zeros_like(logp), None)
            theirs = trainer._compute_loss(model, batch)
            (d_theirs,) = torch.autograd.grad(theirs, theirs_in)
            trainer._get_per_token_logps_and_entropies = scorer

            # own log-probs: each side scores the tokens with the model, then its loss; the gradients of every
            # trainable parameter (a parameter one side leaves without gradient counts as 0 there, so a detached
            # embedding matrix, or any other, shows as a difference)
            params = [p for p in model.parameters() if p.requires_grad]
            own_logp = sequence_logprobs(model, rollout, likelihood)[:, P:]
            own, _ = policy_loss(own_logp, old, advantages, mask, cfg, use_ref, max_completion_length=R)
            g_own = torch.autograd.grad(own, params, allow_unused=True, materialize_grads=True)
            with torch.no_grad():
                attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
                trl_logp, _, _ = scorer(model, rollout.input_ids, attention, R)
            trl_own = trainer._compute_loss(model, batch)
            g_trl = torch.autograd.grad(trl_own, params, allow_unused=True, materialize_grads=True)
            scale = max(float(x.abs().max()) for x in g_trl)
            rows.append(
                {
                    "loss_type": loss_type,
                    "level": changes.get("level", "token"),
                    "beta": changes.get("beta", 0.0),
                    "other": ", ".join(f"{k} {v}" for k, v in changes.items() if k not in ("level", "beta")),
                    "hookmix": ours.item(),
                    "trl": theirs.item(),
                    "diff": abs(ours.item() - theirs.item()),
                    "grad_diff": float((d_ours - d_theirs).abs().max()),
                    "own_hookmix": own.item(),
                    "own_trl": trl_own.item(),
                    "own_diff": abs(own.item() - trl_own.item()),
                    "logp_diff": float((own_logp.detach() - trl_logp)[mask].abs().max()),
                    "own_grad_rel": max(float((a - b).abs().max()) for a, b in zip(g_own, g_trl)) / max(scale, 1e-30),
                    "params": len(params),
                }
            )
    return rows


def within_tolerance(row: dict) -> bool:
    """Both comparisons of a row within the module's stated tolerances."""
    size = max(1.0, abs(row["trl"]))
    same = row["diff"] <= SAME_TOL * size and row["grad_diff"] <= SAME_TOL
    own = row["own_diff"] <= OWN_TOL * max(1.0, abs(row["own_trl"])) and row["own_grad_rel"] <= OWN_TOL
    return same and own
