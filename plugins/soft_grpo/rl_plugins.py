"""The RL plugins ``grpo`` and ``soft_grpo``: rollouts, group advantages, the clipped objective and the KL term.

How the RL step maps onto the engine hooks (see ``engine/loop.py``)::

    batch = countdown.train_batch(generator)          # prompts (numbers, target), left-padded
    rollouts = grpo|soft_grpo.generate_rollouts(...)  # G samples per prompt (discrete | soft+Gumbel),
                                                      # θ_old and reference log-likelihoods, teacher-forced
    rewards = countdown_reward + format_reward        # named, weighted, summed by the engine
    advantages = grpo|soft_grpo.advantages(...)       # group-normalised (Bessel std + 1e-6); a default:
                                                      # any plugin implementing hookmix_advantages replaces it
    outputs = grpo|soft_grpo.forward(...)             # teacher-forced log-likelihood under θ
    terms = grpo|soft_grpo.loss_terms(...)            # {"pg": the loss_type surrogate, "kl": β·k3}

Every random draw of a run comes from the engine's data generator (problems, SFT traces) or from a
generator owned by the RL plugin and saved in its checkpoint state (rollout noise), so a resumed run is
bit-exact. Evaluation (``passk``) uses its own freshly seeded generators: every evaluated model sees the
same problems and the same noise stream.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Literal

import attrs
import torch

from engine import BadInput, Plugin, WeightConstraint, field, hookimpl
from engine.validators import MAX_MAGNITUDE, Rule, bounded, finite_non_negative, finite_positive, in_range, int_range
from plugins.countdown import task as cd
from plugins.countdown.capabilities import RL, CountdownTask
from plugins.countdown.data_plugin import check_context
from plugins.countdown.tokenizers import suppress_ids_for
from plugins.policies.capabilities import POLICY

from .dapo import groups_to_keep, overlong_penalty
from .likelihood import LikelihoodConfig, sequence_logprobs
from .objective import ObjectiveConfig, group_advantages, policy_loss_terms
from .record import Rollout
from .sampling import SamplingConfig, generate_rollouts

RECIPES = "plugins.soft_grpo.recipes"
dual_clip_rule = Rule(f"0 (off) or a number in (1, {MAX_MAGNITUDE:g}]", lambda v: v == 0 or 1 < v <= MAX_MAGNITUDE)
delta_rule = Rule(f"0 (off) or a number in (1, {MAX_MAGNITUDE:g}]", lambda v: v == 0 or 1 < v <= MAX_MAGNITUDE)
clamp_rule = Rule(
    "[] (no clamp) or [low, high] with finite low < high",
    lambda v: len(v) == 0 or (len(v) == 2 and all(math.isfinite(x) for x in v) and v[0] < v[1]),
)


def _clamp_pair(value: list[float], what: str) -> tuple[float, float] | None:
    if not value:
        return None
    if len(value) != 2 or value[0] >= value[1]:
        raise BadInput(f"{what} must be [] (no clamp) or [low, high] with low < high, got {value}")
    return (float(value[0]), float(value[1]))


@attrs.define
class GRPOConfig:
    group_size: int = field(8, "rollouts per prompt (G; group advantages need G >= 2)", validator=int_range(2, 4096))
    minibatches: int = field(
        1,
        "chunks per rollout batch, split by prompt groups and consumed one per micro-batch "
        "(grad_accum 1: one optimizer step each; the ratio is exactly 1 on the first only)",
        validator=int_range(1, 2**16),
    )
    temperature: float = field(
        1.0, "sampling temperature (also divides the logits in the likelihood)", validator=finite_positive
    )
    top_k: int = field(
        5, "top-k filter (for soft thinking also the number of mixed/stored ids)", validator=int_range(1, 2**20)
    )
    top_p: float = field(0.95, "top-p filter", validator=in_range(0, 1, low_open=True))
    min_p: float = field(0.0, "min-p filter (0: off)", validator=in_range(0, 1, high_open=True))
    think_cap: int = field(24, "thinking tokens before </think> is forced", validator=int_range(0, 2**16))
    answer_cap: int = field(14, "answer tokens after </think>, <eos> included", validator=int_range(1, 2**16))
    clip_eps: float = field(0.2, "PPO clip ε (low side)", validator=finite_positive)
    clip_eps_high: float = field(
        0.0, "PPO clip ε on the high side (0: same as clip_eps)", validator=finite_non_negative
    )
    dual_clip: float = field(3.0, "dual-clip constant c > 1 for negative advantages (0: off)", validator=dual_clip_rule)
    kl_coef: float = field(
        0.001, "β of the k3 KL to the frozen reference (0: no reference model)", validator=finite_non_negative
    )
    agg: Literal["token-mean", "seq-mean"] = field(
        "token-mean", "token-mean (DAPO / official code) or seq-mean (GRPO 1/|o_i|); loss_type's older name"
    )
    loss_type: Literal["auto", "grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"] = field(
        "auto",
        "TRL's loss_type (docs/soft-grpo.md); auto: from agg (token-mean: dapo, seq-mean: grpo)",
    )
    importance_sampling_level: Literal["token", "sequence"] = field(
        "token", "ratio per token, or per sequence from the mean token log-ratio (GSPO)"
    )
    delta: float = field(0.0, "cap of the unclipped ratio, PPO-clip loss types only (0: off)", validator=delta_rule)
    kl_bias_correction: bool = field(False, "multiply the k3 KL by the ratio (TRL: use_bias_correction_kl, on)")
    sapo_tau_pos: float = field(1.0, "SAPO gate temperature for A > 0", validator=finite_positive)
    sapo_tau_neg: float = field(1.05, "SAPO gate temperature for A <= 0", validator=finite_positive)
    vespo_k_pos: float = field(2.0, "VESPO gamma weight: power k for A >= 0", validator=finite_non_negative)
    vespo_lambda_pos: float = field(3.0, "VESPO gamma weight: decay λ for A >= 0", validator=finite_non_negative)
    vespo_k_neg: float = field(3.0, "VESPO gamma weight: power k for A < 0", validator=finite_non_negative)
    vespo_lambda_neg: float = field(2.0, "VESPO gamma weight: decay λ for A < 0", validator=finite_non_negative)
    scale_advantages: bool = field(True, "divide by the group's Bessel std + adv_eps (false: Dr. GRPO)")
    scale_rewards: Literal["auto", "group", "batch", "none"] = field(
        "auto", "TRL's scale_rewards: std of the group / of the batch / none; auto: from scale_advantages"
    )
    adv_eps: float = field(1e-6, "added to the group std (verl: 1e-6)", validator=finite_non_negative)
    seed_offset: int = field(2, "the rollout generator is seeded with run.seed + this", validator=int_range(0, 2**32))
    dynamic_sampling: int = field(
        0,
        "DAPO dynamic sampling: draw this many times the prompts, keep the first groups whose rewards differ "
        "(0: off; >= 2: on)",
        validator=int_range(0, 64),
    )
    overlong_cache: int = field(
        0,
        "DAPO soft overlong punishment: L_cache, the last tokens of the budget (0: off)",
        validator=int_range(0, 2**16),
    )
    overlong_factor: float = field(1.0, "weight of the overlong reward term (DAPO: 1)", validator=finite_non_negative)


@attrs.define
class SoftGRPOConfig(GRPOConfig):
    tau: float = field(0.1, "Gumbel-Softmax temperature τ of the soft-token weights", validator=finite_positive)
    noise_factor: float = field(
        1.0, "λ: g' = log(p̄ + 1e-6) + λ·g (the Gumbel likelihood needs noise: > 0)", validator=finite_positive
    )
    gumbel_clamp: list[float] = field(
        [-1.5, 3.0], "clamp of the rollout Gumbel noise ([] : none)", validator=clamp_rule
    )
    soft_density: Literal["mean", "sum"] = field(
        "mean", "mean (official code: masked mean of Gumbel log-densities) or sum (exact)"
    )
    likelihood_clamp: list[float] = field(
        [-1.5, 3.0], "clamp of the recovered noise z in the likelihood ([] : none)", validator=clamp_rule
    )
    mask_logq_min: float = field(
        -3.0, "mean density: slots with log(q + 1e-6) above this (q > ~0.05)", validator=bounded
    )
    detach_inputs: bool = field(True, "detach the rebuilt mixture inputs (official code)")


def step_counts(totals: dict | None) -> dict:
    """The normaliser counts of one micro-batch's loss from the step's totals (engine.StepTotals): the global
    count divided by the micro-batch losses the engine averages, so that the average divides by the global count.
    ``{}`` (this micro-batch's own counts) without totals, e.g. when a test calls the hook directly."""
    if not totals:
        return {}
    share = totals["micro_batches"]
    counts = {"num_sequences": totals["sequences"] / share}
    if totals["tokens"] is not None:
        counts["num_tokens"] = totals["tokens"] / share
    return counts


def _prompts(batch: dict) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
    """A prompt batch's prompts (token lists, padding removed) and its problems (``numbers``, ``targets``)."""
    ids, mask = batch["prompt_ids"].cpu(), batch["prompt_mask"].cpu()
    return [row[m].tolist() for row, m in zip(ids, mask)], {k: batch[k].cpu() for k in ("numbers", "targets")}


def _cat_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows of ``a`` then ``b``; a 2-D ``numbers`` table is zero-padded to the wider of the two (0: no number)."""
    if a.dim() == 2 and a.shape[1] != b.shape[1]:
        width = max(a.shape[1], b.shape[1])
        a, b = (torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in (a, b))
    return torch.cat([a, b])


def _pack_rollout(r: Rollout) -> dict:
    return {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}


def _unpack_rollout(d: dict, device) -> Rollout:
    r = Rollout(**d)
    return r.to(device)


class GRPO(Plugin):
    """GRPO on discretely sampled scratchpads: PPO-clip + dual clip, k3 KL to the frozen start, group advantages."""

    name = "grpo"
    Config = GRPOConfig
    provides = (RL,)
    requires = (CountdownTask, POLICY)
    # the frozen reference is copied in setup_model: after any plugin that projects the initial weights
    after = (WeightConstraint,)
    recipes = RECIPES
    # group advantages are a default (plugin API 1.1): an enabled plugin that implements hookmix_advantages
    # (another estimator, a third-party package) replaces them, and the plan says so; SoftGRPO inherits this
    default_hooks = ("hookmix_advantages",)
    mode = "discrete"

    # configs of the pure code
    def sampling_config(self, tok) -> SamplingConfig:
        c = self.config
        extra = {}
        if self.mode == "soft":
            extra = dict(
                tau=c.tau,
                noise_factor=c.noise_factor,
                gumbel_clamp=_clamp_pair(c.gumbel_clamp, f"plugins.{self.name}.gumbel_clamp"),
            )
        return SamplingConfig(
            mode=self.mode,
            temperature=c.temperature,
            top_k=c.top_k,
            top_p=c.top_p,
            min_p=c.min_p,
            think_cap=c.think_cap,
            answer_cap=c.answer_cap,
            suppress_ids=suppress_ids_for(tok),
            **extra,
        )

    def likelihood_config(self) -> LikelihoodConfig:
        if self.mode != "soft":
            # discrete tokens are embedding lookups: the gradient reaches the input embeddings, as in TRL / verl
            # (the detached rebuild is the soft arm's official setting, SofT-GRPO's code)
            return LikelihoodConfig(detach_inputs=False)
        c = self.config
        return LikelihoodConfig(
            soft_density=c.soft_density,
            clamp=_clamp_pair(c.likelihood_clamp, f"plugins.{self.name}.likelihood_clamp"),
            mask_logq_min=c.mask_logq_min,
            detach_inputs=c.detach_inputs,
        )

    def objective_config(self) -> ObjectiveConfig:
        c = self.config
        return ObjectiveConfig(
            clip_eps=c.clip_eps,
            clip_eps_high=c.clip_eps_high or None,
            dual_clip_c=c.dual_clip or None,
            kl_coef=c.kl_coef,
            agg=c.agg,
            loss_type=None if c.loss_type == "auto" else c.loss_type,
            importance_sampling_level=c.importance_sampling_level,
            delta=c.delta or None,
            kl_bias_correction=c.kl_bias_correction,
            sapo_tau_pos=c.sapo_tau_pos,
            sapo_tau_neg=c.sapo_tau_neg,
            vespo_k_pos=c.vespo_k_pos,
            vespo_lambda_pos=c.vespo_lambda_pos,
            vespo_k_neg=c.vespo_k_neg,
            vespo_lambda_neg=c.vespo_lambda_neg,
        )

    def advantage_scale(self) -> str:
        """``scale_rewards``, with ``auto`` read from the older ``scale_advantages``."""
        c = self.config
        if c.scale_rewards == "auto":
            return "group" if c.scale_advantages else "none"
        if not c.scale_advantages and c.scale_rewards != "none":
            raise ValueError(f"scale_advantages=false is scale_rewards='none'; it contradicts {c.scale_rewards!r}")
        return c.scale_rewards

    def max_completion_length(self) -> int:
        # the response budget of a rollout: think tokens, </think>, answer tokens (dr_grpo's constant)
        return self.config.think_cap + 1 + self.config.answer_cap

    # setup
    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        task = state.provider(CountdownTask)  # required: the engine checked it is enabled
        if task.task_mode() != "rl":
            raise BadInput(f'{self.name} samples rollouts from prompts; set plugins.countdown.mode="rl"')
        if task.prompts_per_batch() % c.minibatches:
            raise BadInput(f"plugins.{self.name}.minibatches={c.minibatches} must divide plugins.countdown.batch_size")
        if c.dynamic_sampling == 1:
            raise BadInput(f"plugins.{self.name}.dynamic_sampling=1 draws nothing more; use 0 (off) or >= 2")
        if c.overlong_cache > self.max_completion_length():
            raise BadInput(
                f"plugins.{self.name}.overlong_cache={c.overlong_cache} exceeds the response budget "
                f"{self.max_completion_length()} (think_cap + 1 + answer_cap); lower it"
            )
        try:
            self.sampling_config(cd.CharTokenizer())
            self.likelihood_config()
            self.objective_config()
            self.advantage_scale()
        except ValueError as exc:
            raise BadInput(f"plugins.{self.name}: {exc}") from None

    @hookimpl
    def hookmix_setup_model(self, model, state):
        # the frozen reference: a copy of the starting policy (after init_from), never optimized; under
        # run.strategy='fsdp' the engine shards it like the policy (its units and embed/forward_embeds)
        self.ref = None
        if self.config.kl_coef > 0:
            self.ref = state.add_frozen_module(f"{self.name}_ref", copy.deepcopy(model))
        # one noise stream per rank (rank 0's is the 1-process stream); docs/distributed.md
        seed = state.run.seed + self.config.seed_offset + 1_000_003 * state.rank
        self.generator = torch.Generator(device=state.device).manual_seed(seed)
        self.buffer: list[dict] = []
        tok = state.data.tokenizer
        self.sampling = self.sampling_config(tok)
        self.likelihood = self.likelihood_config()
        self.objective = self.objective_config()
        check_context(model, state.data, self.config.think_cap, self.config.answer_cap, self.name)

    # rollouts
    def _sample(self, model, batch: dict, state) -> list[dict]:
        c, tok = self.config, state.data.tokenizer
        prompts, problems = _prompts(batch)
        G, n = c.group_size, len(prompts)
        while c.dynamic_sampling > 1 and len(prompts) < n * c.dynamic_sampling:
            # DAPO over-samples: more problems from the plugin's own (per-rank, checkpointed) generator
            more, more_problems = _prompts(state.data.train_batch(self.generator))
            prompts += more
            problems = {k: _cat_rows(problems[k], more_problems[k]) for k in problems}
        drawn = len(prompts) if c.dynamic_sampling < 2 else n * c.dynamic_sampling
        prompts, problems = prompts[:drawn], {k: v[:drawn].repeat_interleave(G, 0) for k, v in problems.items()}
        with state.autocast():
            r = generate_rollouts(
                model,
                [p for p in prompts for _ in range(G)],
                self.sampling,
                think_end_id=tok.think_end_id,
                eos_id=tok.eos_id,
                pad_id=tok.pad_id,
                generator=self.generator,
                decode=tok.decode,
                likelihood=self.likelihood,
            )
        if c.dynamic_sampling > 1:  # keep n groups, those with a reward spread first (plugins/soft_grpo/dapo.py)
            reward = state.rewards({"rollout": r, **problems, "group_size": G})
            keep, varied = groups_to_keep(reward, G, n)
            r, problems = r.select(keep), {k: v[keep] for k, v in problems.items()}
            state.log("train/rl/dynamic_varied_frac", varied / n)
        per = n // c.minibatches * G
        chunks = []
        for i in range(c.minibatches):
            rows = list(range(i * per, (i + 1) * per))
            sub = r.select(rows) if c.minibatches > 1 else r
            with state.autocast():  # θ_old and the reference, teacher-forced exactly as the training forward
                # on-policy (one optimizer step per rollout batch): θ_old is θ, so the loss uses its own log-likelihood
                # detached (ratio exactly 1, as TRL) and this forward is skipped
                old = sequence_logprobs(model, sub, self.likelihood).float() if c.minibatches > 1 else None
                ref = sequence_logprobs(self.ref, sub, self.likelihood).float() if self.ref is not None else None
            chunks.append(
                {
                    "rollout": sub,
                    "numbers": problems["numbers"][rows],
                    "targets": problems["targets"][rows],
                    "old_logp": old,
                    "ref_logp": ref,
                    "group_size": G,
                }
            )
        return chunks

    @hookimpl
    def hookmix_generate_rollouts(self, model, batch, state):
        if not self.buffer:
            self.buffer = self._sample(model, batch, state)
        chunk = self.buffer.pop(0)
        s = chunk["rollout"].stats()
        for key in ("think_length_mean", "answer_length_mean", "finished_frac", "forced_think_end_frac"):
            state.log(f"train/rl/{key.removesuffix('_mean').removesuffix('_frac')}", s[key])
        if self.mode == "soft" and s["soft_tokens"] > 0:
            state.log("train/rl/top1_weight", s["top1_weight_mean"])
            state.log("train/rl/top1_weight_gt_0.99", s["top1_weight_gt_0.99"])
        # the positions the loss is taken on: the engine counts them over the step (batch["step_totals"])
        return {**chunk, "loss_mask": chunk["rollout"].loss_mask}

    @hookimpl
    def hookmix_rewards(self, rollouts, state):
        # DAPO's soft overlong punishment, a reward term of its own (plugins/soft_grpo/dapo.py); None: off
        c = self.config
        if not c.overlong_cache:
            return None
        lengths = rollouts["rollout"].response_mask.sum(-1)
        return {
            "overlong": overlong_penalty(lengths, self.max_completion_length(), c.overlong_cache, c.overlong_factor)
        }

    @hookimpl
    def hookmix_advantages(self, rollouts, rewards, state):
        # the default estimator (default_hooks): rollouts["group_size"] is what a replacement reads too
        G = rollouts["group_size"]
        r = rewards.detach().float().cpu()
        scale = self.advantage_scale()
        if scale in ("group", "none"):  # the pre-scale_rewards call, bit for bit
            scale = scale == "group"
        adv = group_advantages(r, group_size=G, eps=self.config.adv_eps, scale=scale)
        groups = r.view(-1, G)
        state.log("train/rl/frac_reward_zero_std", (groups.max(1).values == groups.min(1).values).float().mean())
        return adv

    # forward and loss
    @hookimpl
    def hookmix_forward(self, model, batch, state):
        if "rollout" not in batch:  # supervised batches (the engine's val/loss on gold traces)
            return {"logits": model(batch["input"])}
        logp, logits = sequence_logprobs(model, batch["rollout"], self.likelihood, return_logits=True)
        return {"logits": logits, "logp": logp}

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        if "rollout" not in batch:
            return None
        r: Rollout = batch["rollout"]
        logp = outputs["logp"].float()
        mask = r.loss_mask
        adv = batch["advantages"].to(logp.device).float()
        ref = batch["ref_logp"].to(logp.device) if self.ref is not None else None
        # the normalisers count the whole optimizer step, all micro-batches and ranks (docs/soft-grpo.md)
        old = batch["old_logp"]  # None: on-policy, θ_old = θ (see _sample)
        pg, kl, stats = policy_loss_terms(
            logp,
            logp.detach() if old is None else old.to(logp.device),
            adv,
            mask,
            self.objective,
            ref,
            max_completion_length=self.max_completion_length(),
            **step_counts(batch.get("step_totals")),
        )
        terms = {"pg": pg}
        for key in ("clip_frac", "dual_clip_frac", "ratio_mean", "ratio_max", "ratio_min", "ppo_kl"):
            state.log(f"train/rl/{key}", stats[key])
        if kl is not None:
            state.log("train/rl/kl", kl.detach())
            terms["kl"] = self.objective.kl_coef * kl
        return terms

    # checkpoint state: the rollout generator and any rollouts not yet trained on
    @hookimpl
    def hookmix_plugin_state(self, state):
        return {
            "generator": self.generator.get_state(),
            "buffer": [
                {**{k: v for k, v in ch.items() if k != "rollout"}, "rollout": _pack_rollout(ch["rollout"])}
                for ch in self.buffer
            ],
        }

    @hookimpl
    def hookmix_load_plugin_state(self, plugin_state, state):
        self.generator.set_state(plugin_state["generator"])
        self.buffer = []
        for ch in plugin_state["buffer"]:
            d = dict(ch)
            d["rollout"] = _unpack_rollout(ch["rollout"], state.device)
            for k in ("old_logp", "ref_logp"):
                if d.get(k) is not None:
                    d[k] = d[k].to(state.device)
            self.buffer.append(d)


class SoftGRPO(GRPO):
    """SofT-GRPO: soft-thinking rollouts with Gumbel noise, scored by the reparameterised Gumbel likelihood."""

    name = "soft_grpo"
    Config = SoftGRPOConfig
    mode = "soft"

    @hookimpl
    def hookmix_configure(self, state):
        super().hookmix_configure(state)
        c = self.config
        if c.top_k > 20:
            raise BadInput(
                f"plugins.soft_grpo.top_k={c.top_k} must be in 1..20 (the likelihood mask must be non-empty)"
            )
