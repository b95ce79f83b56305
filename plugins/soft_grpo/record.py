"""The rollout record and the pure helpers shared by the sampler and the likelihood.

Layout of a :class:`Rollout` with ``B`` rows, ``L = P + R`` positions (``P`` = longest prompt, prompts
left-padded; ``R`` generated steps) and ``K`` stored slots:

* position ``t`` holds the action *taken at* ``t`` (what is fed as the input at ``t``); the logits at
  ``t - 1`` score it.
* prompt, discrete and padding positions: ``topk_ids[b, t] = (tok, pad, …, pad)``, ``topk_gumbel = 0``,
  ``slot_mask = (True, False, …)``, ``is_soft = False``.
* soft positions: the kept candidate ids and their noisy logits ``g′ = log(p̄ + 1e-6) + λ·g``, sorted by
  ``g′`` descending (slot 0 = the Gumbel-max id = ``input_ids[b, t]``); slots dropped by top-k/top-p/min-p
  filtering hold ``pad`` with ``g′ = 0`` and ``slot_mask = False``.

The soft/discrete decision is the explicit ``is_soft`` flag (not the official code's "slots 2..k are id
0" rule, which misreads a soft token whose filtered set has a single id, and which collides with real
id-0 tokens in HF vocabularies).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

__all__ = ["Rollout", "soft_weights", "mixture_embeds", "slot_log_probs"]


def slot_log_probs(slot_logits: torch.Tensor, slot_mask: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the kept slots of the last dim (``-inf`` at dropped slots).

    ``slot_logits`` are (temperature-scaled) logits gathered at the slot ids, so this equals the
    full-vocabulary softmax gathered at the ids and renormalised over them.
    """
    x = torch.where(slot_mask, slot_logits, torch.full_like(slot_logits, float("-inf")))
    return x - torch.logsumexp(x, dim=-1, keepdim=True)


