"""One contestant of ``hookmix bench rl`` in a process of its own, so that its peak memory is its own.

``python -m plugins.bench_rl.worker FIXTURES_JSON CONTESTANT OUT_JSON`` with ``CONTESTANT`` one of ``grpo``,
``soft_grpo`` (hookmix, through ``Trainer.advance()``: the whole engine step, as ``hookmix train`` runs it) or
``trl`` (``GRPOTrainer.train()``). Written to ``OUT_JSON``: per step the wall and CPU (process) seconds, the
generation call's wall and CPU seconds and generated tokens, the CPU seconds of every log-prob forward without
gradient (the reference's when ``beta > 0``; a θ_old forward would be counted too, but neither side runs one here:
with one optimizer step per rollout batch, hookmix's ``minibatches = 1`` and TRL's one iteration per generation,
both take θ_old = θ detached), the problems it trained on; the RSS once the libraries it needs are imported (torch,
transformers, and the engine or TRL + datasets) and the peak RSS (``ru_maxrss``, the process's high-water mark).

How each step is timed: hookmix, around ``Trainer.advance()`` (data, rollouts, rewards, advantages, forward,
backward, clipping, optimizer step, the metrics record every 10 steps); TRL, between consecutive
``on_step_end`` callbacks (everything its loop does for one step, logging every 10 steps included). The
generation call is timed by wrapping it in this process only: ``generate_rollouts`` as the ``grpo`` plugin
module calls it, TRL's ``_generate_single_turn``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import time

from .fixtures import VESPO, Settings, prompt_texts

LOG_INTERVAL = 10  # both sides: a metrics record / log line every 10 steps, as a real run


def rss_mib() -> float:
    """The resident set size now (MiB), from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def digit_ids() -> set[int]:
    from plugins.countdown import task as cd

    stoi = cd.CharTokenizer().stoi  # the bench tokenizer has the same ids (fixtures.build_tokenizer)
    return {stoi[c] for c in "0123456789"}


def digit_fraction(ids: list[int], digits: set[int]) -> float:
    """The bench's reward on both sides: the fraction of a completion's tokens that are digits."""
    return sum(i in digits for i in ids) / max(len(ids), 1)


def hookmix_method_config(s: Settings, method: str) -> dict:
    """``[plugins.grpo]`` / ``[plugins.soft_grpo]``: TRL's settings (docs/soft-grpo.md, "To reproduce TRL's
    defaults"): no dual clip, its advantage eps, its KL bias correction, its VESPO constants, one optimizer step
    per rollout batch."""
    return {
        "group_size": s.group_size,
        "minibatches": 1,  # on-policy, as TRL here: θ_old = θ detached, no θ_old forward (plugins/soft_grpo)
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "think_cap": s.think_cap,
        "answer_cap": s.answer_cap,
        "clip_eps": 0.2,
        "clip_eps_high": s.epsilon_high or 0.0,
        "dual_clip": 0,
        "kl_coef": s.beta,
        "kl_bias_correction": True,
        "loss_type": s.loss_type,
        "scale_rewards": "group",
        "adv_eps": 1e-4,
        **{f"vespo_{k}": v for k, v in VESPO.items()},
    }


