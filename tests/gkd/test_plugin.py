"""The ``gkd`` plugin through the engine: its term is the JSD of the trained tokens, the three sources of
sequences, logit_std, the normaliser under accumulation, config refusals, resume."""

from __future__ import annotations

import pytest
import torch
from conftest import STUDENT, TASK  # this folder is on sys.path (conftest.py)
from gkd_test_plugins import Capture

import engine
from engine import BadInput
from engine.testing import assert_resumes_exactly, train
from plugins.countdown import task as cd
from plugins.countdown.data_plugin import CountdownDataConfig, CountdownSource
from plugins.gkd.losses import generalized_jsd, generalized_jsd_loss
from plugins.logit_std.transform import standardize_logits
from plugins.soft_grpo.sampling import SamplingConfig, generate_rollouts

PLUGINS = ["countdown", "tiny_policy", "teacher", "gkd", "countdown_reward", "adamw"]


def config(teacher_run, **gkd):
    return {
        "countdown": {**TASK, "mode": "rl", "batch_size": 8},
        "tiny_policy": STUDENT,
        "teacher": {"run": teacher_run},
        "gkd": {"think_cap": 8, "answer_cap": 8, **gkd},
        "adamw": {"lr": 3e-3},
    }


def logged(result, key="train/loss/gkd"):
    return [m[key] for m in result.metrics if key in m]


def test_the_term_is_the_jsd_over_the_response_tokens(teacher_run):
    res = train([*PLUGINS, Capture], config(teacher_run, lmbda=0.5, beta=0.3), steps=6, threads=1, log_interval=1)
    seen = res.plugins["capture"].seen
    assert len(seen) == 6
    for rec, value in zip(seen, logged(res)):
        # the prompt and the right padding are -100: only response tokens count
        want = generalized_jsd_loss(rec["logits"], rec["teacher_logits"], rec["target"], beta=0.3).item()
        # float32 forward in the run, float64 here from the same logits: 1e-5 relative covers float32 sums of ~100 terms
        assert value == pytest.approx(want, rel=1e-5)
    on = logged(res, "gkd/on_policy")
    assert set(on) == {0.0, 1.0}  # lmbda 0.5 over 6 batches: both sources (the coin of this seed)


def test_logit_std_standardises_what_gkd_sees(teacher_run):
    res = train([*PLUGINS, "logit_std", Capture], config(teacher_run, beta=0.5), steps=2, threads=1, log_interval=1)
    for rec, value in zip(res.plugins["capture"].seen, logged(res)):
        keep = rec["target"] >= 0
        s = standardize_logits(rec["logits"][keep])
        t = standardize_logits(rec["teacher_logits"][keep])
        want = generalized_jsd(s, t, 0.5).mean().item()
        raw = generalized_jsd_loss(rec["logits"], rec["teacher_logits"], rec["target"], beta=0.5).item()
        assert value == pytest.approx(want, rel=1e-5)  # float32 run vs float64 reference, as above
        assert value != pytest.approx(raw, rel=1e-2)  # and it is not the raw logits' JSD
    assert "logit_std/std_student" in res.metrics[0] and "logit_std/std_teacher" in res.metrics[0]


def _greedy(policy, prompts, tok, caps=(8, 8)):
    cfg = SamplingConfig(mode="discrete", top_k=1, think_cap=caps[0], answer_cap=caps[1], suppress_ids=(tok.pad_id,))
    r = generate_rollouts(policy.eval(), prompts, cfg, think_end_id=tok.think_end_id, eos_id=tok.eos_id)
    ids, att, resp = r.input_ids, r.attention_mask, r.response_mask
    P = r.prompt_length
    return [row[:P][m[:P]].tolist() + row[g].tolist() for row, m, g in zip(ids, att, resp)]


def _rows(rec) -> list[list[int]]:
    """The trained sequences back from the LM batch: input tokens up to the last response target, plus it."""
    out = []
    for inp, tgt in zip(rec["input"], rec["target"]):
        last = int((tgt >= 0).nonzero().max())
        out.append(inp[: last + 1].tolist() + [int(tgt[last])])
    return out


def _prompts(rec, data):
    nums, targets = rec["problems"]
    problems = [cd.Problem(tuple(n for n in row if n > 0), int(t)) for row, t in zip(nums.tolist(), targets.tolist())]
    return problems, [data.prompt_ids(p) for p in problems]


@pytest.mark.parametrize("source", ["student", "teacher", "data"])
def test_each_source_gives_its_own_sequences(teacher_run, source):
    """lmbda 1: the student's own samples; seq_kd: the teacher's; lmbda 0: the data set's gold traces. With top_k 1
    sampling is greedy, so the sequences are checked token for token against the model that sampled them."""
    gkd = {"lmbda": 1.0 if source == "student" else 0.0, "seq_kd": source == "teacher", "top_k": 1}
    res = train([*PLUGINS, Capture], config(teacher_run, **gkd), steps=2, threads=1, log_interval=1)
    rec = res.plugins["capture"].seen[0]
    data = CountdownSource(CountdownDataConfig(**{**TASK, "mode": "rl"}))
    problems, prompts = _prompts(rec, data)
    rows = _rows(rec)
    assert [row[: len(p)] for row, p in zip(rows, prompts)] == prompts  # prompts left-aligned, unpadded
    assert bool((rec["target"][:, : min(map(len, prompts)) - 1] == -100).all())  # no loss on the prompt
    assert logged(res, "gkd/on_policy") == [float(source == "student")] * 2
    if source == "data":
        for problem, row in zip(problems, rows):
            text = data.tokenizer.decode(row)  # a gold trace: its answer solves the problem, it ends with <eos>
            assert cd.reward(problem, text.split("<think>", 1)[1]) == 1.0 and row[-1] == data.tokenizer.eos_id
        assert bool((rec["reward"] == 1).all())  # and the reward plugin read the same answers from the record
    else:
        model = rec["student"] if source == "student" else rec["teacher"]
        assert rows == _greedy(model, prompts, data.tokenizer)


