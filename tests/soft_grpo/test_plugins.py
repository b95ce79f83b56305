"""The SofT-GRPO plugins through the engine: SFT -> GRPO / SofT-GRPO, pass@k eval, conflicts, mixing, resume, HF."""

import importlib.util
import json
import os
import sys

import pytest
import torch

torch.set_num_threads(1)

from engine import BadInput, Plugin, PluginConflict, hookimpl  # noqa: E402
from engine.rundir.directory import RunDir  # noqa: E402
from engine.testing import assert_resumes_exactly, train  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HAS_HF = importlib.util.find_spec("transformers") is not None

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2}
PASSK = {"problems": 4, "samples": 4, "ks": [1, 4], "taus": [0.1], "chunk": 64}
RL_DATA = {"mode": "rl", "batch_size": 4, "val_problems": 0}
CAPS = {"group_size": 4, "think_cap": 8, "answer_cap": 8}
RL = ["countdown", "tiny_policy", "countdown_reward", "format_reward", "adamw"]


class ThinkLengthReward(Plugin):
    """Test reward with spread inside every group (tiny untrained policies rarely solve anything)."""

    name = "think_length_reward"

    @hookimpl
    def hookmix_rewards(self, rollouts, state):
        return {"think_length": 0.1 * rollouts["rollout"].think_lengths.float()}


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sft") / "run")
    res = train(
        ["countdown", "tiny_policy", "adamw", "cross_entropy", "passk"],
        config={
            "countdown": {"mode": "sft", "batch_size": 16, "val_problems": 16, "step_corrupt_rate": 0.1},
            "tiny_policy": TINY,
            "adamw": {"lr": 3e-3},
            "passk": PASSK,
        },
        steps=12,
        out=out,
        threads=1,
        log_interval=4,
    )
    last = res.metrics[-1]
    assert {"val/loss", "passk/discrete/pass@1", "passk/soft_t0.1/pass@4", "passk/soft_t0.1/top1_weight"} <= set(last)
    assert 0.0 <= last["passk/discrete/pass@4"] <= 1.0
    saved = json.loads(RunDir(out).read_text("passk/step-00000012.json"))
    assert len(saved["discrete"]) == 4 and all(len(row) == 4 for row in saved["discrete"])
    return out


@pytest.mark.parametrize("arm", ["grpo", "soft_grpo"])
def test_rl_arm_from_sft_checkpoint(sft_dir, arm):
    cfg = {
        "countdown": RL_DATA,
        "tiny_policy": {**TINY, "init_from": sft_dir},
        arm: CAPS,
        "adamw": {"lr": 1e-3, "schedule": "constant"},
        "passk": PASSK,
    }
    res = train([*RL, ThinkLengthReward, arm, "passk"], config=cfg, steps=2, threads=1)
    train_recs = [m for m in res.metrics if "train/loss/pg" in m]
    assert len(train_recs) == 2 and {"train/loss/kl", "train/reward/countdown", "train/reward/format"} <= set(
        train_recs[0]
    )
    first = train_recs[0]
    # θ_old is recomputed teacher-forced right after the rollout: the ratio is exactly 1
    assert first["train/rl/ratio_max"] == 1.0 and first["train/rl/ratio_min"] == 1.0
    assert first["train/rl/clip_frac"] == 0.0
    assert first["train/rl/kl"] == 0.0  # the policy starts at the reference
    assert ("train/rl/top1_weight" in first) == (arm == "soft_grpo")
    evals = [m for m in res.metrics if "passk/discrete/pass@1" in m]
    assert evals and "passk/soft_t0.1/pass@4" in evals[-1]
    # the reference is the starting policy, frozen and outside the optimizer
    plugin = res.plugins[arm]
    ref_params = {id(p) for p in plugin.ref.parameters()}
    assert all(not p.requires_grad for p in plugin.ref.parameters())
    assert not ref_params & {id(p) for g in res.state.optimizer.param_groups for p in g["params"]}
    start = torch.load(os.path.join(sft_dir, "checkpoints", "step-00000012.pt"), weights_only=True)["model"]
    assert all(torch.equal(v, start[k]) for k, v in plugin.ref.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in res.model.state_dict().items())


