"""Engine plugin ``gkd``: on-policy distillation (GKD, Agarwal et al., ICLR 2024) as a rollout provider and a
loss term; docs/gkd.md.

How a step maps onto the hooks (``engine/loop.py``), with the pieces it composes::

    batch = countdown.train_batch(generator)        # prompts (rl mode)
    rollouts = gkd.generate_rollouts(...)           # a coin (plugin generator): with probability lmbda the
                                                    # student's own samples, else the data set's gold traces
                                                    # (or the teacher's samples: seq_kd), as an SFT-mode LM batch
    rewards = countdown_reward(...)                 # logged only: the loss does not read them
    outputs = model(rollouts["input"])              # the engine's default forward
    outputs |= teacher.aux_outputs(...)             # the frozen teacher policy on the same tokens
    terms = gkd.loss_terms(...)                     # generalized JSD per token, through state.logits
                                                    # (kind "distillation": logit_std reaches it)

Every random draw is the data generator's (problems) or this plugin's (the coin, the sampling and gold-trace
seeds), which is saved in its checkpoint state and is the same on every rank, so a resumed run is bit-exact and
ranks that hold whole sampling chunks (``sample_chunks``) draw exactly what one process draws.
"""

from __future__ import annotations

import random

import attrs
import torch

from engine import BadInput, Plugin, field, hookimpl
from engine.validators import Rule, each, finite_non_negative, finite_positive, in_range, int_range
from plugins.countdown.capabilities import RL, CountdownTask
from plugins.countdown.data_plugin import check_context, problems_from
from plugins.countdown.tokenizers import suppress_ids_for
from plugins.kd.distill_inputs import DISTILLATION, TEACHER, check_teachers, default_teachers, teacher_logits_key
from plugins.policies.capabilities import POLICY
from plugins.soft_grpo.sampling import SamplingConfig, generate_rollouts

from .losses import generalized_jsd
from .sequences import discrete_record, from_rollout, gold_sequences, lm_batch

RECIPES = "plugins.gkd.recipes"
teacher_name = Rule(
    f'"{TEACHER}" or "{TEACHER}@LABEL"',
    lambda v: isinstance(v, str) and (v == TEACHER or (v.startswith(f"{TEACHER}@") and len(v) > len(TEACHER) + 1)),
)


@attrs.define
class GKDConfig:
    lmbda: float = field(
        0.5,
        "probability that a batch is the student's own samples (on-policy); otherwise the data set's gold traces, "
        "or the teacher's samples with seq_kd (TRL's default 0.5)",
        validator=in_range(0, 1),
    )
    beta: float = field(
        0.5,
        "JSD mixing: 0 forward KL(teacher || student), 1 reverse KL(student || teacher), between: the generalized "
        "JSD with m = (1 - beta) p_s + beta p_t (TRL's default 0.5)",
        validator=in_range(0, 1),
    )
    seq_kd: bool = field(False, "off-policy batches are the teacher's samples (sequence-level KD), not the data set's")
    temperature: float = field(
        0.9,
        "sampling temperature of the student's and teacher's sequences (TRL's default 0.9)",
        validator=finite_positive,
    )
    loss_temperature: float = field(
        1.0, "temperature of the JSD's softmaxes (the GKD trainer: 1; no T^2 factor)", validator=finite_positive
    )
    top_k: int = field(0, "top-k filter of the sampling (0: off, as TRL's generation)", validator=int_range(0, 2**20))
    top_p: float = field(1.0, "top-p filter of the sampling (1: off)", validator=in_range(0, 1, low_open=True))
    think_cap: int = field(24, "thinking tokens before </think> is forced", validator=int_range(0, 2**16))
    answer_cap: int = field(14, "answer tokens after </think>, <eos> included", validator=int_range(1, 2**16))
    weight: float = field(1.0, "weight of the loss term gkd", validator=finite_non_negative)
    teachers: list[str] = field(
        [],
        "the teacher instances that score the tokens (several: their logits, each transformed for gkd, averaged; "
        "seq_kd samples from the first); []: the plain teacher",
        validator=each(teacher_name),
    )
    sample_chunks: int = field(
        0,
        "sampling noise streams per global batch, one per equal chunk of prompts (0: one per rank); runs on "
        "different numbers of ranks sample the same sequences when it is the same multiple of each",
        validator=int_range(0, 2**16),
    )
    seed_offset: int = field(
        3, "the coin and sampling generator is seeded with run.seed + this", validator=int_range(0, 2**32)
    )


