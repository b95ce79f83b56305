"""Discrete and soft-thinking (Gumbel) sampling, batched, with a KV cache (spec §3–§4).

Per step, from the last logits ``ℓ``:

1. ``p = softmax(ℓ / T)`` (ids in ``suppress_ids``, default ``<pad>`` = 0, get probability 0);
2. top-k renormalisation, then top-p renormalisation (keep the shortest prefix of the sorted
   probabilities whose mass reaches ``top_p``), then optional min-p; ``p̄`` = renormalised mass over the
   kept ids (at most ``top_k`` of them);
3. soft step: ``g ~ Gumbel(0, 1)`` drawn as ``−log(Exp(1))``, clamped to ``[−1.5, 3]`` (``None`` = no
   clamp); ``g′ = log(p̄ + 1e-6) + λ·g``; weights ``y′ = softmax(g′/τ)`` over the kept ids; slots sorted by
   ``g′``; the Gumbel-max id is slot 0; the next input is ``Σ_j y′_j·E[id_j]``;
4. thinking ends at the first step whose Gumbel-max id is ``</think>`` (that step is stored and fed as
   the plain ``</think>`` token) or when ``think_cap`` soft tokens have been produced (``</think>`` forced,
   flagged in ``forced_mask``); answer tokens are then sampled discretely (multinomial over the
   filtered ``p̄`` with the ``after_thinking_*`` filters, same temperature) until ``<eos>`` or
   ``answer_cap``.

``mode="discrete"`` samples every token discretely (the GRPO arm) with the same caps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from plugins.policies.policy import as_soft_policy, left_pad

from .likelihood import LikelihoodConfig, position_loglik
from .record import Rollout, mixture_embeds, slot_log_probs, soft_weights

__all__ = [
    "SamplingConfig",
    "SoftStep",
    "filter_probs",
    "sample_gumbel",
    "soft_token_step",
    "discrete_token_step",
    "generate_rollouts",
]


@dataclass
class SamplingConfig:
    """Rollout settings.  Defaults = the SofT-GRPO training recipe (SH, spec §7.1) with tiny caps."""

    mode: str = "soft"  # "soft" (SofT-GRPO) or "discrete" (GRPO arm / discrete eval)
    temperature: float = 1.0
    top_k: int = 5  # also max_topk: a soft token mixes at most top_k ids; <= 0 disables top-k
    top_p: float = 0.95
    min_p: float = 0.0
    after_thinking_top_k: int | None = None  # None -> same as thinking
    after_thinking_top_p: float | None = None
    after_thinking_min_p: float | None = None
    tau: float = 0.1  # Gumbel-Softmax temperature
    noise_factor: float = 1.0  # λ
    gumbel_clamp: tuple[float, float] | None = (-1.5, 3.0)
    think_cap: int = 16  # soft/thinking tokens before </think> is forced
    answer_cap: int = 12  # tokens after </think>, <eos> included
    suppress_ids: tuple[int, ...] = (0,)  # never sampled, never a soft candidate
    eps: float = 1e-6  # inside log(p̄ + eps)

    def __post_init__(self) -> None:
        if self.mode not in ("soft", "discrete"):
            raise ValueError(f"mode must be 'soft' or 'discrete', got {self.mode!r}")
        if self.temperature <= 0 or self.tau <= 0:
            raise ValueError("temperature and tau must be > 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.mode == "soft" and self.top_k <= 0:
            raise ValueError("soft mode needs top_k >= 1 (it is also max_topk, the number of stored slots)")
        if self.think_cap < 0 or self.answer_cap < 1:
            raise ValueError("think_cap >= 0 and answer_cap >= 1 required")

    @property
    def answer_filters(self) -> tuple[int, float, float]:
        k = self.top_k if self.after_thinking_top_k is None else self.after_thinking_top_k
        p = self.top_p if self.after_thinking_top_p is None else self.after_thinking_top_p
        m = self.min_p if self.after_thinking_min_p is None else self.after_thinking_min_p
        return k, p, m


def filter_probs(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    suppress_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k → top-p → min-p filtering with renormalisation, over the last dim.

    Returns ``(ids, p̄, keep)``, each ``(..., K)`` with ``K = top_k`` (or ``V`` when top-k is off), ids
    sorted by probability.  ``p̄`` sums to 1 over ``keep`` and is exactly 0 elsewhere; slot 0 is
    always kept.
    """
    x = logits.float() / temperature
    if len(suppress_ids):
        x = x.clone()
        x[..., list(suppress_ids)] = float("-inf")
    V = x.shape[-1]
    K = V if top_k <= 0 else min(top_k, V)
    vals, ids = torch.topk(x, K, dim=-1)
    keep = torch.isfinite(vals)
    if top_p < 1.0:
        p = torch.softmax(vals, dim=-1)  # top-k renormalised
        before = torch.cumsum(p, dim=-1) - p
        keep = keep & (before < top_p)
    if min_p > 0.0:
        p = torch.softmax(vals, dim=-1)
        keep = keep & (p >= min_p * p[..., :1])
    keep[..., 0] = True
    pbar = torch.where(keep, slot_log_probs(vals, keep).exp(), torch.zeros_like(vals))
    return ids, pbar, keep