def test_grpo_and_soft_grpo_together_is_an_error_naming_both():
    with pytest.raises(PluginConflict) as exc:
        train([*RL, "grpo", "soft_grpo"], config={"countdown": RL_DATA, "tiny_policy": TINY}, steps=1)
    assert "'grpo'" in str(exc.value) and "'soft_grpo'" in str(exc.value)


def test_mode_mismatch_is_bad_input():
    with pytest.raises(BadInput, match="mode"):
        train([*RL, "grpo"], config={"countdown": {"mode": "sft"}, "tiny_policy": TINY}, steps=1)
    with pytest.raises(BadInput, match="rollout plugin"):
        train(["countdown", "tiny_policy", "adamw", "cross_entropy"], config={"countdown": RL_DATA}, steps=1)


def test_soft_grpo_mixes_with_ema():
    sys.path.insert(0, os.path.join(ROOT, "contrib", "hookmix-ema"))
    from hookmix_ema import EMA

    cfg = {
        "countdown": RL_DATA,
        "tiny_policy": TINY,
        "soft_grpo": CAPS,
        "ema": {"decay": 0.5},
        "adamw": {"lr": 1e-3},
        "passk": {**PASSK, "modes": ["soft"]},
    }
    res = train([*RL, ThinkLengthReward, "soft_grpo", EMA, "passk"], config=cfg, steps=2, threads=1)
    last = res.metrics[-1]
    assert last["ema/decay"] == 0.5 and "passk/soft_t0.1/pass@1" in last and "passk/discrete/pass@1" not in last
    ema = res.plugins["ema"]
    assert any(not torch.equal(ema.shadow[k], v) for k, v in res.model.state_dict().items())


def test_soft_grpo_resumes_bit_exactly_with_a_rollout_buffer():
    # two optimizer steps per rollout batch: the checkpoint at step 1 holds the unused half of the rollouts
    cfg = {
        "countdown": RL_DATA,
        "tiny_policy": TINY,
        "soft_grpo": {**CAPS, "minibatches": 2},
        "adamw": {"lr": 1e-3},
        "passk": {**PASSK, "problems": 2},
    }
    assert_resumes_exactly([*RL, ThinkLengthReward, "soft_grpo", "passk"], config=cfg, steps=3, split=1, threads=1)


def test_second_minibatch_is_off_policy():
    cfg = {
        "countdown": RL_DATA,
        "tiny_policy": TINY,
        "grpo": {**CAPS, "minibatches": 2, "kl_coef": 0.0},
        "adamw": {"lr": 1e-2},
    }
    res = train([*RL, ThinkLengthReward, "grpo"], config=cfg, steps=2, threads=1, log_interval=1)
    recs = [m for m in res.metrics if "train/rl/ratio_max" in m]
    assert recs[0]["train/rl/ratio_max"] == 1.0 and recs[1]["train/rl/ratio_max"] != 1.0
    assert "train/loss/kl" not in recs[0] and res.plugins["grpo"].ref is None


@pytest.mark.skipif(not HAS_HF, reason="transformers not installed")
def test_hf_policy_soft_grpo_with_hf_tokenizer(tmp_path):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<think>", "</think>", "<eos>"]
    vocab = {s: i for i, s in enumerate(specials + list("0123456789+-*/()=: "))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        additional_special_tokens=["<think>", "</think>"],
    ).save_pretrained(str(tmp_path))
    cfg = {
        "countdown": {**RL_DATA, "tokenizer": str(tmp_path)},
        "hf_policy": {"arch": "llama", "hidden_size": 32, "layers": 1, "heads": 2},
        "soft_grpo": CAPS,
        "adamw": {"lr": 1e-3},
        "passk": {**PASSK, "problems": 2},
    }
    res = train(
        ["countdown", "hf_policy", "countdown_reward", "soft_grpo", "adamw", "passk"], config=cfg, steps=2, threads=1
    )
    first = [m for m in res.metrics if "train/loss/pg" in m][0]
    assert first["train/rl/ratio_max"] == 1.0 and first["train/rl/top1_weight"] > 0
    assert "passk/soft_t0.1/pass@1" in res.metrics[-1]


