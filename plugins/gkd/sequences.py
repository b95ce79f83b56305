"""What GKD trains on: (prompt, response) token lists from the student's samples, the teacher's samples or the
data set's gold traces, turned into a Countdown LM batch and the rollout record the reward plugins read.

The LM batch is the one the ``countdown`` data plugin gives in SFT mode (:func:`plugins.countdown.sft_traces.
collate_sft`): each row the prompt's real tokens then the response, left-aligned and right-padded, ``input`` =
ids without the last position, ``target`` = the next token on response positions and ``-100`` on the prompt and
the padding. So the student's forward is the engine's default (``model(batch["input"])``) and the ``teacher``
plugin scores the very same tokens (``outputs["teacher_logits"]``), as on any LM batch. Sampling left-pads the
prompts and masks the padding; a left-aligned row has no padding before its last real token, so the causal
forward of either layout computes the same function of the same tokens at the same positions.

No engine import.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch

from plugins.countdown import task as cd
from plugins.countdown.sft_traces import SFTExample, collate_sft, make_sft_example
from plugins.soft_grpo.record import Rollout

__all__ = ["from_rollout", "gold_sequences", "lm_batch", "discrete_record"]

Tokens = list[list[int]]


def from_rollout(r: Rollout) -> tuple[Tokens, Tokens]:
    """The prompts (real tokens, no padding) and the responses (every generated position, ``<eos>`` included)."""
    P = r.prompt_length
    ids, att, resp = r.input_ids.cpu(), r.attention_mask.cpu(), r.response_mask.cpu()
    prompts = [row[:P][m[:P]].tolist() for row, m in zip(ids, att)]
    responses = [row[m].tolist() for row, m in zip(ids, resp)]
    return prompts, responses


def gold_sequences(
    problems: Sequence[cd.Problem],
    tokenizer,
    rngs: Sequence[random.Random],
    ops: str = "+-*",
    step_corrupt_rate: float = 0.0,
    answer_corrupt_rate: float = 0.0,
) -> tuple[Tokens, Tokens]:
    """The data set's sequences for ``problems``: the gold traces SFT mode trains on (one ``rng`` per row picks
    the solution and any corruption, as :func:`plugins.countdown.sft_traces.make_sft_example` does)."""
    prompts, responses = [], []
    for problem, rng in zip(problems, rngs):
        ex = make_sft_example(problem, tokenizer, rng, ops, step_corrupt_rate, answer_corrupt_rate)
        prompts.append(ex.ids[: ex.prompt_len])
        responses.append(ex.ids[ex.prompt_len :])
    return prompts, responses


def lm_batch(prompts: Tokens, responses: Tokens, pad_id: int, max_len: int | None = None) -> dict[str, torch.Tensor]:
    """``{"input": (B, T), "target": (B, T)}``: the SFT-mode layout (``target`` is -100 off the responses).

    Raises ``ValueError`` when a row is longer than ``max_len`` (the model's context)."""
    examples = [SFTExample(list(p) + list(r), len(p)) for p, r in zip(prompts, responses)]
    b = collate_sft(examples, pad_id=pad_id, max_len=max_len)
    return {"input": b["input_ids"][:, :-1], "target": b["labels"][:, 1:]}


def _split_response(response: list[int], think_end_id: int, eos_id: int) -> tuple[int, int, list[int], bool]:
    """(think length, answer length with ``<eos>``, answer ids, finished) as the sampler counts them."""
    if think_end_id not in response:
        return len(response), 0, [], False
    end = response.index(think_end_id)
    after = response[end + 1 :]
    finished = eos_id in after
    answer = after[: after.index(eos_id)] if finished else after
    return end, len(after), answer, finished


def discrete_record(
    prompts: Tokens,
    responses: Tokens,
    *,
    pad_id: int,
    think_end_id: int,
    eos_id: int,
    temperature: float = 1.0,
    decode: Callable[[list[int]], str] | None = None,
) -> Rollout:
    """A discrete :class:`~plugins.soft_grpo.record.Rollout` of these sequences, laid out as the sampler lays
    out its own (prompts left-padded, responses from position ``P``), for the reward plugins: ``answer_text``,
    ``finished``, the lengths and masks. Nothing in it is forced or soft; it stores no log-probabilities."""
    B = len(prompts)
    P = max(len(p) for p in prompts)
    L = P + max(len(r) for r in responses)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.bool)
    resp = torch.zeros((B, L), dtype=torch.bool)
    think, answer, finished, answer_ids = [], [], [], []
    for b, (p, r) in enumerate(zip(prompts, responses)):
        ids[b, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        ids[b, P : P + len(r)] = torch.tensor(r, dtype=torch.long)
        att[b, P - len(p) :] = True  # as the sampler: every position after the prompt is attended
        resp[b, P : P + len(r)] = True
        t, a, ans, f = _split_response(list(r), think_end_id, eos_id)
        think.append(t)
        answer.append(a)
        answer_ids.append(ans)
        finished.append(f)
    zeros = torch.zeros((B, L), dtype=torch.float32)
    return Rollout(
        input_ids=ids,
        topk_ids=ids.unsqueeze(-1).clone(),
        topk_gumbel=zeros.unsqueeze(-1).clone(),
        slot_mask=torch.ones((B, L, 1), dtype=torch.bool),
        is_soft=torch.zeros((B, L), dtype=torch.bool),
        attention_mask=att,
        position_ids=(att.long().cumsum(-1) - 1).clamp_min(0),
        response_mask=resp,
        forced_mask=torch.zeros((B, L), dtype=torch.bool),
        rollout_logprobs=zeros.clone(),
        noise=zeros.unsqueeze(-1).clone(),
        top1_weight=zeros.clone(),
        think_lengths=torch.tensor(think, dtype=torch.long),
        answer_lengths=torch.tensor(answer, dtype=torch.long),
        finished=torch.tensor(finished, dtype=torch.bool),
        prompt_length=P,
        mode="discrete",
        temperature=temperature,
        tau=0.1,
        noise_factor=1.0,
        pad_id=pad_id,
        think_end_id=think_end_id,
        eos_id=eos_id,
        answer_ids=answer_ids,
        answer_text=[decode(a) for a in answer_ids] if decode is not None else None,
    )