def sample_gumbel(shape, generator: torch.Generator | None = None, clamp=(-1.5, 3.0), device=None) -> torch.Tensor:
    """Standard Gumbel noise ``−log(E)``, ``E ~ Exp(1)``, optionally clamped (float32)."""
    e = torch.empty(shape, device=device, dtype=torch.float32).exponential_(generator=generator)
    g = -torch.log(e.clamp_min(torch.finfo(torch.float32).tiny))
    if clamp is not None:
        g = g.clamp(clamp[0], clamp[1])
    return g


@dataclass
class SoftStep:
    """One soft step for a batch; all ``(B, K)``, slots sorted by ``gumbel_logits`` descending."""

    ids: torch.Tensor
    gumbel_logits: torch.Tensor  # g′ (0 at dropped slots)
    keep: torch.Tensor
    weights: torch.Tensor  # y′
    noise: torch.Tensor  # g (0 at dropped slots)
    pbar: torch.Tensor

    @property
    def token(self) -> torch.Tensor:
        """Gumbel-max id, ``(B,)``."""
        return self.ids[..., 0]


def soft_token_step(logits: torch.Tensor, cfg: SamplingConfig, generator=None, pad_id: int = 0) -> SoftStep:
    """Filtering, Gumbel perturbation of ``log(p̄ + eps)``, Gumbel-Softmax weights, slot sorting."""
    ids, pbar, keep = filter_probs(logits, cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p, cfg.suppress_ids)
    g = sample_gumbel(ids.shape, generator, cfg.gumbel_clamp, ids.device)
    g = torch.where(keep, g, torch.zeros_like(g))
    gp = torch.where(keep, torch.log(pbar + cfg.eps) + cfg.noise_factor * g, torch.zeros_like(g))
    order = torch.argsort(
        torch.where(keep, gp, torch.full_like(gp, float("-inf"))), dim=-1, descending=True, stable=True
    )
    ids, gp, keep, g, pbar = (t.gather(-1, order) for t in (ids, gp, keep, g, pbar))
    ids = torch.where(keep, ids, torch.full_like(ids, pad_id))
    return SoftStep(ids, gp, keep, soft_weights(gp, keep, cfg.tau), g, pbar)


def discrete_token_step(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, suppress_ids=(), generator=None):
    """Multinomial sample from the filtered, renormalised distribution; returns ids ``(B,)``."""
    ids, pbar, _ = filter_probs(logits, temperature, top_k, top_p, min_p, suppress_ids)
    j = torch.multinomial(pbar, 1, generator=generator)
    return ids.gather(-1, j).squeeze(-1)