def run_hookmix(fixtures: dict, method: str) -> dict:
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: F401 (hf_policy's, measured here)

    import plugins.soft_grpo.rl_plugins as rl
    from engine import Plugin, Trainer, hookimpl

    after_imports = rss_mib()  # the libraries each side needs are imported: torch, transformers, the engine
    s = Settings(**fixtures["settings"])
    digits = digit_ids()
    seen: list = []

    class BenchProbe(Plugin):
        """The bench reward (digit fraction) and a record of the problems of each step."""

        name = "bench_probe"

        @hookimpl
        def hookmix_rewards(self, rollouts, state):
            r = rollouts["rollout"]
            G = rollouts["group_size"]
            seen.append(
                [(n[n > 0].tolist(), int(t)) for n, t in zip(rollouts["numbers"][::G], rollouts["targets"][::G])]
            )
            rows = [ids[m].tolist() for ids, m in zip(r.input_ids, r.response_mask)]
            return {"digits": torch.tensor([digit_fraction(row, digits) for row in rows])}

    out = tempfile.mkdtemp(prefix="hookmix-bench-rl-run-")
    raw = {
        "name": f"bench-rl-{method}",
        "run": {
            "plugins": ["countdown", "hf_policy", method, "adamw", "bench_probe"],
            "steps": s.warmup + s.steps + 1,  # timed one by one, then run() trains the last and closes the run
            "seed": s.seed,
            "threads": s.threads,
            "grad_clip": 1.0,  # TRL's max_grad_norm
            "log_interval": LOG_INTERVAL,
            "eval_interval": 0,
            "checkpoint_interval": 0,
            "out": os.path.join(out, "run"),
        },
        "plugins": {
            "countdown": {**_countdown(s), "tokenizer": fixtures["tokenizer"]},
            "hf_policy": {"path": fixtures["model"]},
            method: hookmix_method_config(s, method),
            # TRL's optimizer: AdamW (torch, not fused), betas (0.9, 0.999), constant lr, no weight decay
            "adamw": {"lr": s.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "schedule": "constant"},
        },
    }
    gen: list[tuple[float, float, int]] = []
    nograd: list[float] = []
    generate, logprobs = rl.generate_rollouts, rl.sequence_logprobs

    def timed_generate(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        r = generate(*args, **kwargs)
        gen.append((time.perf_counter() - t0, time.process_time() - c0, int(r.response_mask.sum())))
        return r

    def timed_logprobs(*args, **kwargs):
        if torch.is_grad_enabled():  # the training forward: part of the step, not counted here
            return logprobs(*args, **kwargs)
        c0 = time.process_time()
        value = logprobs(*args, **kwargs)
        nograd[-1] += time.process_time() - c0
        return value

    rl.generate_rollouts, rl.sequence_logprobs = timed_generate, timed_logprobs
    trainer = Trainer.from_recipe(raw, plugins=[BenchProbe], quiet=True)
    trainer.setup()
    wall, cpu, n = [], [], s.warmup + s.steps
    try:
        for _ in range(n):
            nograd.append(0.0)
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.advance()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        nograd.append(0.0)
        trainer.run()  # the last, untimed step; summary and checkpoint written, the run directory released
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return _result(method, wall, cpu, gen[:n], nograd[:n], seen[:n], after_imports, torch.__version__)


def _countdown(s: Settings) -> dict:
    from .fixtures import countdown_config

    return countdown_config(s)


def trl_args(s: Settings, output_dir: str, **changes):
    """``GRPOConfig`` for the settings: the same sampling, loss and optimizer as hookmix's side, fp32 on CPU,
    no gradient checkpointing (TRL's default is on), prompts in dataset order, nothing saved or reported."""
    from trl import GRPOConfig

    options = dict(
        output_dir=output_dir,
        per_device_train_batch_size=s.prompts * s.group_size,  # completions: one generation and one update per step
        gradient_accumulation_steps=1,
        num_generations=s.group_size,
        max_completion_length=s.completion_length,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        loss_type=s.loss_type,
        beta=s.beta,
        epsilon=0.2,
        epsilon_high=s.epsilon_high,
        use_bias_correction_kl=True,
        **{f"vespo_{k}": v for k, v in VESPO.items()},
        scale_rewards="group",
        learning_rate=s.lr,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=s.warmup + s.steps,
        logging_steps=LOG_INTERVAL,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        shuffle_dataset=False,
        disable_tqdm=True,
        seed=s.seed,
        dataloader_num_workers=0,
    )
    options.update(changes)
    return GRPOConfig(**options)


def run_trl(fixtures: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    after_imports = rss_mib()
    s = Settings(**fixtures["settings"])
    digits = digit_ids()
    problems = fixtures["problems"]
    flat = [p for step in problems for p in step]
    data = Dataset.from_dict(
        {"prompt": prompt_texts(problems), "numbers": [n for n, _ in flat], "target": [t for _, t in flat]}
    )
    seen: list = []
    G = s.group_size

    def digit_reward(prompts, completions, completion_ids, numbers, target, **kwargs):
        seen.append([(list(n), int(t)) for n, t in zip(numbers[::G], target[::G])])
        return [digit_fraction(ids, digits) for ids in completion_ids]

    marks: list[tuple[float, float]] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), time.process_time()))

    out = tempfile.mkdtemp(prefix="hookmix-bench-rl-trl-")
    try:
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(fixtures["model"]),
            reward_funcs=digit_reward,
            args=trl_args(s, out),
            train_dataset=data,
            processing_class=AutoTokenizer.from_pretrained(fixtures["tokenizer"]),
            callbacks=[StepClock()],
        )
        gen: list[tuple[float, float, int]] = []
        nograd: list[float] = []
        generate, logprobs = trainer._generate_single_turn, trainer._get_per_token_logps_and_entropies

        def timed_generate(*args, **kwargs):
            nograd.append(0.0)  # one generation per step: a new step's counter
            t0, c0 = time.perf_counter(), time.process_time()
            ids, lps = generate(*args, **kwargs)
            gen.append((time.perf_counter() - t0, time.process_time() - c0, sum(len(c) for c in ids)))
            return ids, lps

        def timed_logprobs(*args, **kwargs):
            if torch.is_grad_enabled():
                return logprobs(*args, **kwargs)
            c0 = time.process_time()
            value = logprobs(*args, **kwargs)
            nograd[-1] += time.process_time() - c0
            return value

        trainer._generate_single_turn, trainer._get_per_token_logps_and_entropies = timed_generate, timed_logprobs
        trainer.train()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return _result("trl", wall, cpu, gen, nograd, seen, after_imports, torch.__version__)


def _result(name, wall, cpu, gen, nograd, seen, after_imports, torch_version) -> dict:
    return {
        "contestant": name,
        "wall": wall,
        "cpu": cpu,
        "gen_wall": [g[0] for g in gen],
        "gen_cpu": [g[1] for g in gen],
        "gen_tokens": [g[2] for g in gen],
        "nograd_cpu": nograd,
        "problems": seen,
        "rss_after_imports_mib": after_imports,
        "peak_rss_mib": peak_rss_mib(),
        "torch": torch_version,
    }


def main(argv: list[str]) -> int:
    fixtures_path, contestant, out_path = argv
    with open(fixtures_path) as f:
        fixtures = json.load(f)
    import torch

    from .fixtures import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(fixtures["settings"]["threads"])
    result = run_trl(fixtures) if contestant == "trl" else run_hookmix(fixtures, contestant)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