def test_the_normaliser_is_the_steps_token_count_under_accumulation(teacher_run):
    """grad_accum 2: each micro-batch's term is its JSD sum over (the step's tokens / 2), so the step's loss is the
    batchmean over both micro-batches' tokens together, not the mean of two batchmeans."""
    res = train([*PLUGINS, Capture], config(teacher_run, lmbda=0.5), steps=3, threads=1, log_interval=1, grad_accum=2)
    seen = res.plugins["capture"].seen
    for step, value in enumerate(logged(res), start=1):
        micro = [r for r in seen if r["step"] == step]
        assert len(micro) == 2
        sums = [generalized_jsd_loss(r["logits"], r["teacher_logits"], r["target"], reduction="sum") for r in micro]
        counts = [int((r["target"] >= 0).sum()) for r in micro]
        assert counts[0] != counts[1]  # otherwise both normalisers agree and the test proves nothing
        assert value == pytest.approx(float(sum(sums)) / sum(counts), rel=1e-5)  # float32 run, as above
        mean_of_means = sum(float(s) / n for s, n in zip(sums, counts)) / 2
        assert value != pytest.approx(mean_of_means, rel=1e-4)


def test_a_short_run_lowers_the_divergence(teacher_run):
    res = train(PLUGINS, config(teacher_run, lmbda=0.0, beta=0.5), steps=12, threads=1, log_interval=1)
    values = logged(res)
    assert sum(values[-3:]) / 3 < 0.8 * sum(values[:3]) / 3


def test_resumes_bit_exactly(teacher_run):
    # the coin and the sampling seeds come from the plugin's generator, saved in its checkpoint state
    assert_resumes_exactly(PLUGINS, config(teacher_run, lmbda=0.5), steps=4, split=2, threads=1)
    assert_resumes_exactly(PLUGINS, config(teacher_run, lmbda=0.5, seq_kd=True), steps=3, split=1, threads=1)


@pytest.mark.parametrize(
    "override, key",
    [
        ("plugins.gkd.beta=1.5", "beta"),
        ("plugins.gkd.beta=-0.1", "beta"),
        ("plugins.gkd.beta=nan", "beta"),
        ("plugins.gkd.lmbda=1.01", "lmbda"),
        ("plugins.gkd.lmbda=-1", "lmbda"),
        ("plugins.gkd.loss_temperature=0", "loss_temperature"),
        ('plugins.gkd.teachers=["student"]', "teachers"),
    ],
)
def test_bad_config_values_are_one_line_bad_input(override, key):
    with pytest.raises(BadInput) as exc:
        engine.load_recipe("countdown-gkd", override)
    message = str(exc.value)
    assert "\n" not in message and "plugins.gkd" in message and key in message


@pytest.mark.parametrize(
    "change, words",
    [
        ({"countdown": {"mode": "sft"}}, 'countdown.mode="rl"'),
        ({"gkd": {"sample_chunks": 3}}, "sample_chunks=3"),
        ({"countdown": {"val_problems": 0}}, "val_problems"),
        ({"gkd": {"teachers": ["teacher@big"]}}, "teacher@big"),
    ],
)
def test_configure_refuses_what_cannot_work(teacher_run, change, words):
    cfg = config(teacher_run)
    for plugin, table in change.items():
        cfg[plugin] = {**cfg[plugin], **table}
    with pytest.raises(BadInput) as exc:
        train(PLUGINS, cfg, steps=1, threads=1)
    assert "\n" not in str(exc.value) and words in str(exc.value)


def test_the_shipped_recipes_resolve():
    on, off = engine.load_recipe("countdown-gkd"), engine.load_recipe("countdown-gkd-offpolicy")
    assert on.plugin_configs["gkd"].lmbda == 1.0 and off.plugin_configs["gkd"].lmbda == 0.0
    assert on.to_dict()["plugins"]["adamw"] == off.to_dict()["plugins"]["adamw"]
    teacher = engine.load_recipe("countdown-sft-teacher").plugin_configs["tiny_policy"]
    student = on.plugin_configs["tiny_policy"]
    assert teacher.d_model * teacher.n_layers > student.d_model * student.n_layers


def test_teacher_accuracy_scores_only_the_positions_a_loss_is_taken_on(teacher_run):
    # Countdown traces mark prompt and padding positions -100: an accuracy over every position undercounts
    res = train(
        ["countdown", "tiny_policy", "adamw", "cross_entropy", "teacher"],
        config={
            "countdown": {**TASK, "mode": "sft", "batch_size": 8},
            "tiny_policy": STUDENT,
            "teacher": {"run": teacher_run},
        },
        steps=1,
        threads=1,
    )
    teacher = res.plugins["teacher"].model  # the frozen teacher the plugin scored with
    right = scored = 0
    for batch in res.state.data.val_batches():
        target = batch["target"].reshape(-1)
        with torch.no_grad():
            pred = teacher(batch["input"]).reshape(target.shape[0], -1).argmax(-1)
        keep = target != -100
        assert not bool(keep.all())  # the check means something: some positions are ignored
        right += int((keep & (pred == target)).sum())
        scored += int(keep.sum())
    logged = [m["teacher/val_accuracy"] for m in res.metrics if "teacher/val_accuracy" in m]
    assert logged and logged[-1] == pytest.approx(right / scored, abs=1e-12)
