"""Engine plugins of the SofT-GRPO package: Countdown data, policies, rewards, GRPO / SofT-GRPO, pass@k.

How the RL step maps onto the engine hooks (see ``engine/loop.py``)::

    batch = countdown.train_batch(generator)          # prompts (numbers, target), left-padded
    rollouts = grpo|soft_grpo.generate_rollouts(...)  # G samples per prompt (discrete | soft+Gumbel),
                                                      # θ_old and reference log-likelihoods, teacher-forced
    rewards = countdown_reward + format_reward        # named, weighted, summed by the engine
    advantages = grpo|soft_grpo.advantages(...)       # group-normalised (Bessel std + 1e-6)
    outputs = grpo|soft_grpo.forward(...)             # teacher-forced log-likelihood under θ
    terms = grpo|soft_grpo.loss_terms(...)            # {"pg": PPO-clip + dual clip, "kl": β·k3}

Every random draw of a run comes from the engine's data generator (problems, SFT traces) or from a
generator owned by the RL plugin and saved in its checkpoint state (rollout noise), so a resumed run is
bit-exact. Evaluation (``passk``) uses its own freshly seeded generators: every evaluated model sees the
same problems and the same noise stream.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from typing import Any

import attrs
import torch

from engine import BadInput, Plugin, field, hookimpl, one_of

from . import countdown as cd
from .likelihood import LikelihoodConfig, sequence_logprobs
from .objective import ObjectiveConfig, aggregate, group_advantages, k3_kl, policy_loss
from .passk import pass_at_k_table
from .policy import TinyPolicy, TinyPolicyConfig
from .record import Rollout
from .sampling import SamplingConfig, generate_rollouts, left_pad

RECIPES = "plugins.soft_grpo.recipes"


def _clamp_pair(value: list[float], what: str) -> tuple[float, float] | None:
    if not value:
        return None
    if len(value) != 2 or value[0] >= value[1]:
        raise BadInput(f"{what} must be [] (no clamp) or [low, high] with low < high, got {value}")
    return (float(value[0]), float(value[1]))


# --- tokenizers ------------------------------------------------------------------------------


class HFCountdownTokenizer:
    """A Hugging Face tokenizer behind the :class:`~.countdown.CharTokenizer` interface.

    ``<bos>`` maps to the tokenizer's BOS (dropped when it has none), ``<think>`` to the text
    ``think_start`` (any number of tokens), ``</think>`` to ``think_end`` (must be one token) and
    ``<eos>`` to the tokenizer's EOS. Text between them is encoded without special tokens.
    """

    def __init__(self, path: str, think_start: str = "<think>", think_end: str = "</think>") -> None:
        from .hf_adapter import require_transformers

        tr = require_transformers()
        try:
            self.hf = tr.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise BadInput(f"plugins.countdown.tokenizer: cannot load a tokenizer from {path!r} "
                           f"({str(exc).splitlines()[0][:160]}); pass a local tokenizer directory") from None
        end = self.hf.encode(think_end, add_special_tokens=False)
        if len(end) != 1:
            raise BadInput(f"plugins.countdown.think_end={think_end!r} is {len(end)} tokens for this tokenizer; "
                           f"it must be one token (add it as a special token, or pick another)")
        if self.hf.eos_token_id is None:
            raise BadInput(f"the tokenizer in {path!r} has no eos token; set one in its tokenizer_config.json")
        self.think_end_id = end[0]
        self.eos_id = int(self.hf.eos_token_id)
        self.bos_id = self.hf.bos_token_id
        pad = self.hf.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_id)
        self.think_start_ids = self.hf.encode(think_start, add_special_tokens=False)
        self.vocab_size = len(self.hf)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        specials = {cd.BOS: [] if self.bos_id is None else [int(self.bos_id)], cd.THINK: self.think_start_ids,
                    cd.THINK_END: [self.think_end_id], cd.EOS: [self.eos_id]}
        i = 0
        while i < len(text):
            hit = next((s for s in specials if text.startswith(s, i)), None)
            if hit is not None:
                ids.extend(specials[hit])
                i += len(hit)
                continue
            j = min([k for k in (text.find(s, i) for s in specials) if k >= 0] or [len(text)])
            ids.extend(self.hf.encode(text[i:j], add_special_tokens=False))
            i = j
        return ids

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)


def suppress_ids_for(tok) -> tuple[int, ...]:
    """Ids a sampler must never produce: ``<pad>`` for the char tokenizer, nothing for HF vocabularies."""
    return (tok.pad_id,) if isinstance(tok, cd.CharTokenizer) else ()


# --- data ------------------------------------------------------------------------------------


@attrs.define
class CountdownDataConfig:
    mode: str = field("rl", "rl: prompt batches for rollouts; sft: gold traces as input/target LM batches",
                      validator=one_of("rl", "sft"))
    batch_size: int = field(16, "prompts per rollout batch (rl) or traces per micro-batch (sft)")
    n_numbers: list[int] = field([3, 4], "how many numbers a problem has (drawn uniformly from this list)")
    number_max: int = field(9, "numbers are drawn from 1..number_max")
    target_max: int = field(100, "targets are reachable values in 1..target_max")
    min_solutions: int = field(2, "keep only targets with at least this many distinct solutions")
    ops: str = field("+-*", "operators the solver uses (add / for exact division)")
    test_fraction: float = field(0.1, "fraction of problem keys held out (hash split: never trained on)")
    step_corrupt_rate: float = field(0.0, "sft: probability of corrupting each scratchpad step's result")
    answer_corrupt_rate: float = field(0.0, "sft: probability of replacing the answer by a wrong expression")
    loss_on_prompt: bool = field(False, "sft: also train on the prompt tokens (default: target -100 there)")
    val_problems: int = field(128, "held-out gold traces scored by the engine's val/loss (0: none)")
    heldout_seed: int = field(0, "seed of the held-out problem list (shared by val and passk)")
    max_len: int = field(64, "context length the model must support (data info block_size)")
    tokenizer: str = field("", "empty: the 24-symbol character tokenizer; else a local Hugging Face tokenizer dir")
    think_start: str = field("<think>", "HF tokenizer only: text that opens the scratchpad")
    think_end: str = field("</think>", "HF tokenizer only: the single token that ends thinking")


class CountdownSource:
    """The data object of the ``countdown`` plugin (``info``, ``train_batch``, ``val_batches``, ``heldout``)."""

    def __init__(self, c: CountdownDataConfig) -> None:
        self.config = c
        self.mode = c.mode
        self.tokenizer = (cd.CharTokenizer() if not c.tokenizer
                          else HFCountdownTokenizer(c.tokenizer, c.think_start, c.think_end))
        self.task = cd.CountdownConfig(n_numbers=tuple(c.n_numbers), number_range=(1, c.number_max),
                                       target_range=(1, c.target_max), min_solutions=c.min_solutions, ops=c.ops,
                                       test_fraction=c.test_fraction)
        tok = self.tokenizer
        self.info = {"task": "countdown", "vocab_size": tok.vocab_size, "block_size": c.max_len,
                     "pad_id": tok.pad_id, "think_end_id": tok.think_end_id, "eos_id": tok.eos_id}
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
        examples = [cd.make_sft_example(p, self.tokenizer, rng, c.ops, steps, answers) for p in problems]
        if c.loss_on_prompt:
            for e in examples:
                e.prompt_len = 1
        b = cd.collate_sft(examples, pad_id=self.tokenizer.pad_id, max_len=c.max_len)
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
            self._val = [self._lm_batch(problems[i:i + bs], rng, corrupt=False) for i in range(0, n, bs)]  # clean
        return self._val


def problem_tensors(problems: list[cd.Problem]) -> dict[str, torch.Tensor]:
    """``numbers`` (N, 4) with 0 for "no number" (numbers are >= 1) and ``targets`` (N,)."""
    width = max(4, max(len(p.numbers) for p in problems))
    nums = torch.zeros((len(problems), width), dtype=torch.long)
    for i, p in enumerate(problems):
        nums[i, :len(p.numbers)] = torch.tensor(p.numbers)
    return {"numbers": nums, "targets": torch.tensor([p.target for p in problems], dtype=torch.long)}


def problems_from(batch: dict) -> list[cd.Problem]:
    nums, targets = batch["numbers"].tolist(), batch["targets"].tolist()
    return [cd.Problem(tuple(n for n in row if n > 0), int(t)) for row, t in zip(nums, targets)]


class Countdown(Plugin):
    """Countdown arithmetic task: rollout prompts (rl) or gold scratchpad traces (sft), held-out split."""

    name = "countdown"
    Config = CountdownDataConfig
    provides = ("data", "data:countdown")
    recipes = RECIPES

    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        if c.mode == "rl" and state.provider("rl") is None:
            raise BadInput("plugins.countdown.mode='rl' yields prompts, which need a rollout plugin; "
                           "add grpo or soft_grpo to run.plugins, or set plugins.countdown.mode=\"sft\"")
        if not c.n_numbers or min(c.n_numbers) < 2 or max(c.n_numbers) > 6:
            raise BadInput(f"plugins.countdown.n_numbers={c.n_numbers} must list sizes in 2..6, e.g. [3, 4]")
        if not 0.0 < c.test_fraction < 1.0:
            raise BadInput(f"plugins.countdown.test_fraction={c.test_fraction} must be in (0, 1)")

    @hookimpl
    def hookmix_data(self, state):
        try:
            return CountdownSource(self.config)
        except ValueError as exc:
            raise BadInput(f"plugins.countdown: {exc}") from None


# --- policies --------------------------------------------------------------------------------


def load_init(model: torch.nn.Module, source: str, plugin: str) -> None:
    """Load the model weights of a hookmix run directory (latest checkpoint) or of one ``.pt`` checkpoint."""
    from engine import checkpoint
    from engine.outputs import RunDir

    if source.endswith(".pt"):
        parent, name = source.rsplit("/", 1) if "/" in source else (".", source)
        payload = checkpoint.load(RunDir(parent), name)
    else:
        payload = checkpoint.load_latest(RunDir(source))
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as exc:
        raise BadInput(f"plugins.{plugin}.init_from={source!r} does not match this model "
                       f"({str(exc).splitlines()[0][:160]}); use the same model config as that run") from None


@attrs.define
class TinyPolicyModelConfig:
    d_model: int = field(64, "model width")
    n_layers: int = field(2, "transformer blocks")
    n_heads: int = field(4, "attention heads")
    d_ff: int = field(0, "MLP width (0: 4 * d_model)")
    max_len: int = field(0, "context length (0: the data's block_size)")
    dropout: float = field(0.0, "dropout probability (keep 0 for RL: θ_old is recomputed in eval mode)")
    tie_embeddings: bool = field(False, "share the input embedding with the LM head")
    init_std: float = field(0.02, "initialisation std (GPT-2 style)")
    init_from: str = field("", "start from the weights of this hookmix run directory (latest checkpoint) or .pt file")


class TinyPolicyModel(Plugin):
    """Tiny pre-LN decoder (learned positions, KV cache) that also speaks the soft-policy protocol."""

    name = "tiny_policy"
    Config = TinyPolicyModelConfig
    provides = ("model", "policy")

    @hookimpl
    def hookmix_model(self, state):
        c = self.config
        info = state.data.info
        if "vocab_size" not in info:
            raise BadInput("tiny_policy needs a token data plugin (data info 'vocab_size'); enable countdown")
        if c.d_model % c.n_heads:
            raise BadInput(f"plugins.tiny_policy: d_model={c.d_model} is not divisible by n_heads={c.n_heads}")
        model = TinyPolicy(TinyPolicyConfig(vocab_size=info["vocab_size"], d_model=c.d_model, n_layers=c.n_layers,
                                            n_heads=c.n_heads, d_ff=c.d_ff or None,
                                            max_len=c.max_len or info.get("block_size", 64), dropout=c.dropout,
                                            tie_embeddings=c.tie_embeddings, init_std=c.init_std))
        if c.init_from:
            load_init(model, c.init_from, self.name)
        return model


class HFPolicy(torch.nn.Module):
    """A ``transformers`` causal LM as an engine model: ``forward(ids) -> logits`` plus the soft-policy protocol."""

    def __init__(self, hf_model: torch.nn.Module) -> None:
        super().__init__()
        from .hf_adapter import HFCausalLMAdapter

        self.hf = hf_model
        self._adapter = HFCausalLMAdapter(hf_model)

    @property
    def embedding_matrix(self) -> torch.Tensor:
        return self._adapter.embedding_matrix

    @property
    def vocab_size(self) -> int:
        return self._adapter.vocab_size

    @property
    def max_positions(self) -> int | None:
        return self._adapter.max_positions

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self._adapter.embed(ids)

    def new_cache(self, batch_size: int = 0):
        return self._adapter.new_cache(batch_size)

    def forward_embeds(self, inputs_embeds, attention_mask=None, position_ids=None, kv_cache=None):
        return self._adapter.forward_embeds(inputs_embeds, attention_mask, position_ids, kv_cache)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, use_cache=False).logits


@attrs.define
class HFPolicyModelConfig:
    path: str = field("", "local directory of a Hugging Face causal LM (empty: a random tiny model of `arch`)")
    arch: str = field("llama", "random-init architecture when path is empty", validator=one_of("llama", "gpt2"))
    hidden_size: int = field(64, "random init: width")
    layers: int = field(2, "random init: blocks")
    heads: int = field(4, "random init: attention heads")
    intermediate_size: int = field(0, "random init: MLP width (0: 4 * hidden_size)")
    max_positions: int = field(0, "random init: context (0: the data's block_size)")
    dtype: str = field("float32", "weights dtype (float32 or bfloat16)", validator=one_of("float32", "bfloat16"))
    init_from: str = field("", "start from the weights of this hookmix run directory (latest checkpoint) or .pt file")


class HFPolicyModel(Plugin):
    """A Hugging Face causal LM (local directory, or a random tiny llama/gpt2) as the policy (extra `hf`)."""

    name = "hf_policy"
    Config = HFPolicyModelConfig
    provides = ("model", "policy")

    @hookimpl
    def hookmix_model(self, state):
        from .hf_adapter import require_transformers

        try:
            tr = require_transformers()
        except ImportError as exc:
            raise BadInput(f"hf_policy: {exc}; or install the extra: pip install 'hookmix[hf]'") from None
        c, info = self.config, state.data.info
        dtype = torch.bfloat16 if c.dtype == "bfloat16" else torch.float32
        if c.path:
            try:
                hf = tr.AutoModelForCausalLM.from_pretrained(c.path, local_files_only=True, dtype=dtype)
            except (OSError, ValueError) as exc:
                raise BadInput(f"plugins.hf_policy.path: cannot load a causal LM from {c.path!r} "
                               f"({str(exc).splitlines()[0][:160]}); pass a local model directory") from None
        else:
            inter = c.intermediate_size or 4 * c.hidden_size
            npos = c.max_positions or info.get("block_size", 64)
            if c.arch == "llama":
                cfg = tr.LlamaConfig(vocab_size=info["vocab_size"], hidden_size=c.hidden_size, intermediate_size=inter,
                                     num_hidden_layers=c.layers, num_attention_heads=c.heads,
                                     num_key_value_heads=c.heads, max_position_embeddings=npos,
                                     tie_word_embeddings=False)
                hf = tr.LlamaForCausalLM(cfg)
            else:
                cfg = tr.GPT2Config(vocab_size=info["vocab_size"], n_embd=c.hidden_size, n_layer=c.layers,
                                    n_head=c.heads, n_inner=inter, n_positions=npos)
                hf = tr.GPT2LMHeadModel(cfg)
            hf = hf.to(dtype)
        model = HFPolicy(hf)
        if model.vocab_size < info["vocab_size"]:
            raise BadInput(f"hf_policy: the model's vocabulary ({model.vocab_size}) is smaller than the data's "
                           f"({info['vocab_size']}); set plugins.countdown.tokenizer to the model's directory")
        if c.init_from:
            load_init(model, c.init_from, self.name)
        return model


# --- rewards ---------------------------------------------------------------------------------


@attrs.define
class RewardConfig:
    weight: float = field(1.0, "weight of the reward term")


class CountdownReward(Plugin):
    """Verifiable 0/1 reward: the answer uses the numbers exactly once and hits the target (term `countdown`)."""

    name = "countdown_reward"
    Config = RewardConfig
    requires = ("rl",)

    @hookimpl
    def hookmix_rewards(self, rollouts, state):
        r: Rollout = rollouts["rollout"]
        vals = [cd.answer_reward(p, a, f) for p, a, f in
                zip(problems_from(rollouts), r.answer_text, r.finished.tolist())]
        return {"countdown": self.config.weight * torch.tensor(vals, dtype=torch.float32)}


@attrs.define
class FormatRewardConfig:
    weight: float = field(0.1, "weight of the reward term")


class FormatReward(Plugin):
    """Shaping reward: 1 when the rollout ends with <eos> and its answer parses as an expression (term `format`)."""

    name = "format_reward"
    Config = FormatRewardConfig
    requires = ("rl",)

    @staticmethod
    def _parses(text: str) -> bool:
        try:
            cd.parse_expression(text.strip())
        except (ValueError, RecursionError):
            return False
        return True

    @hookimpl
    def hookmix_rewards(self, rollouts, state):
        r: Rollout = rollouts["rollout"]
        vals = [float(f and self._parses(a)) for a, f in zip(r.answer_text, r.finished.tolist())]
        return {"format": self.config.weight * torch.tensor(vals, dtype=torch.float32)}


# --- GRPO and SofT-GRPO ----------------------------------------------------------------------


@attrs.define
class GRPOConfig:
    group_size: int = field(8, "rollouts per prompt (G)")
    minibatches: int = field(1, "chunks per rollout batch, split by prompt groups and consumed one per micro-batch "
                                "(grad_accum 1: one optimizer step each; the ratio is exactly 1 on the first only)")
    temperature: float = field(1.0, "sampling temperature (also divides the logits in the likelihood)")
    top_k: int = field(5, "top-k filter (for soft thinking also the number of mixed/stored ids)")
    top_p: float = field(0.95, "top-p filter")
    min_p: float = field(0.0, "min-p filter (0: off)")
    think_cap: int = field(24, "thinking tokens before </think> is forced")
    answer_cap: int = field(14, "answer tokens after </think>, <eos> included")
    clip_eps: float = field(0.2, "PPO clip ε (low side)")
    clip_eps_high: float = field(0.0, "PPO clip ε on the high side (0: same as clip_eps)")
    dual_clip: float = field(3.0, "dual-clip constant c > 1 for negative advantages (0: off)")
    kl_coef: float = field(0.001, "β of the k3 KL to the frozen reference (0: no reference model)")
    agg: str = field("token-mean", "token-mean (DAPO / official code) or seq-mean (GRPO 1/|o_i|)",
                     validator=one_of("token-mean", "seq-mean"))
    scale_advantages: bool = field(True, "divide by the group's Bessel std + adv_eps (false: Dr. GRPO)")
    adv_eps: float = field(1e-6, "added to the group std (verl: 1e-6)")
    seed_offset: int = field(2, "the rollout generator is seeded with run.seed + this")


@attrs.define
class SoftGRPOConfig(GRPOConfig):
    tau: float = field(0.1, "Gumbel-Softmax temperature τ of the soft-token weights")
    noise_factor: float = field(1.0, "λ: g' = log(p̄ + 1e-6) + λ·g")
    gumbel_clamp: list[float] = field([-1.5, 3.0], "clamp of the rollout Gumbel noise ([] : none)")
    soft_density: str = field("mean", "mean (official code: masked mean of Gumbel log-densities) or sum (exact)",
                              validator=one_of("mean", "sum"))
    likelihood_clamp: list[float] = field([-1.5, 3.0], "clamp of the recovered noise z in the likelihood ([] : none)")
    mask_logq_min: float = field(-3.0, "mean density: slots with log(q + 1e-6) above this (q > ~0.05)")
    detach_inputs: bool = field(True, "detach the rebuilt mixture inputs (official code)")


def check_context(model, data: CountdownSource, think_cap: int, answer_cap: int, plugin: str) -> None:
    """Fail at setup (not mid-run) when the longest prompt plus the caps exceeds the model's context."""
    c = data.config
    worst = cd.Problem(tuple([c.number_max] * max(c.n_numbers)), c.target_max)
    need = len(data.prompt_ids(worst)) + think_cap + 1 + answer_cap
    limit = getattr(model, "max_positions", None)
    if limit is not None and need > limit:
        raise BadInput(f"the longest prompt + think_cap + 1 + answer_cap = {need} exceeds the model context ({limit}); "
                       f"lower plugins.{plugin}.think_cap/answer_cap or raise the model's max_len")


