"""The ``countdown`` data plugin: rollout prompts (rl) or gold scratchpad traces (sft), and a held-out split."""

from __future__ import annotations

import random
from typing import Literal

import attrs
import torch

from engine import BadInput, Plugin, field, hookimpl
from engine.validators import Rule, each, in_range, int_range, seed
from plugins.policies.policy import left_pad

from . import sft_traces as sft
from . import task as cd
from .capabilities import RL, CountdownTask
from .tokenizers import HFCountdownTokenizer

operators = Rule(
    "a non-empty string of distinct operators from +-*/",
    lambda v: isinstance(v, str) and bool(v) and len(set(v)) == len(v) and set(v) <= set("+-*/"),
)


@attrs.define
class CountdownDataConfig:
    mode: Literal["rl", "sft"] = field(
        "rl", "rl: prompt batches for rollouts; sft: gold traces as input/target LM batches"
    )
    batch_size: int = field(
        16, "prompts per rollout batch (rl) or traces per micro-batch (sft)", validator=int_range(1, 2**16)
    )
    n_numbers: list[int] = field(
        [3, 4],
        "how many numbers a problem has (drawn uniformly from this list)",
        validator=each(int_range(2, 6), min_items=1),
    )
    number_max: int = field(9, "numbers are drawn from 1..number_max", validator=int_range(1, 10**4))
    target_max: int = field(100, "targets are reachable values in 1..target_max", validator=int_range(1, 10**6))
    min_solutions: int = field(
        2, "keep only targets with at least this many distinct solutions", validator=int_range(1, 10**6)
    )
    ops: str = field("+-*", "operators the solver uses (add / for exact division)", validator=operators)
    test_fraction: float = field(
        0.1,
        "fraction of problem keys held out (hash split: never trained on)",
        validator=in_range(0, 1, low_open=True, high_open=True),
    )
    step_corrupt_rate: float = field(
        0.0, "sft: probability of corrupting each scratchpad step's result", validator=in_range(0, 1)
    )
    answer_corrupt_rate: float = field(
        0.0, "sft: probability of replacing the answer by a wrong expression", validator=in_range(0, 1)
    )
    loss_on_prompt: bool = field(False, "sft: also train on the prompt tokens (default: target -100 there)")
    val_problems: int = field(
        128, "held-out gold traces scored by the engine's val/loss (0: none)", validator=int_range(0, 10**6)
    )
    heldout_seed: int = field(0, "seed of the held-out problem list (shared by val and passk)", validator=seed)
    max_len: int = field(
        64, "context length the model must support (data info block_size)", validator=int_range(1, 2**16)
    )
    tokenizer: str = field("", "empty: the 24-symbol character tokenizer; else a local Hugging Face tokenizer dir")
    think_start: str = field("<think>", "HF tokenizer only: text that opens the scratchpad")
    think_end: str = field("</think>", "HF tokenizer only: the single token that ends thinking")


