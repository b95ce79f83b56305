"""What both sides of ``hookmix bench rl`` share: the settings, the tokenizer and model files, the prompts.

Everything is built locally and written to one directory, which each contestant's process then loads:

* the tokenizer: a ``tokenizers`` word-level model over the Countdown character vocabulary (the five special
  tokens, digits, ``+-*/()=:`` and space; ids equal to :class:`~plugins.countdown.task.CharTokenizer`'s), one
  token per character, saved as a ``PreTrainedTokenizerFast`` (``<bos>``, ``<eos>``, ``<pad>`` named). hookmix
  reads it through ``plugins.countdown.tokenizer``, TRL as its ``processing_class``: a prompt text gives the same
  ids on both sides (checked by :func:`build`).
* the model: a ``LlamaForCausalLM`` of tiny sizes with random weights, saved with ``save_pretrained``; hookmix
  loads it with ``plugins.hf_policy.path``, TRL with ``from_pretrained``. One change to a random init: the LM
  head rows of the special tokens are 0 and the other rows come in ± pairs (``w``, ``−w``), so that at every
  position at least ``PAIRS`` logits are > 0 while the special tokens' logits are exactly 0. With ``top_k <=
  PAIRS`` no special token is ever sampled: no row ends early on either side (hookmix's ``</think>`` / ``<eos>``,
  TRL's EOS), and every row of both generates exactly ``think_cap + 1 + answer_cap`` tokens (hookmix forces
  ``</think>`` at the think cap, TRL samples that position). The two sides do the same work per step.
* the prompts: the Countdown problems the engine's ``countdown`` plugin draws, step by step (its data generator
  is seeded ``run.seed + 1``, as in engine/bench/overhead.py); TRL gets them as a ``datasets.Dataset`` in the same
  order (``shuffle_dataset=False``). Each contestant records the problems it trained on; the command fails if
  they differ from these.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from engine import BadInput

#: ± pairs of LM-head rows (the 19 ordinary characters give 9): the most ``top_k`` the bench allows.
PAIRS = 9
TRL_VERSION = "1.16.0"  # the version the extra pins, and the one the loss check was written against
#: VESPO's gamma-weight constants, TRL 1.16's defaults: given explicitly to both sides (hookmix's vespo_* options,
#: TRL's GRPOConfig.vespo_*), so that neither side's own defaults decide the comparison.
VESPO = {"k_pos": 2.0, "lambda_pos": 3.0, "k_neg": 3.0, "lambda_neg": 2.0}
INSTALL_HINT = 'pip install -e ".[trl]"'


@dataclass
class Settings:
    """The settings both sides run with (the command's options)."""

    prompts: int = 16  # prompts per step
    group_size: int = 8  # completions per prompt (G)
    think_cap: int = 24
    answer_cap: int = 14
    temperature: float = 1.0
    top_k: int = 5
    top_p: float = 0.95
    loss_type: str = "dapo"
    beta: float = 0.0  # KL coefficient (TRL's default 0; > 0 adds a reference model on both sides)
    lr: float = 1e-5
    steps: int = 20  # timed steps
    warmup: int = 3  # untimed steps before them
    seed: int = 0
    threads: int = 1
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    number_max: int = 20  # Countdown: 3 numbers in 1..number_max, targets <= 100
    max_positions: int = 64

    @property
    def completion_length(self) -> int:
        """Tokens every row generates: think_cap, ``</think>``, answer_cap (TRL's ``max_completion_length``)."""
        return self.think_cap + 1 + self.answer_cap

    @property
    def epsilon_high(self) -> float | None:
        """cispo's absolute cap on the ratio (TRL's recommended 5); the clip types use the symmetric clip."""
        return 5.0 if self.loss_type == "cispo" else None

    def check(self) -> None:
        """One-line errors for settings the bench cannot run as asked."""
        if self.group_size < 2:
            raise BadInput(f"--group-size {self.group_size}: group advantages need at least 2 completions per prompt")
        if not 1 <= self.top_k <= PAIRS:
            raise BadInput(
                f"--top-k {self.top_k} must be in 1..{PAIRS}: the bench model keeps the special tokens out of the "
                f"top {PAIRS} so that every row generates the full length on both sides"
            )
        if not 0 < self.top_p <= 1:
            raise BadInput(f"--top-p {self.top_p} must be in (0, 1]")
        if not self.temperature > 0:
            raise BadInput(f"--temperature {self.temperature} must be > 0")
        if not 0 <= self.beta < float("inf"):
            raise BadInput(f"--beta {self.beta} must be a finite number >= 0")
        n = self.number_max
        longest = len(f"{n} {n} {n}:100") + 2  # + <bos> and <think>, one token each
        if longest + self.completion_length > self.max_positions:
            raise BadInput(
                f"the longest prompt ({longest} tokens) + think_cap + 1 + answer_cap = "
                f"{longest + self.completion_length} exceeds the bench model's context ({self.max_positions}); "
                f"lower --think-cap / --answer-cap"
            )

    def to_json(self) -> dict:
        return asdict(self)


def require_trl() -> str:
    """Import TRL and ``datasets`` (the extra ``trl``) or fail in one line; returns TRL's version."""
    try:
        import datasets  # noqa: F401
        import trl
    except ImportError:
        raise BadInput(
            f'--against trl needs TRL, an optional extra: {INSTALL_HINT} (or pip install "trl=={TRL_VERSION}" datasets)'
        ) from None
    return str(trl.__version__)


def quiet_libraries() -> None:
    """No progress bars, advice or deprecation notes from transformers / TRL / datasets / accelerate in this
    process: the tables are the output (a failing contestant's last stderr line is still reported)."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in ("trl", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("transformers", "trl", "accelerate", "torch"):
        warnings.filterwarnings("ignore", module=module)


def countdown_config(s: Settings) -> dict:
    """``[plugins.countdown]`` of the hookmix contestants (the problems TRL gets too)."""
    return {
        "mode": "rl",
        "batch_size": s.prompts,
        "n_numbers": [3],
        "number_max": s.number_max,
        "min_solutions": 1,
        "val_problems": 0,
        "max_len": s.max_positions,
    }


def planned_problems(s: Settings) -> list[list[tuple[list[int], int]]]:
    """The problems of every step (warm-up included), as the engine's ``countdown`` plugin draws them:
    ``[step][prompt] = (numbers, target)``."""
    import torch

    from plugins.countdown.data_plugin import CountdownDataConfig, CountdownSource, problems_from

    source = CountdownSource(CountdownDataConfig(**countdown_config(s)))
    generator = torch.Generator().manual_seed(s.seed + 1)  # the engine's data generator (engine/state.py)
    steps = []
    for _ in range(s.warmup + s.steps):
        steps.append([(list(p.numbers), p.target) for p in problems_from(source.train_batch(generator))])
    return steps


def build_tokenizer(path: str):
    """The Countdown vocabulary as a ``PreTrainedTokenizerFast``, one token per character, saved to ``path``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from plugins.countdown import task as cd

    vocab = {symbol: i for i, symbol in enumerate(cd.CharTokenizer().itos)}
    model = Tokenizer(models.WordLevel(vocab, unk_token=cd.PAD))
    model.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # every character a token
    model.decoder = decoders.Fuse()  # decode without separators
    model.add_special_tokens(list(cd.SPECIAL_TOKENS))  # already in the vocabulary: matched whole, ids kept
    tok = PreTrainedTokenizerFast(
        tokenizer_object=model, bos_token=cd.BOS, eos_token=cd.EOS, pad_token=cd.PAD, padding_side="left"
    )
    tok.save_pretrained(path)
    return tok


def build_model(s: Settings, vocab_size: int, special_ids: list[int], path: str):
    """A random tiny Llama, its LM head rows in ± pairs and 0 for ``special_ids`` (module docstring); saved."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(s.seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=s.hidden,
        intermediate_size=4 * s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.heads,
        max_position_embeddings=s.max_positions,
        tie_word_embeddings=False,
        pad_token_id=special_ids[0],
        bos_token_id=special_ids[1],
        eos_token_id=special_ids[4],
    )
    model = LlamaForCausalLM(config)
    ordinary = [i for i in range(vocab_size) if i not in special_ids]
    if len(ordinary) // 2 < PAIRS:
        raise ValueError(f"{len(ordinary)} ordinary tokens make fewer than {PAIRS} ± pairs")
    with torch.no_grad():
        head = model.lm_head.weight
        rows = torch.randn(len(ordinary) // 2 + 1, head.shape[1]) * config.initializer_range
        head.zero_()
        for j, i in enumerate(ordinary):
            head[i] = rows[j // 2] if j % 2 == 0 else -rows[j // 2]
    model.save_pretrained(path)
    return model


def build(s: Settings, workdir: str) -> dict:
    """Tokenizer and model under ``workdir``, the planned problems, the settings: ``workdir/fixtures.json``."""
    from plugins.countdown import task as cd
    from plugins.countdown.tokenizers import HFCountdownTokenizer

    tok_dir, model_dir = os.path.join(workdir, "tokenizer"), os.path.join(workdir, "model")
    tok = build_tokenizer(tok_dir)
    special = [tok.convert_tokens_to_ids(t) for t in cd.SPECIAL_TOKENS]
    build_model(s, len(tok), special, model_dir)
    problems = planned_problems(s)
    ours = HFCountdownTokenizer(tok_dir)
    for numbers, target in problems[0]:  # the same ids on both sides: hookmix's encoder and TRL's call
        text = cd.prompt_text(cd.Problem(tuple(numbers), target))
        if tok(text=[text])["input_ids"][0] != ours.encode(text):
            raise RuntimeError(f"the two tokenizations of {text!r} differ")
    fixtures = {"settings": s.to_json(), "tokenizer": tok_dir, "model": model_dir, "problems": problems}
    with open(os.path.join(workdir, "fixtures.json"), "w") as f:
        json.dump(fixtures, f)
    return fixtures


def prompt_texts(problems: list[list[tuple[list[int], int]]]) -> list[str]:
    """The prompt texts of every step, flattened in order (TRL's dataset rows)."""
    from plugins.countdown import task as cd

    return [cd.prompt_text(cd.Problem(tuple(n), t)) for step in problems for n, t in step]