def test_bench_rollouts_runs_both_modes_to_the_same_length():
    from plugins.soft_grpo.bench_rollouts import bench_rollouts

    r = bench_rollouts(rows=8, d_model=16, n_layers=1, n_heads=2, think_cap=4, answer_cap=3, repeats=1)
    assert r["soft"]["tokens"] == r["discrete"]["tokens"] == 8 * 8
    assert r["ratio"] > 0


def test_countdown_compare_command_writes_the_table(tmp_path):
    from engine.cli.main import main

    shrink = ["plugins.tiny_policy.d_model=32", "plugins.tiny_policy.n_layers=1", "plugins.tiny_policy.n_heads=2"]
    rl = [
        *shrink,
        "run.steps=1",
        "plugins.countdown.batch_size=2",
        "plugins.grpo.group_size=2",
        "plugins.soft_grpo.group_size=2",
    ]
    doc = str(tmp_path / "report.md")
    args = [
        "countdown-compare",
        "--out",
        str(tmp_path / "runs"),
        "--seeds",
        "0",
        "--taus",
        "0.1",
        "--problems",
        "2",
        "--samples",
        "4",
        "--doc",
        doc,
        "--sft-set",
        "run.steps=2",
        "--sft-set",
        "plugins.countdown.batch_size=4",
    ]
    for s in shrink:
        args += ["--sft-set", s]
    for s in rl:
        args += ["--set", s]
    assert main(args) == 0
    text = open(doc).read()
    assert "| θ0 (SFT) | discrete |" in text and "| GRPO | discrete |" in text and "SofT-GRPO τ 0.1" in text
    assert "## Gaps between the arms" in text and "pass@4" in text and "## Does the paper's pattern reproduce?" in text


def _with_old_logp(base):
    """``base`` computing θ_old with its own forward even on-policy (the code before the forward was skipped)."""
    from plugins.soft_grpo.likelihood import sequence_logprobs

    class WithOld(base):
        name = f"old_{base.name}"

        def _sample(self, model, batch, state):
            chunks = super()._sample(model, batch, state)
            for chunk in chunks:
                chunk["old_logp"] = sequence_logprobs(model, chunk["rollout"], self.likelihood).float()
            return chunks

    return WithOld


@pytest.mark.parametrize("arm", ["grpo", "soft_grpo"])
def test_on_policy_batches_skip_the_old_forward_and_train_bit_identically(arm):
    from plugins.soft_grpo.rl_plugins import GRPO, SoftGRPO

    base = {"grpo": GRPO, "soft_grpo": SoftGRPO}[arm]
    weights = []
    for plugin in (base, _with_old_logp(base)):
        cfg = {"countdown": RL_DATA, "tiny_policy": TINY, plugin.name: CAPS, "adamw": {"lr": 1e-2}}
        weights.append(train([*RL, ThinkLengthReward, plugin], config=cfg, steps=3, threads=1).model.state_dict())
    # θ_old = θ on-policy: the detached log-likelihood is what the extra forward computed, bit for bit
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_discrete_arm_trains_the_input_embeddings_and_the_soft_arm_keeps_them_detached():
    moved = {}
    for arm in ("grpo", "soft_grpo"):
        cfg = {"countdown": RL_DATA, "tiny_policy": TINY, arm: {**CAPS, "kl_coef": 0.0}, "adamw": {"lr": 1e-2}}
        res = train([*RL, ThinkLengthReward, arm], config=cfg, steps=1, threads=1)
        start = train([*RL, ThinkLengthReward, arm], config={**cfg, "adamw": {"lr": 1e-12}}, steps=1, threads=1)
        moved[arm] = (res.model.tok_emb.weight - start.model.tok_emb.weight).abs().max().item()
    # discrete tokens are embedding lookups (TRL, verl); the soft arm rebuilds its inputs detached (official code)
    assert moved["grpo"] > 1e-4 and moved["soft_grpo"] < 1e-9