class CountdownSource:
    """The data object of the ``countdown`` plugin (``info``, ``train_batch``, ``val_batches``, ``heldout``)."""

    def __init__(self, c: CountdownDataConfig) -> None:
        self.config = c
        self.mode = c.mode
        self.tokenizer = (
            cd.CharTokenizer() if not c.tokenizer else HFCountdownTokenizer(c.tokenizer, c.think_start, c.think_end)
        )
        self.task = cd.CountdownConfig(
            n_numbers=tuple(c.n_numbers),
            number_range=(1, c.number_max),
            target_range=(1, c.target_max),
            min_solutions=c.min_solutions,
            ops=c.ops,
            test_fraction=c.test_fraction,
        )
        tok = self.tokenizer
        self.info = {
            "task": "countdown",
            "vocab_size": tok.vocab_size,
            "block_size": c.max_len,
            "pad_id": tok.pad_id,
            "think_end_id": tok.think_end_id,
            "eos_id": tok.eos_id,
        }
        self._heldout: dict[int, list[cd.Problem]] = {}
        self._val: list[dict] | None = None

    # problems
    def _draw(self, generator: torch.Generator, n: int, split: str = "train") -> tuple[list[cd.Problem], random.Random]:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return cd.generate_problems(n, seed, split, self.task), random.Random(seed)

    def heldout(self, n: int) -> list[cd.Problem]:
        """The first ``n`` distinct held-out (test-split) problems; the same list in every run."""
        if n not in self._heldout:
            self._heldout[n] = cd.generate_problems(n, self.config.heldout_seed, "test", self.task, unique=True)
        return self._heldout[n]

    def prompt_ids(self, problem: cd.Problem) -> list[int]:
        return self.tokenizer.encode(cd.prompt_text(problem))

    # batches
    def _lm_batch(self, problems: list[cd.Problem], rng: random.Random, corrupt: bool = True) -> dict:
        c = self.config
        steps, answers = (c.step_corrupt_rate, c.answer_corrupt_rate) if corrupt else (0.0, 0.0)
        examples = [sft.make_sft_example(p, self.tokenizer, rng, c.ops, steps, answers) for p in problems]
        if c.loss_on_prompt:
            for e in examples:
                e.prompt_len = 1
        b = sft.collate_sft(examples, pad_id=self.tokenizer.pad_id, max_len=c.max_len)
        return {"input": b["input_ids"][:, :-1], "target": b["labels"][:, 1:]}

    def train_batch(self, generator: torch.Generator) -> dict:
        problems, rng = self._draw(generator, self.config.batch_size)
        if self.mode == "sft":
            return self._lm_batch(problems, rng)
        ids, mask = left_pad([self.prompt_ids(p) for p in problems], self.tokenizer.pad_id)
        return {"prompt_ids": ids, "prompt_mask": mask, **problem_tensors(problems)}

    def val_batches(self):
        n = self.config.val_problems
        if n <= 0:
            return []
        if self._val is None:
            problems, rng = self.heldout(n), random.Random(f"countdown-val|{self.config.heldout_seed}")
            bs = self.config.batch_size if self.mode == "sft" else 64
            self._val = [self._lm_batch(problems[i : i + bs], rng, corrupt=False) for i in range(0, n, bs)]  # clean
        return self._val


def problem_tensors(problems: list[cd.Problem]) -> dict[str, torch.Tensor]:
    """``numbers`` (N, 4) with 0 for "no number" (numbers are >= 1) and ``targets`` (N,)."""
    width = max(4, max(len(p.numbers) for p in problems))
    nums = torch.zeros((len(problems), width), dtype=torch.long)
    for i, p in enumerate(problems):
        nums[i, : len(p.numbers)] = torch.tensor(p.numbers)
    return {"numbers": nums, "targets": torch.tensor([p.target for p in problems], dtype=torch.long)}


def problems_from(batch: dict) -> list[cd.Problem]:
    nums, targets = batch["numbers"].tolist(), batch["targets"].tolist()
    return [cd.Problem(tuple(n for n in row if n > 0), int(t)) for row, t in zip(nums, targets)]


class Countdown(Plugin):
    """Countdown arithmetic task: rollout prompts (rl) or gold scratchpad traces (sft), held-out split."""

    name = "countdown"
    Config = CountdownDataConfig
    provides = (CountdownTask,)

    # CountdownTask: what the RL plugins may ask of this plugin

    def task_mode(self) -> str:
        return self.config.mode

    def prompts_per_batch(self) -> int:
        return self.config.batch_size

    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        if c.mode == "rl" and state.provider(RL) is None:
            raise BadInput(
                "plugins.countdown.mode='rl' yields prompts, which need a rollout plugin; "
                'add grpo or soft_grpo to run.plugins, or set plugins.countdown.mode="sft"'
            )

    @hookimpl
    def hookmix_data(self, state):
        try:
            return CountdownSource(self.config)
        except ValueError as exc:
            raise BadInput(f"plugins.countdown: {exc}") from None


def check_context(model, data: CountdownSource, think_cap: int, answer_cap: int, plugin: str) -> None:
    """Fail at setup (not mid-run) when the longest prompt plus the caps exceeds the model's context."""
    c = data.config
    worst = cd.Problem(tuple([c.number_max] * max(c.n_numbers)), c.target_max)
    need = len(data.prompt_ids(worst)) + think_cap + 1 + answer_cap
    limit = getattr(model, "max_positions", None)
    if limit is not None and need > limit:
        raise BadInput(
            f"the longest prompt + think_cap + 1 + answer_cap = {need} exceeds the model context ({limit}); "
            f"lower plugins.{plugin}.think_cap/answer_cap or raise the model's max_len"
        )