def soft_weights(gumbel_logits: torch.Tensor, slot_mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Gumbel-Softmax weights ``y′ = softmax(g′/τ)`` over the kept slots (exact 0 at dropped slots).

    Computed in float64 with an explicit left-to-right slot sum and returned in float32.  Every op is
    elementwise or an exact max, so the result for a position does not depend on the tensor's shape
    or on where the position sits in memory: the rollout (``(B, K)`` per step) and the training-time
    rebuild (``(B, L, K)``) get bitwise equal weights.
    """
    if tau <= 0:
        raise ValueError("tau must be > 0")
    g = gumbel_logits.double() / tau
    g = torch.where(slot_mask, g, torch.full_like(g, float("-inf")))
    m = g.max(dim=-1, keepdim=True).values
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.where(slot_mask, torch.exp(g - m), torch.zeros_like(g))
    s = e[..., 0]
    for j in range(1, e.shape[-1]):
        s = s + e[..., j]
    return (e / s.unsqueeze(-1)).float()


def mixture_embeds(policy, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_j w_j · embed(id_j)`` over the last dim of ``ids`` (left-to-right, elementwise, no matmul).

    Returns ``(..., d)`` in the embedding dtype.  ``policy`` only needs ``embed``.
    """
    E = policy.embed(ids)  # (..., K, d)
    w = weights.to(torch.float32) if E.dtype != torch.float64 else weights.double()
    out = w[..., 0, None] * E[..., 0, :]
    for j in range(1, ids.shape[-1]):
        out = out + w[..., j, None] * E[..., j, :]
    return out.to(E.dtype)


_TENSOR_FIELDS = (
    "input_ids",
    "topk_ids",
    "topk_gumbel",
    "slot_mask",
    "is_soft",
    "attention_mask",
    "position_ids",
    "response_mask",
    "forced_mask",
    "rollout_logprobs",
    "noise",
    "top1_weight",
    "think_lengths",
    "answer_lengths",
    "finished",
)


@dataclass
class Rollout:
    """A batch of rollouts (one row per sample).  Shapes: ``B`` rows, ``L`` positions, ``K`` slots.

    Fields
    ------
    input_ids (B,L) long: the token at each position (Gumbel-max id at soft positions, pad after the end).
    topk_ids (B,L,K) long, topk_gumbel (B,L,K) float32 (``g′``), slot_mask (B,L,K) bool: see module doc.
    is_soft (B,L) bool: explicit soft-position flag.
    attention_mask (B,L) bool: False on prompt left-padding only.  position_ids (B,L) long.
    response_mask (B,L) bool: every generated position up to and including ``<eos>`` (or the cap).
    forced_mask (B,L) bool: the ``</think>`` forced by the think-length cap (not sampled by the policy).
    rollout_logprobs (B,L) float32: per-position log-likelihood from the generation-time logits (same
        function as :mod:`.likelihood`; the trainer should recompute old log-probs teacher-forced, as the
        official code does, and use these only as a check).
    noise (B,L,K) float32: the realised (clamped) Gumbel noise ``g`` per slot (diagnostics / tests).
    top1_weight (B,L) float32: largest Gumbel-Softmax weight at soft positions, else 0.
    think_lengths (B,) long: soft (or discrete thinking) tokens before ``</think>``.
    answer_lengths (B,) long: tokens after ``</think>``, ``<eos>`` included.
    finished (B,) bool: the row emitted ``<eos>`` before the answer cap.
    """

    input_ids: torch.Tensor
    topk_ids: torch.Tensor
    topk_gumbel: torch.Tensor
    slot_mask: torch.Tensor
    is_soft: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_mask: torch.Tensor
    forced_mask: torch.Tensor
    rollout_logprobs: torch.Tensor
    noise: torch.Tensor
    top1_weight: torch.Tensor
    think_lengths: torch.Tensor
    answer_lengths: torch.Tensor
    finished: torch.Tensor
    prompt_length: int
    mode: str  # "soft" or "discrete"
    temperature: float
    tau: float
    noise_factor: float
    pad_id: int
    think_end_id: int
    eos_id: int
    answer_ids: list = field(default_factory=list)
    answer_text: list | None = None
    # debug (only when generate_rollouts(..., keep_debug=True)): fed inputs and generation logits,
    # gen_logits[:, t] are the logits computed at position t (they score position t + 1); the last
    # position is never run during generation and holds NaN.
    inputs_embeds: torch.Tensor | None = None
    gen_logits: torch.Tensor | None = None

    @property
    def loss_mask(self) -> torch.Tensor:
        """Positions that enter the objective: generated and chosen by the policy (not forced)."""
        return self.response_mask & ~self.forced_mask

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_slots(self) -> int:
        return self.topk_ids.shape[-1]

    def to(self, device) -> "Rollout":
        changes = {f: getattr(self, f).to(device) for f in _TENSOR_FIELDS}
        for f in ("inputs_embeds", "gen_logits"):
            if getattr(self, f) is not None:
                changes[f] = getattr(self, f).to(device)
        return dataclasses.replace(self, **changes)

    def select(self, index) -> "Rollout":
        """Rows ``index`` (a slice, list or tensor of row indices): for micro-batching."""
        if isinstance(index, slice):
            rows = list(range(self.batch_size))[index]
        else:
            rows = [int(i) for i in torch.as_tensor(index).flatten().tolist()]
        idx = torch.tensor(rows, dtype=torch.long, device=self.input_ids.device)
        changes = {f: getattr(self, f).index_select(0, idx) for f in _TENSOR_FIELDS}
        for f in ("inputs_embeds", "gen_logits"):
            if getattr(self, f) is not None:
                changes[f] = getattr(self, f).index_select(0, idx)
        changes["answer_ids"] = [self.answer_ids[i] for i in rows] if self.answer_ids else []
        changes["answer_text"] = [self.answer_text[i] for i in rows] if self.answer_text is not None else None
        return dataclasses.replace(self, **changes)

    def stats(self) -> dict[str, float]:
        """Rollout metrics of spec §10: soft top-1 weight, think length, answer length, finish rate."""
        soft = self.is_soft & self.response_mask
        n_soft = int(soft.sum())
        return {
            "top1_weight_mean": float(self.top1_weight[soft].mean()) if n_soft else float("nan"),
            "top1_weight_gt_0.99": float((self.top1_weight[soft] > 0.99).float().mean()) if n_soft else float("nan"),
            "soft_tokens": float(n_soft),
            "think_length_mean": float(self.think_lengths.float().mean()),
            "answer_length_mean": float(self.answer_lengths.float().mean()),
            "forced_think_end_frac": float(self.forced_mask.any(-1).float().mean()),
            "finished_frac": float(self.finished.float().mean()),
        }
