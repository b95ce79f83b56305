"""``hookmix bench rl``: how it is reached (``hookmix bench NAME`` -> the plugin command ``bench-NAME``), its
bad-input paths, the bench model's full-length rows, and the loss check against TRL on a tiny configuration
(skipped without the extra ``trl``). Timings are not asserted (docs/performance.md has the measured table)."""

from __future__ import annotations

import sys

import pytest
import torch

from engine.cli.main import main

torch.set_num_threads(1)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bench_help_lists_the_plugin_benchmarks(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "{overhead,ddp,fsdp," in out and "rl," in out.replace("\n", " ")
    assert "rl: GRPO / SofT-GRPO steps side by side with TRL" in " ".join(out.split())


def test_bench_rl_help_is_the_plugin_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "rl", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hookmix bench rl ") and "--against {trl}" in out


@pytest.mark.parametrize("missing", ["trl", "datasets"])
def test_against_trl_without_the_extra_is_one_line_naming_it(missing, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, missing, None)  # `import trl` now raises ImportError, as when not installed
    assert main(["bench", "rl", "--against", "trl", "--steps", "1"]) == 2
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert line.startswith("hookmix: error: --against trl needs TRL") and 'pip install -e ".[trl]"' in line
    assert captured.out == ""


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["bench", "rl", "--group-size", "1"], "group advantages need at least 2 completions per prompt"),
        (["bench", "rl", "--top-k", "10"], "--top-k 10 must be in 1..9"),
        (["bench", "rl", "--top-k", "0"], "--top-k 0 must be in 1..9"),
        (["bench", "rl", "--top-p", "0"], "--top-p 0.0 must be in (0, 1]"),
        (["bench", "rl", "--temperature", "0"], "--temperature 0.0 must be > 0"),
        (["bench", "rl", "--beta", "-1"], "--beta -1.0 must be a finite number >= 0"),
        (["bench", "rl", "--beta", "inf"], "--beta inf must be a finite number >= 0"),
        (["bench", "rl", "--temperature", "nan"], "--temperature nan must be > 0"),
        (["bench", "rl", "--hidden", "30"], "--hidden 30 must be a multiple of 4"),
        (["bench", "rl", "--think-cap", "60"], "exceeds the bench model's context (64)"),
        (["bench", "rl", "--steps", "0"], "'0' is not a whole number >= 1"),
        (["bench", "rl", "--loss-type", "gspo"], "invalid choice: 'gspo'"),
        (["bench", "rl", "--against", "lightning"], "invalid choice: 'lightning'"),
        (["bench", "rl", "--bogus"], "unrecognized arguments: --bogus"),
        (["bench", "--steps", "3", "rl"], "put the options of bench rl after its name: hookmix bench rl [OPTIONS]"),
        (["bench", "nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, expected, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert expected in _one_line(captured.err)
    assert captured.out == ""


def test_options_errors_name_the_benchmark_as_typed(capsys):
    assert main(["bench", "rl", "--warmup"]) == 2
    assert "see `hookmix bench rl --help`" in _one_line(capsys.readouterr().err)


def _tiny(tmp_path):
    pytest.importorskip("transformers")
    from plugins.bench_rl.fixtures import Settings, build

    s = Settings(prompts=2, group_size=4, think_cap=4, answer_cap=3, hidden=32, steps=1, warmup=0)
    s.check()
    return s, build(s, str(tmp_path))


def test_every_row_of_the_bench_model_generates_the_full_length_without_special_tokens(tmp_path):
    from plugins.bench_rl.losses import sample_rollouts
    from plugins.countdown import task as cd

    s, fixtures = _tiny(tmp_path)
    _, rollout = sample_rollouts(s, fixtures, prompts=2)
    P = rollout.prompt_length
    assert bool(rollout.response_mask[:, P:].all()) and rollout.input_ids.shape[1] == P + s.completion_length
    sampled = rollout.input_ids[:, P:][~rollout.forced_mask[:, P:]]  # the forced </think> is not sampled
    special = torch.tensor([cd.CharTokenizer().stoi[t] for t in cd.SPECIAL_TOKENS])
    assert not bool(torch.isin(sampled, special).any())
    # the guarantee is the LM head's ± pairs: at least PAIRS logits > 0, the special tokens' exactly 0
    from transformers import AutoModelForCausalLM

    from plugins.bench_rl.fixtures import PAIRS

    model = AutoModelForCausalLM.from_pretrained(fixtures["model"])
    with torch.no_grad():
        logits = model(input_ids=rollout.input_ids).logits
    assert bool((logits[..., special] == 0).all())
    assert bool(((logits > 0).sum(-1) >= PAIRS).all())


def test_both_tokenizers_give_the_same_prompt_ids(tmp_path):
    from transformers import AutoTokenizer

    from plugins.bench_rl.fixtures import prompt_texts
    from plugins.countdown.tokenizers import HFCountdownTokenizer

    _, fixtures = _tiny(tmp_path)
    theirs, ours = AutoTokenizer.from_pretrained(fixtures["tokenizer"]), HFCountdownTokenizer(fixtures["tokenizer"])
    for text in prompt_texts(fixtures["problems"]):
        assert theirs(text=[text])["input_ids"][0] == ours.encode(text)


def test_hookmix_and_trl_losses_are_equal_on_identical_rollouts(tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    from transformers import AutoModelForCausalLM

    from plugins.bench_rl.fixtures import quiet_libraries
    from plugins.bench_rl.losses import CASES, SAME_TOL, compare_losses, within_tolerance

    quiet_libraries()
    s, fixtures = _tiny(tmp_path)
    rows = compare_losses(s, fixtures, prompts=2)
    assert len(rows) == len(CASES)
    n_params = len(list(AutoModelForCausalLM.from_pretrained(fixtures["model"]).parameters()))
    for r in rows:
        assert within_tolerance(r), r
        assert r["params"] == n_params  # every parameter tensor compared, the input embeddings included
    assert {(r["loss_type"], r["level"], r["beta"]) for r in rows} >= {
        ("vespo", "token", 0.0),
        ("vespo", "token", 0.04),
    }
    # the check can fail: on these inputs the normalisers give losses far apart (rows of different lengths)
    by_type = {r["loss_type"]: r["trl"] for r in rows if r["level"] == "token" and not r["beta"] and not r["other"]}
    for a, b in [("grpo", "dapo"), ("grpo", "dr_grpo"), ("dapo", "dr_grpo"), ("dapo", "luspo"), ("dapo", "vespo")]:
        assert abs(by_type[a] - by_type[b]) > 1e3 * SAME_TOL * max(1.0, abs(by_type[a]))


@pytest.mark.parametrize("ours", [{"loss_type": "dapo"}, {"dual_clip_c": 1.05}, {"kl_bias_correction": False}])
def test_a_different_formula_is_caught(ours, tmp_path, monkeypatch):
    """hookmix's side changed against TRL's grpo (with beta 0.04): another normaliser, a dual clip, the KL without
    TRL's bias correction: each must fall outside the tolerance."""
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    import dataclasses

    import plugins.bench_rl.losses as losses

    right = losses._objective
    monkeypatch.setattr(losses, "_objective", lambda *a: dataclasses.replace(right(*a), **ours))
    s, fixtures = _tiny(tmp_path)
    (row,) = losses.compare_losses(s, fixtures, prompts=2, cases=[("grpo", {"beta": 0.04})])
    assert not losses.within_tolerance(row)


@pytest.mark.parametrize("ours", [{"vespo_k_pos": 3.0}, {"vespo_lambda_neg": 3.0}])
def test_other_vespo_constants_are_caught(ours, tmp_path, monkeypatch):
    """hookmix's VESPO gamma weight with one constant changed (for A >= 0, for A < 0) against TRL's defaults."""
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    import dataclasses

    import plugins.bench_rl.losses as losses

    right = losses._objective
    monkeypatch.setattr(losses, "_objective", lambda *a: dataclasses.replace(right(*a), **ours))
    s, fixtures = _tiny(tmp_path)
    (row,) = losses.compare_losses(s, fixtures, prompts=2, cases=[("vespo", {})])
    assert row["diff"] > 1e3 * losses.SAME_TOL and not losses.within_tolerance(row)


def test_detached_input_embeddings_are_caught(tmp_path, monkeypatch):
    """Scored with the inputs detached (the discrete arm's former setting), hookmix's loss is the same number but
    the embedding matrix gets no gradient while TRL's does: the parameter-gradient comparison must fail."""
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    import plugins.bench_rl.losses as losses
    from plugins.soft_grpo.likelihood import LikelihoodConfig

    assert losses._likelihood().detach_inputs is False  # the grpo plugin's discrete arm trains the embeddings
    monkeypatch.setattr(losses, "_likelihood", lambda: LikelihoodConfig(detach_inputs=True))
    s, fixtures = _tiny(tmp_path)
    (row,) = losses.compare_losses(s, fixtures, prompts=2, cases=[("dapo", {})])
    assert row["own_diff"] <= losses.OWN_TOL and row["own_grad_rel"] > 1e2 * losses.OWN_TOL
    assert not losses.within_tolerance(row)


@pytest.mark.slow
def test_bench_rl_against_trl_end_to_end(capsys):
    pytest.importorskip("trl")
    argv = ["bench", "rl", "--against", "trl", "--steps", "2", "--warmup", "1", "--prompts", "2"]
    assert main([*argv, "--group-size", "2", "--think-cap", "4", "--answer-cap", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:4]] == [
        "hookmix grpo",
        "hookmix soft_grpo",
        "TRL GRPOTrainer (dapo)",
    ]
    assert "FAIL" not in out and out.count("| yes |") == 15