class GKD(Plugin):
    """On-policy distillation (GKD): student samples (lmbda) scored by a frozen teacher; the term `gkd` = generalized JSD."""

    name = "gkd"
    Config = GKDConfig
    provides = (RL, "loss:distillation")
    requires = (CountdownTask, POLICY, TEACHER)
    recipes = RECIPES
    api = ">=1.1,<2"  # step_totals, state.frozen_modules

    def teachers(self) -> tuple[str, ...]:
        return tuple(self.config.teachers) or default_teachers(self)

    def chunks(self, state) -> int:
        return self.config.sample_chunks or state.world_size

    # setup
    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        task = state.provider(CountdownTask)
        if task.task_mode() != "rl":
            raise BadInput('gkd samples sequences from prompts; set plugins.countdown.mode="rl"')
        check_teachers(self, self.teachers(), state)
        n, chunks, world = task.prompts_per_batch(), self.chunks(state), state.world_size
        if n % chunks or chunks % world:
            raise BadInput(
                f"plugins.gkd.sample_chunks={c.sample_chunks} must divide plugins.countdown.batch_size={n} into "
                f"equal chunks, a whole number of them per rank ({world} ranks); set it to a multiple of {world} "
                f"that divides {n}"
            )
        val = getattr(getattr(task, "config", None), "val_problems", None)
        if val == 0:  # the teacher checks its logits' shape on a held-out LM batch
            raise BadInput(
                "gkd needs held-out traces for the teacher's shape check; set plugins.countdown.val_problems > 0"
            )

    @hookimpl
    def hookmix_setup_model(self, model, state):
        c = self.config
        # rank-independent on purpose: the coin and every seed are the same on every rank (one draw per global batch)
        self.generator = torch.Generator().manual_seed(state.run.seed + c.seed_offset)
        self.sampling = SamplingConfig(
            mode="discrete",
            temperature=c.temperature,
            top_k=c.top_k,
            top_p=c.top_p,
            think_cap=c.think_cap,
            answer_cap=c.answer_cap,
            suppress_ids=suppress_ids_for(state.data.tokenizer),
        )
        check_context(model, state.data, c.think_cap, c.answer_cap, self.name)
        self.max_len = getattr(model, "max_positions", None)

    # sequences
    def _sample(self, policy, prompts: list[list[int]], seed: int, first: int, state) -> tuple[list, list]:
        """Sample ``prompts`` (global rows ``first..``) chunk by chunk, each chunk with its own seeded stream."""
        tok = state.data.tokenizer
        size = state.provider(CountdownTask).prompts_per_batch() // self.chunks(state)
        out_p, out_r = [], []
        for start in range(0, len(prompts), size):
            chunk = (first + start) // size  # its index in the global batch: the same whatever the ranks
            gen = torch.Generator(device=state.device).manual_seed((seed + 1_000_003 * chunk) % 2**63)
            with state.autocast():
                r = generate_rollouts(
                    policy,
                    prompts[start : start + size],
                    self.sampling,
                    think_end_id=tok.think_end_id,
                    eos_id=tok.eos_id,
                    pad_id=tok.pad_id,
                    generator=gen,
                )
            p, resp = from_rollout(r)
            out_p += p
            out_r += resp
        return out_p, out_r

    @hookimpl
    def hookmix_generate_rollouts(self, model, batch, state):
        c, data = self.config, state.data
        tok = data.tokenizer
        coin = float(torch.rand((), generator=self.generator, dtype=torch.float64))
        seed = int(torch.randint(0, 2**62, (), generator=self.generator))
        problems = problems_from(batch)
        first = state.rank * len(problems)  # contiguous equal shares (configure checked the division)
        if coin < c.lmbda:
            source = "student"
            prompts, responses = self._sample(model, [data.prompt_ids(p) for p in problems], seed, first, state)
        elif c.seq_kd:
            source = "teacher"
            teacher = state.frozen_modules[self.teachers()[0]]
            prompts, responses = self._sample(teacher, [data.prompt_ids(p) for p in problems], seed, first, state)
        else:
            source = "data"
            rngs = [random.Random(f"gkd|{seed}|{first + i}") for i in range(len(problems))]
            dc = data.config
            prompts, responses = gold_sequences(
                problems, tok, rngs, dc.ops, dc.step_corrupt_rate, dc.answer_corrupt_rate
            )
        try:
            lm = lm_batch(prompts, responses, tok.pad_id, self.max_len)
        except ValueError as exc:
            raise BadInput(f"gkd: {exc}; lower plugins.gkd.think_cap/answer_cap or raise the model's max_len") from None
        lm = {k: v.to(state.device) for k, v in lm.items()}
        record = discrete_record(
            prompts,
            responses,
            pad_id=tok.pad_id,
            think_end_id=tok.think_end_id,
            eos_id=tok.eos_id,
            temperature=c.temperature,
            decode=tok.decode,
        ).to(state.device)
        state.log("gkd/on_policy", float(source == "student"))
        state.log("gkd/response_length", sum(map(len, responses)) / len(responses))
        return {
            **lm,
            "loss_mask": lm["target"] >= 0,  # the engine counts the step's tokens from it (step_totals)
            "rollout": record,
            "numbers": batch["numbers"],
            "targets": batch["targets"],
            "group_size": 1,
        }

    # the loss
    @staticmethod
    def _normaliser(batch) -> float:
        """The divisor that makes the step's loss the sum over all its tokens / their number: the step's tokens
        per micro-batch loss the engine averages (over ``grad_accum`` and ranks; engine.StepTotals)."""
        totals = batch["step_totals"]
        return max(totals["tokens"], 1.0) / totals["micro_batches"]

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        c = self.config
        if "loss_mask" not in batch:
            return None
        keep = batch["target"].reshape(-1) >= 0
        width = outputs["logits"].shape[-1]
        student = outputs["logits"].reshape(-1, width)[keep]
        seen = []
        for name in self.teachers():
            key = teacher_logits_key(name)
            if key not in outputs:
                raise BadInput(f"gkd needs outputs[{key!r}]; add {name!r} to run.plugins")
            t = outputs[key].reshape(-1, outputs[key].shape[-1])[keep]
            seen.append(state.logits(t.detach(), role="teacher", consumer=self.name, kind=DISTILLATION))
        teacher = seen[0] if len(seen) == 1 else torch.stack(seen).mean(0)
        student = state.logits(student, role="student", consumer=self.name, kind=DISTILLATION)
        if teacher.shape != student.shape:
            raise BadInput(f"gkd: teacher logits {tuple(teacher.shape)} and student {tuple(student.shape)} differ")
        total = generalized_jsd(student, teacher, c.beta, c.loss_temperature).sum()
        return {"gkd": c.weight * total / self._normaliser(batch)}

    # checkpoint state: the coin and seed generator
    @hookimpl
    def hookmix_plugin_state(self, state):
        return {"generator": self.generator.get_state()}

    @hookimpl
    def hookmix_load_plugin_state(self, plugin_state, state):
        self.generator.set_state(plugin_state["generator"])