def _pack_rollout(r: Rollout) -> dict:
    return {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}


def _unpack_rollout(d: dict, device) -> Rollout:
    r = Rollout(**d)
    return r.to(device)


class GRPO(Plugin):
    """GRPO on discretely sampled scratchpads: PPO-clip + dual clip, k3 KL to the frozen start, group advantages."""

    name = "grpo"
    Config = GRPOConfig
    provides = ("rl", "rl:objective")
    requires = ("data:countdown", "policy")
    # the frozen reference is copied in setup_model: after any plugin that projects the initial weights
    after = ("spectral_normalize", "spectral_hammer", "spectral_soft_cap", "spectral_hard_cap")
    recipes = RECIPES
    mode = "discrete"

    # configs of the pure code
    def sampling_config(self, tok) -> SamplingConfig:
        c = self.config
        extra = {}
        if self.mode == "soft":
            extra = dict(tau=c.tau, noise_factor=c.noise_factor,
                         gumbel_clamp=_clamp_pair(c.gumbel_clamp, f"plugins.{self.name}.gumbel_clamp"))
        return SamplingConfig(mode=self.mode, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, min_p=c.min_p,
                              think_cap=c.think_cap, answer_cap=c.answer_cap, suppress_ids=suppress_ids_for(tok),
                              **extra)

    def likelihood_config(self) -> LikelihoodConfig:
        if self.mode != "soft":
            return LikelihoodConfig()
        c = self.config
        return LikelihoodConfig(soft_density=c.soft_density,
                                clamp=_clamp_pair(c.likelihood_clamp, f"plugins.{self.name}.likelihood_clamp"),
                                mask_logq_min=c.mask_logq_min, detach_inputs=c.detach_inputs)

    def objective_config(self) -> ObjectiveConfig:
        c = self.config
        return ObjectiveConfig(clip_eps=c.clip_eps, clip_eps_high=c.clip_eps_high or None,
                               dual_clip_c=c.dual_clip or None, kl_coef=c.kl_coef, agg=c.agg)

    # setup
    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        data = state.provider("data:countdown")
        if data is not None and data.config.mode != "rl":
            raise BadInput(f"{self.name} samples rollouts from prompts; set plugins.countdown.mode=\"rl\"")
        if c.group_size < 2:
            raise BadInput(f"plugins.{self.name}.group_size={c.group_size}: group advantages need G >= 2")
        if c.minibatches < 1 or (data is not None and data.config.batch_size % c.minibatches):
            raise BadInput(f"plugins.{self.name}.minibatches={c.minibatches} must divide plugins.countdown.batch_size")
        if c.dual_clip and c.dual_clip <= 1.0:
            raise BadInput(f"plugins.{self.name}.dual_clip={c.dual_clip} must be > 1 (or 0 to disable)")
        try:
            self.sampling_config(cd.CharTokenizer())
            self.likelihood_config()
        except ValueError as exc:
            raise BadInput(f"plugins.{self.name}: {exc}") from None

    @hookimpl
    def hookmix_setup_model(self, model, state):
        # the frozen reference: a copy of the starting policy (after init_from), never optimized
        self.ref = None
        if self.config.kl_coef > 0:
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
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
        ids, mask = batch["prompt_ids"].cpu(), batch["prompt_mask"].cpu()
        prompts = [row[m].tolist() for row, m in zip(ids, mask)]
        G = c.group_size
        with state.autocast():
            r = generate_rollouts(model, [p for p in prompts for _ in range(G)], self.sampling,
                                  think_end_id=tok.think_end_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                  generator=self.generator, decode=tok.decode, likelihood=self.likelihood)
        problems = {k: batch[k].cpu().repeat_interleave(G, 0) for k in ("numbers", "targets")}
        per = len(prompts) // c.minibatches * G
        chunks = []
        for i in range(c.minibatches):
            rows = list(range(i * per, (i + 1) * per))
            sub = r.select(rows) if c.minibatches > 1 else r
            with state.autocast():  # θ_old and the reference, teacher-forced exactly as the training forward
                old = sequence_logprobs(model, sub, self.likelihood).float()
                ref = sequence_logprobs(self.ref, sub, self.likelihood).float() if self.ref is not None else None
            chunks.append({"rollout": sub, "numbers": problems["numbers"][rows], "targets": problems["targets"][rows],
                           "old_logp": old, "ref_logp": ref, "group_size": G})
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
        return dict(chunk)

    @hookimpl
    def hookmix_advantages(self, rollouts, rewards, state):
        G = rollouts["group_size"]
        r = rewards.detach().float().cpu()
        adv = group_advantages(r, group_size=G, eps=self.config.adv_eps, scale=self.config.scale_advantages)
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
        pg_cfg = dataclasses.replace(self.objective, kl_coef=0.0)
        pg, stats = policy_loss(logp, batch["old_logp"].to(logp.device), adv, mask, pg_cfg)
        terms = {"pg": pg}
        for key in ("clip_frac", "dual_clip_frac", "ratio_mean", "ratio_max", "ratio_min", "ppo_kl"):
            state.log(f"train/rl/{key}", stats[key])
        if self.ref is not None:
            kl = aggregate(k3_kl(logp, batch["ref_logp"].to(logp.device)), mask, self.objective.agg)
            state.log("train/rl/kl", kl.detach())
            terms["kl"] = self.objective.kl_coef * kl
        return terms

    # checkpoint state: the rollout generator and any rollouts not yet trained on
    @hookimpl
    def hookmix_plugin_state(self, state):
        return {"generator": self.generator.get_state(),
                "buffer": [{**{k: v for k, v in ch.items() if k != "rollout"}, "rollout": _pack_rollout(ch["rollout"])}
                           for ch in self.buffer]}

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
        if c.tau <= 0 or c.noise_factor <= 0:
            raise BadInput(f"plugins.soft_grpo: tau={c.tau} and noise_factor={c.noise_factor} must be > 0 "
                           f"(the Gumbel likelihood needs noise)")
        if c.top_k < 1 or c.top_k > 20:
            raise BadInput(f"plugins.soft_grpo.top_k={c.top_k} must be in 1..20 (the likelihood mask must be non-empty)")


