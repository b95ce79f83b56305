"""Countdown task: tokenizer, solver, safe verifier, generation, split, gold traces."""

import os
import random
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from plugins.countdown import sft_traces as sft  # noqa: E402
from plugins.countdown import task as cd  # noqa: E402


def test_tokenizer_layout_and_round_trip():
    tok = cd.CharTokenizer()
    assert tok.pad_id == 0 and tok.itos[0] == "<pad>"
    assert 20 <= tok.vocab_size <= 30
    text = "<bos>3 4 5:17<think>3*4=12 12+5=17</think>3*4+5<eos>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.think_end_id in ids
    assert tok.decode(ids, skip_special=True) == "3 4 5:173*4=12 12+5=173*4+5"
    with pytest.raises(ValueError):
        tok.encode("3^4")
    with pytest.raises(ValueError):
        tok.encode("<foo>")


def test_verifier_accepts_every_solver_solution():
    problems = cd.generate_problems(60, seed=3, split="all")
    for p in problems:
        sols = cd.solve(p.numbers, p.target)
        assert len(sols) >= 2  # default min_solutions
        assert len({s.expr for s in sols}) == len(sols)
        for s in sols:
            assert cd.verify(p, s.expr), (p, s)
            assert cd.reward(p, f"{cd.prompt_text(p)}{s.scratchpad()}</think>{s.expr}<eos>") == 1.0
            # the scratchpad is a correct chain ending at the target
            assert s.steps[-1][3] == p.target
            for a, op, b, r in s.steps:
                assert {"+": a + b, "-": a - b, "*": a * b}[op] == r


def test_solver_small_case_is_complete():
    sols = {s.expr for s in cd.solve((1, 2, 3), 6)}
    # 1+2+3 and 1*2*3 are the two canonical-distinct solutions with positive intermediates
    assert any(cd.verify(cd.Problem((1, 2, 3), 6), e) for e in sols)
    assert len(sols) >= 2
    values = {cd.parse_expression(e)[0] for e in sols}
    assert values == {6}


@pytest.mark.parametrize(
    "expr",
    [
        "3*4+6",  # wrong target (18)
        "3*4",  # missing a number
        "3*4+5+5",  # reuses a number
        "3*4+5)",
        "(3*4+5",
        "3 * 4 + 5",  # spaces are not part of the answer grammar
        "-3+4*5",  # unary minus
        "03*4+5",  # leading zero
        "3*4+5/0",
        "__import__('os').system('true')",
        "3**4",
        "1e3",
        "",
        "(" * 40 + "3" + ")" * 40,
        "3*4+5" + "+0" * 40,
        "3*4+５",  # non-ASCII digit
    ],
)
def test_verifier_rejects_wrong_or_unsafe(expr):
    p = cd.Problem((3, 4, 5), 17)
    assert cd.verify(p, "3*4+5")
    assert not cd.verify(p, expr)
    assert cd.reward(p, expr) == 0.0


def test_reward_extracts_answer_and_respects_finish():
    p = cd.Problem((3, 4, 5), 17)
    assert cd.reward(p, "3*4=12 12+5=17</think>5+3*4<eos>") == 1.0
    assert cd.reward(p, "3*4+5") == 1.0
    assert cd.reward(p, "3*4+5", finished=False) == 0.0
    assert cd.reward(p, "</think>3*4+5 junk") == 0.0
    assert cd.reward(p, "</think>3*<bos>4+5<eos>") == 0.0
    assert cd.reward(p, "x</think>y</think>3*4+5<eos>") == 0.0
    assert cd.answer_reward(p, "3*4+5") == 1.0
    assert cd.answer_reward(p, "x</think>3*4+5") == 0.0
    assert cd.answer_reward(p, "3*4+5", finished=False) == 0.0


def test_generation_deterministic_and_split_disjoint():
    a = cd.generate_problems(300, seed=7, split="train")
    b = cd.generate_problems(300, seed=7, split="train")
    assert a == b
    assert a != cd.generate_problems(300, seed=8, split="train")
    test = cd.generate_problems(200, seed=7, split="test", unique=True)
    assert len({p.key for p in test}) == 200
    assert {p.key for p in a}.isdisjoint({p.key for p in test})
    for p in a[:50] + test[:50]:
        assert 3 <= len(p.numbers) <= 4 and all(1 <= x <= 9 for x in p.numbers)
        assert len(cd.solve(p.numbers, p.target)) >= 2
        assert cd.problem_split(p) == ("train" if p in a else "test")


def test_gold_traces_fit_context_and_corruption():
    tok = cd.CharTokenizer()
    problems = cd.generate_problems(300, seed=11)
    rng = random.Random(0)
    longest = 0
    for p in problems:
        text = sft.gold_trace(p, rng)
        assert text.startswith(cd.prompt_text(p)) and text.endswith("<eos>")
        assert cd.reward(p, text) == 1.0
        longest = max(longest, len(tok.encode(text)))
    assert longest <= 64
    # deterministic given the rng seed
    t1 = [sft.gold_trace(p, random.Random(5)) for p in problems[:20]]
    t2 = [sft.gold_trace(p, random.Random(5)) for p in problems[:20]]
    assert t1 == t2
    # corruption: scratchpads change, answers stay correct unless answer corruption is on
    rng = random.Random(1)
    corrupted = [sft.gold_trace(p, rng, step_corrupt_rate=1.0) for p in problems[:30]]
    assert all(cd.reward(p, t) == 1.0 for p, t in zip(problems, corrupted))
    bad = 0
    for t in corrupted:
        for step in t.split("<think>")[1].split("</think>")[0].split(" "):
            lhs, rhs = step.split("=")
            bad += cd.parse_expression(lhs)[0] != int(rhs)
    assert bad > 0
    rng = random.Random(2)
    wrong = [sft.gold_trace(p, rng, answer_corrupt_rate=1.0) for p in problems[:30]]
    assert all(cd.reward(p, t) == 0.0 for p, t in zip(problems, wrong))


def test_sft_collate():
    tok = cd.CharTokenizer()
    rng = random.Random(0)
    exs = [sft.make_sft_example(p, tok, rng) for p in cd.generate_problems(4, seed=0)]
    batch = sft.collate_sft(exs)
    ids, labels, att = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for i, e in enumerate(exs):
        assert ids[i, : len(e.ids)].tolist() == e.ids
        assert (labels[i, : e.prompt_len] == -100).all()
        assert labels[i, e.prompt_len : len(e.ids)].tolist() == e.ids[e.prompt_len :]
        assert (labels[i, len(e.ids) :] == -100).all() and att[i].sum() == len(e.ids)
        assert e.ids[e.prompt_len - 1] == tok.think_id
