"""Countdown SFT traces: gold scratchpads (optionally corrupted) for supervised warm-up, and their collation.

Built on the task in :mod:`plugins.countdown.task` (problems, solver, verifier, tokenizer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .task import EOS, THINK_END, CharTokenizer, Problem, _render, prompt_text, solve, verify

__all__ = ["gold_trace", "SFTExample", "make_sft_example", "collate_sft"]


def _random_wrong_expression(problem: Problem, rng: random.Random, ops: str) -> str:
    for _ in range(50):
        items: list = list(problem.numbers)
        rng.shuffle(items)
        while len(items) > 1:
            i, j = sorted(rng.sample(range(len(items)), 2))
            a, b = items[i], items[j]
            op = rng.choice([o for o in ops if o != "/"] or ["+"])
            items = [x for m, x in enumerate(items) if m not in (i, j)] + [(op, a, b)]
        expr = _render(items[0])
        if not verify(problem, expr):
            return expr
    return "+".join(map(str, problem.numbers)) + "+1"  # never reached in practice


def gold_trace(
    problem: Problem,
    rng: random.Random,
    ops: str = "+-*",
    step_corrupt_rate: float = 0.0,
    answer_corrupt_rate: float = 0.0,
) -> str:
    """Full training text: prompt, scratchpad, ``</think>``, final expression, ``<eos>``.

    A solution is drawn uniformly from all solutions.  Each scratchpad step is corrupted with
    probability ``step_corrupt_rate`` (its displayed result is shifted by 1..3; later steps keep the
    true values).  With probability ``answer_corrupt_rate`` the final expression is replaced by a
    random expression over the same numbers that misses the target.
    """
    sols = solve(problem.numbers, problem.target, ops)
    if not sols:
        raise ValueError(f"unsolvable problem {problem}")
    sol = sols[rng.randrange(len(sols))]
    parts = []
    for a, op, b, r in sol.steps:
        if step_corrupt_rate > 0 and rng.random() < step_corrupt_rate:
            d = rng.choice([-3, -2, -1, 1, 2, 3])
            r = r + d if r + d >= 0 else r + abs(d)
        parts.append(f"{a}{op}{b}={r}")
    answer = sol.expr
    if answer_corrupt_rate > 0 and rng.random() < answer_corrupt_rate:
        answer = _random_wrong_expression(problem, rng, ops)
    return f"{prompt_text(problem)}{' '.join(parts)}{THINK_END}{answer}{EOS}"


@dataclass
class SFTExample:
    ids: list[int]
    prompt_len: int  # number of prompt tokens (through <think>); loss starts after them
    problem: Problem = field(repr=False, default=None)  # type: ignore[assignment]


def make_sft_example(
    problem: Problem,
    tok: CharTokenizer,
    rng: random.Random,
    ops: str = "+-*",
    step_corrupt_rate: float = 0.0,
    answer_corrupt_rate: float = 0.0,
) -> SFTExample:
    text = gold_trace(problem, rng, ops, step_corrupt_rate, answer_corrupt_rate)
    return SFTExample(tok.encode(text), len(tok.encode(prompt_text(problem))), problem)


def collate_sft(examples: Sequence[SFTExample], pad_id: int = 0, max_len: int | None = None):
    """Right-padded batch for next-token SFT.

    Returns a dict of tensors: ``input_ids`` (B,T), ``labels`` (B,T) with ``-100`` on prompt and padding
    (``labels[b, t]`` is the token at ``t``; the trainer shifts logits), ``attention_mask`` (B,T).
    """

    T = max(len(e.ids) for e in examples)
    if max_len is not None and T > max_len:
        raise ValueError(f"sequence of length {T} exceeds max_len {max_len}")
    B = len(examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long)
    for i, e in enumerate(examples):
        L = len(e.ids)
        ids[i, :L] = torch.tensor(e.ids)
        att[i, :L] = 1
        labels[i, e.prompt_len : L] = ids[i, e.prompt_len : L]
    return {"input_ids": ids, "labels": labels, "attention_mask": att}