@torch.no_grad()
def generate_rollouts(
    policy,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    *,
    think_end_id: int,
    eos_id: int,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
    decode: Callable[[list[int]], str] | None = None,
    likelihood: LikelihoodConfig | None = None,
    keep_debug: bool = False,
) -> Rollout:
    """Sample one rollout per prompt (repeat prompts ``G`` times for groups), batched, KV-cached.

    ``prompts`` are token-id lists that end with ``<think>``; they are left-padded.  ``decode`` turns
    answer ids into text (``answer_text``).  ``likelihood`` configures ``rollout_logprobs`` (default
    :class:`~.likelihood.LikelihoodConfig`).  ``keep_debug`` also stores the fed input embeddings and
    the generation logits.
    """
    pol = as_soft_policy(policy)
    lcfg = likelihood or LikelihoodConfig()
    soft = cfg.mode == "soft"
    E = pol.embedding_matrix
    device = E.device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    B, P = prompt_ids.shape
    R = cfg.think_cap + 1 + cfg.answer_cap
    L = P + R
    if pol.max_positions is not None and L > pol.max_positions:
        raise ValueError(f"prompt ({P}) + think_cap + 1 + answer_cap = {L} exceeds the context {pol.max_positions}")
    K = cfg.top_k if soft else 1
    a_k, a_p, a_m = cfg.answer_filters
    same_filters = (a_k, a_p, a_m) == (cfg.top_k, cfg.top_p, cfg.min_p)

    f32, lng, bo = torch.float32, torch.long, torch.bool
    tok = torch.full((B, L), pad_id, dtype=lng, device=device)
    tok[:, :P] = prompt_ids
    topk_ids = torch.full((B, L, K), pad_id, dtype=lng, device=device)
    topk_ids[:, :P, 0] = prompt_ids
    gp_rec = torch.zeros((B, L, K), dtype=f32, device=device)
    noise_rec = torch.zeros((B, L, K), dtype=f32, device=device)
    slot_mask = torch.zeros((B, L, K), dtype=bo, device=device)
    slot_mask[..., 0] = True
    is_soft = torch.zeros((B, L), dtype=bo, device=device)
    response = torch.zeros((B, L), dtype=bo, device=device)
    forced = torch.zeros((B, L), dtype=bo, device=device)
    old_lp = torch.zeros((B, L), dtype=f32, device=device)
    top1 = torch.zeros((B, L), dtype=f32, device=device)
    att = torch.ones((B, L), dtype=bo, device=device)
    att[:, :P] = prompt_mask
    pos = (att.long().cumsum(-1) - 1).clamp_min(0)
    dbg_emb = torch.zeros((B, L, E.shape[1]), dtype=E.dtype, device=device) if keep_debug else None
    dbg_logits = torch.full((B, L, pol.vocab_size), float("nan"), dtype=f32, device=device) if keep_debug else None

    phase = torch.zeros(B, dtype=lng, device=device)  # 0 thinking, 1 answering, 2 done
    think_len = torch.zeros(B, dtype=lng, device=device)
    ans_len = torch.zeros(B, dtype=lng, device=device)
    finished = torch.zeros(B, dtype=bo, device=device)

    cache = pol.new_cache(B)
    emb = pol.embed(prompt_ids)
    if keep_debug:
        dbg_emb[:, :P] = emb
    logits = pol.forward_embeds(emb, attention_mask=att[:, :P], position_ids=pos[:, :P], kv_cache=cache)
    if keep_debug:
        dbg_logits[:, :P] = logits.float()
    last = logits[:, -1].float()
    end_id = torch.full((B,), think_end_id, dtype=lng, device=device)
    pad_vec = torch.full((B,), pad_id, dtype=lng, device=device)
    t_end = P
    for s in range(R):
        t = P + s
        thinking, answering, active = phase == 0, phase == 1, phase < 2
        force = thinking & (think_len >= cfg.think_cap)
        # sample only for the phases some row is in (one host sync for both flags)
        any_think, any_ans = (bool(x) for x in torch.stack([thinking.any(), answering.any()]).tolist())
        st = None
        if soft and any_think:
            st = soft_token_step(last, cfg, generator, pad_id)
            ends = thinking & ~force & (st.token == think_end_id)
            soft_row = thinking & ~force & ~ends
            think_tok = st.token
        elif any_think:
            think_tok = discrete_token_step(
                last, cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p, cfg.suppress_ids, generator
            )
            ends = thinking & ~force & (think_tok == think_end_id)
            soft_row = torch.zeros_like(thinking)
        else:
            think_tok, ends, soft_row = pad_vec, torch.zeros_like(thinking), torch.zeros_like(thinking)
        if not any_ans:
            ans_tok = pad_vec
        elif st is not None and same_filters:  # reuse the soft step's filtered p̄ (same law, one filter pass)
            ans_tok = st.ids.gather(-1, torch.multinomial(st.pbar, 1, generator=generator)).squeeze(-1)
        else:
            ans_tok = discrete_token_step(last, cfg.temperature, a_k, a_p, a_m, cfg.suppress_ids, generator)
        step_tok = torch.where(answering, ans_tok, torch.where(thinking, think_tok, pad_vec))
        step_tok = torch.where(force, end_id, step_tok)

        tok[:, t] = step_tok
        topk_ids[:, t, 0] = step_tok
        if st is not None:
            sr = soft_row.unsqueeze(-1)
            topk_ids[:, t] = torch.where(sr, st.ids, topk_ids[:, t])
            gp_rec[:, t] = torch.where(sr, st.gumbel_logits, gp_rec[:, t])
            noise_rec[:, t] = torch.where(sr, st.noise, noise_rec[:, t])
            slot_mask[:, t] = torch.where(sr, st.keep, slot_mask[:, t])
            top1[:, t] = torch.where(soft_row, st.weights[:, 0], top1[:, t])
        is_soft[:, t] = soft_row
        response[:, t] = active
        forced[:, t] = force
        lp = position_loglik(
            last,
            step_tok,
            topk_ids[:, t],
            gp_rec[:, t],
            slot_mask[:, t],
            soft_row,
            cfg.temperature,
            cfg.noise_factor,
            lcfg,
        )
        old_lp[:, t] = torch.where(active, lp, torch.zeros_like(lp))

        # phase transitions
        counts_as_think = soft_row if soft else (thinking & ~force & ~ends)
        think_len = think_len + counts_as_think.long()
        ans_len = ans_len + answering.long()
        hit_eos = answering & (step_tok == eos_id)
        finished = finished | hit_eos
        new_phase = phase.clone()
        new_phase[thinking & (force | ends)] = 1
        new_phase[answering & (hit_eos | (ans_len >= cfg.answer_cap))] = 2
        phase = new_phase
        t_end = t + 1
        if bool((phase == 2).all()):
            break

        plain = pol.embed(step_tok)
        if st is not None:
            mix = mixture_embeds(pol, st.ids, st.weights)
            nxt = torch.where(soft_row.unsqueeze(-1), mix, plain)
        else:
            nxt = plain
        if keep_debug:
            dbg_emb[:, t] = nxt
        logits = pol.forward_embeds(
            nxt.unsqueeze(1), attention_mask=att[:, : t + 1], position_ids=pos[:, t : t + 1], kv_cache=cache
        )
        last = logits[:, -1].float()
        if keep_debug:
            dbg_logits[:, t] = last

    sl = slice(0, t_end)
    answer_ids: list[list[int]] = []
    tok_cpu, resp_cpu = tok[:, sl].cpu(), response[:, sl].cpu()
    for b in range(B):
        seq = tok_cpu[b][resp_cpu[b]].tolist()
        ans = seq[seq.index(think_end_id) + 1 :] if think_end_id in seq else []
        if eos_id in ans:
            ans = ans[: ans.index(eos_id)]
        answer_ids.append(ans)
    if keep_debug:
        # the last action's embedding was never fed; fill it for completeness of the round trip
        lt = t_end - 1
        plain = pol.embed(tok[:, lt])
        if soft:
            w = soft_weights(gp_rec[:, lt], slot_mask[:, lt], cfg.tau)
            plain = torch.where(is_soft[:, lt, None], mixture_embeds(pol, topk_ids[:, lt], w), plain)
        dbg_emb[:, lt] = plain

    return Rollout(
        input_ids=tok[:, sl],
        topk_ids=topk_ids[:, sl],
        topk_gumbel=gp_rec[:, sl],
        slot_mask=slot_mask[:, sl],
        is_soft=is_soft[:, sl],
        attention_mask=att[:, sl],
        position_ids=pos[:, sl],
        response_mask=response[:, sl],
        forced_mask=forced[:, sl],
        rollout_logprobs=old_lp[:, sl],
        noise=noise_rec[:, sl],
        top1_weight=top1[:, sl],
        think_lengths=think_len,
        answer_lengths=ans_len,
        finished=finished,
        prompt_length=P,
        mode=cfg.mode,
        temperature=cfg.temperature,
        tau=cfg.tau,
        noise_factor=cfg.noise_factor,
        pad_id=pad_id,
        think_end_id=think_end_id,
        eos_id=eos_id,
        answer_ids=answer_ids,
        answer_text=[decode(a) for a in answer_ids] if decode is not None else None,
        inputs_embeds=dbg_emb[:, sl] if keep_debug else None,
        gen_logits=dbg_logits[:, sl] if keep_debug else None,
    )
