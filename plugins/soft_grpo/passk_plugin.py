"""The ``passk`` evaluation plugin: unbiased and first-k pass@k on held-out Countdown problems, discrete and
soft decoding, with freshly seeded generators (every evaluated model sees the same problems and noise)."""

from __future__ import annotations

import json
from typing import Any

import attrs
import torch

from engine import BadInput, Plugin, field, hookimpl
from engine.validators import each, finite_positive, in_range, int_range, subset_of
from plugins.countdown import task as cd
from plugins.countdown.capabilities import CountdownTask
from plugins.countdown.data_plugin import CountdownSource, check_context
from plugins.countdown.tokenizers import suppress_ids_for

from .passk import pass_at_k_table
from .sampling import SamplingConfig, generate_rollouts

RECIPES = "plugins.soft_grpo.recipes"


@attrs.define
class PassKConfig:
    problems: int = field(64, "held-out problems evaluated", validator=int_range(1, 10**6))
    samples: int = field(32, "samples per problem (n of the unbiased estimator)", validator=int_range(1, 10**6))
    ks: list[int] = field(
        [1, 4, 16, 32], "k values reported (k <= samples)", validator=each(int_range(1, 10**6), min_items=1)
    )
    modes: list[str] = field(
        ["discrete", "soft"],
        "decodings: discrete sampling and/or soft thinking + Gumbel",
        validator=subset_of("discrete", "soft"),
    )
    taus: list[float] = field(
        [0.1], "Gumbel-Softmax temperatures of the soft decoding (one metric set each)", validator=each(finite_positive)
    )
    temperature: float = field(1.0, "sampling temperature", validator=finite_positive)
    top_k: int = field(5, "top-k filter (= soft mixture size)", validator=int_range(1, 2**20))
    top_p: float = field(0.95, "top-p filter", validator=in_range(0, 1, low_open=True))
    think_cap: int = field(24, "thinking tokens before </think> is forced", validator=int_range(0, 2**16))
    answer_cap: int = field(14, "answer tokens, <eos> included", validator=int_range(1, 2**16))
    seed: int = field(
        1234, "seed of the evaluation noise (fixed: every model sees the same stream)", validator=int_range(0, 2**62)
    )
    chunk: int = field(2048, "rows per generation call", validator=int_range(1, 2**20))
    save: bool = field(True, "write per-problem correct counts to passk/step-XXXXXXXX.json in the run directory")


@torch.no_grad()
def evaluate_passk(model, data: CountdownSource, c: PassKConfig, device, autocast=None) -> tuple[dict, dict]:
    """pass@k metrics and per-problem correctness for every decoding of ``c``; returns (metrics, details)."""
    tok = data.tokenizer
    problems = data.heldout(c.problems)
    prompts = [data.prompt_ids(p) for p in problems]
    runs = [("discrete", None)] if "discrete" in c.modes else []
    runs += [(f"soft_t{t:g}", t) for t in c.taus] if "soft" in c.modes else []
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {"problems": [[list(p.numbers), p.target] for p in problems], "samples": c.samples}
    rows = [(i, p) for i, p in enumerate(prompts) for _ in range(c.samples)]
    for idx, (label, tau) in enumerate(runs):
        cfg = SamplingConfig(
            mode="discrete" if tau is None else "soft",
            temperature=c.temperature,
            top_k=c.top_k,
            top_p=c.top_p,
            think_cap=c.think_cap,
            answer_cap=c.answer_cap,
            tau=tau if tau is not None else 0.1,
            suppress_ids=suppress_ids_for(tok),
        )
        gen = torch.Generator(device=device).manual_seed(c.seed + 7919 * idx)
        correct = torch.zeros(len(problems), c.samples, dtype=torch.bool)
        sums = {"think": 0.0, "finished": 0.0, "top1": 0.0, "top1_99": 0.0, "soft": 0.0}
        seen = [0] * len(problems)
        for start in range(0, len(rows), c.chunk):
            part = rows[start : start + c.chunk]
            with autocast() if autocast is not None else torch.autocast("cpu", enabled=False):
                r = generate_rollouts(
                    model,
                    [p for _, p in part],
                    cfg,
                    think_end_id=tok.think_end_id,
                    eos_id=tok.eos_id,
                    pad_id=tok.pad_id,
                    generator=gen,
                    decode=tok.decode,
                )
            for (i, _), a, f in zip(part, r.answer_text, r.finished.tolist()):
                correct[i, seen[i]] = cd.answer_reward(problems[i], a, f) > 0
                seen[i] += 1
            soft = r.is_soft & r.response_mask
            sums["think"] += float(r.think_lengths.float().sum())
            sums["finished"] += float(r.finished.float().sum())
            sums["top1"] += float(r.top1_weight[soft].sum())
            sums["top1_99"] += float((r.top1_weight[soft] > 0.99).float().sum())
            sums["soft"] += float(soft.sum())
        table = pass_at_k_table(correct.numpy(), [k for k in c.ks if k <= c.samples])
        for k in c.ks:
            if k <= c.samples:
                metrics[f"passk/{label}/pass@{k}"] = table[f"pass@{k}"]
                metrics[f"passk/{label}/first@{k}"] = table[f"first@{k}"]
        n = len(rows)
        metrics[f"passk/{label}/think_len"] = sums["think"] / n
        metrics[f"passk/{label}/finished"] = sums["finished"] / n
        if tau is not None and sums["soft"] > 0:
            metrics[f"passk/{label}/top1_weight"] = sums["top1"] / sums["soft"]
            metrics[f"passk/{label}/top1_gt_0.99"] = sums["top1_99"] / sums["soft"]
        details[label] = ["".join("1" if x else "0" for x in row) for row in correct.tolist()]
    return metrics, details


class PassK(Plugin):
    """Evaluation: unbiased and first-k pass@k on held-out Countdown problems, discrete and soft decoding."""

    name = "passk"
    Config = PassKConfig
    requires = (CountdownTask,)
    recipes = RECIPES

    @hookimpl
    def hookmix_configure(self, state):
        c = self.config  # the per-field rules are the validators; these relate two fields
        if max(c.ks) > c.samples:
            raise BadInput(
                f"plugins.passk.ks={c.ks}: every k must be <= samples={c.samples}; lower ks or raise samples"
            )
        if "soft" in c.modes and not c.taus:
            raise BadInput('plugins.passk.taus is empty but modes has "soft"; give at least one tau, e.g. [0.1]')

    @hookimpl
    def hookmix_setup_model(self, model, state):
        check_context(model, state.data, self.config.think_cap, self.config.answer_cap, self.name)

    @hookimpl
    def hookmix_eval_metrics(self, model, state):
        metrics, details = evaluate_passk(model, state.data, self.config, state.device, state.autocast)
        if self.config.save and state.is_main and state.run_dir is not None:
            details["metrics"] = metrics
            state.run_dir.write_text_atomic(f"passk/step-{state.step:08d}.json", json.dumps(details) + "\n")
        return metrics