# --- evaluation: pass@k under discrete and soft decoding -------------------------------------


@attrs.define
class PassKConfig:
    problems: int = field(64, "held-out problems evaluated")
    samples: int = field(32, "samples per problem (n of the unbiased estimator)")
    ks: list[int] = field([1, 4, 16, 32], "k values reported (k <= samples)")
    modes: list[str] = field(["discrete", "soft"], "decodings: discrete sampling and/or soft thinking + Gumbel")
    taus: list[float] = field([0.1], "Gumbel-Softmax temperatures of the soft decoding (one metric set each)")
    temperature: float = field(1.0, "sampling temperature")
    top_k: int = field(5, "top-k filter (= soft mixture size)")
    top_p: float = field(0.95, "top-p filter")
    think_cap: int = field(24, "thinking tokens before </think> is forced")
    answer_cap: int = field(14, "answer tokens, <eos> included")
    seed: int = field(1234, "seed of the evaluation noise (fixed: every model sees the same stream)")
    chunk: int = field(2048, "rows per generation call")
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
        cfg = SamplingConfig(mode="discrete" if tau is None else "soft", temperature=c.temperature, top_k=c.top_k,
                             top_p=c.top_p, think_cap=c.think_cap, answer_cap=c.answer_cap,
                             tau=tau if tau is not None else 0.1, suppress_ids=suppress_ids_for(tok))
        gen = torch.Generator(device=device).manual_seed(c.seed + 7919 * idx)
        correct = torch.zeros(len(problems), c.samples, dtype=torch.bool)
        sums = {"think": 0.0, "finished": 0.0, "top1": 0.0, "top1_99": 0.0, "soft": 0.0}
        seen = [0] * len(problems)
        for start in range(0, len(rows), c.chunk):
            part = rows[start:start + c.chunk]
            with autocast() if autocast is not None else torch.autocast("cpu", enabled=False):
                r = generate_rollouts(model, [p for _, p in part], cfg, think_end_id=tok.think_end_id,
                                      eos_id=tok.eos_id, pad_id=tok.pad_id, generator=gen, decode=tok.decode)
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
    requires = ("data:countdown",)
    recipes = RECIPES

    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        bad = [m for m in c.modes if m not in ("discrete", "soft")]
        if bad or not c.modes:
            raise BadInput(f"plugins.passk.modes={c.modes}: use a non-empty subset of [\"discrete\", \"soft\"]")
        if c.problems < 1 or c.samples < 1 or not c.ks or max(c.ks) > c.samples or min(c.ks) < 1:
            raise BadInput(f"plugins.passk: need problems, samples >= 1 and 1 <= k <= samples "
                           f"(samples={c.samples}, ks={c.ks})")
        if "soft" in c.modes and (not c.taus or min(c.taus) <= 0):
            raise BadInput(f"plugins.passk.taus={c.taus} must be non-empty and > 0 for soft decoding")

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

    @hookimpl
    def hookmix_commands(self):
        from .compare import bench_command, compare_command

        return {"countdown-compare": compare_command(), "bench-rollouts": bench_command()}


__all__ = ["Countdown", "CountdownReward", "FormatReward", "GRPO", "HFPolicyModel", "PassK", "SoftGRPO",
           "TinyPolicyModel", "evaluate_passk"]
