"""Tampered and damaged run files, leftovers of kills, dead ends, and the recipe history of resumes."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tomllib

import pytest
import torch
from reliability_helpers import TINY_GPT, cli, one_line, records, snapshot


def _interrupted_at_4(straight_run: str, tmp_path) -> str:
    """A copy of the straight run as it was after step 4 (its later records are replayed on resume)."""
    out = str(tmp_path / "run")
    shutil.copytree(straight_run, out)
    os.remove(f"{out}/checkpoints/step-00000006.pt")
    os.remove(f"{out}/summary.json")
    return out


def _edit_checkpoint(path: str, edit) -> None:
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


def _resume_matches_straight(out: str, straight_run: str, capsys) -> str:
    code, stdout, err = cli("train", "--resume", out, "--quiet", capsys=capsys)
    assert code == 0 and "done: 6 steps" in stdout, err
    with open(f"{straight_run}/metrics.jsonl") as a, open(f"{out}/metrics.jsonl") as b:
        assert records(a.read()) == records(b.read())
    straight = torch.load(f"{straight_run}/checkpoints/step-00000006.pt", weights_only=True)["model"]
    resumed = torch.load(f"{out}/checkpoints/step-00000006.pt", weights_only=True)["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    return err


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda p: p.pop("rng"), "has no 'rng' entry"),
        (lambda p: p.pop("model"), "has no 'model' entry"),
        (lambda p: p.pop("optimizer"), "has no 'optimizer' entry"),
        (lambda p: p.update(step="4"), "has a str as 'step'"),
        (lambda p: p.update(step=4.0), "has a float as 'step'"),
        (lambda p: p.update(step=True), "has a bool as 'step'"),
        (lambda p: p.update(step=-1), "says step -1, but its name says 4"),
        (lambda p: p.update(step=5), "says step 5, but its name says 4"),
        (lambda p: p["rng"].pop("numpy"), "has no 'numpy' random state"),
        (lambda p: p.update(pending_metrics={"train/loss": 1.0}), "has pending metrics that are not tensors"),
        (lambda p: p.update(model={"nope": torch.zeros(1)}), "does not match the model/optimizer of this recipe"),
    ],
)
def test_tampered_checkpoint_is_refused_and_nothing_is_rewritten(edit, expected, straight_run, tmp_path, capsys):
    out = _interrupted_at_4(straight_run, tmp_path)
    _edit_checkpoint(f"{out}/checkpoints/step-00000004.pt", edit)
    before = snapshot(out)
    code, _, err = cli("train", "--resume", out, capsys=capsys)
    line = one_line(err)
    assert code == 2
    assert expected in line and line.startswith("hookmix: error: checkpoint"), line
    assert snapshot(out) == before


def test_raw_pickle_checkpoint_is_one_line(straight_run, tmp_path, capsys):
    out = _interrupted_at_4(straight_run, tmp_path)
    for step in (2, 4):  # no valid checkpoint to fall back to
        with open(f"{out}/checkpoints/step-0000000{step}.pt", "wb") as f:
            pickle.dump({"format": 1, "step": step}, f)
    code, _, err = cli("train", "--resume", out, capsys=capsys)
    assert code == 2
    assert re.fullmatch(
        r"hookmix: error: checkpoint \S+step-00000002\.pt is unreadable \(\w+\); it is damaged or "
        r"not a hookmix checkpoint",
        one_line(err.replace(_fallback_note(out, 4, err), "")),
    ), err


def _fallback_note(out: str, step: int, err: str) -> str:
    """The note line saying the newest checkpoint was skipped (removed before counting error lines)."""
    match = re.search(
        rf"hookmix: note: checkpoint {re.escape(out)}/checkpoints/step-0000000{step}\.pt is "
        rf"unreadable \(\w+\); it is damaged or not a hookmix checkpoint; falling back to the previous "
        rf"checkpoint\n",
        err,
    )
    assert match, err
    return match.group(0)


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(straight_run, tmp_path, capsys):
    out = _interrupted_at_4(straight_run, tmp_path)
    path = f"{out}/checkpoints/step-00000004.pt"
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    err = _resume_matches_straight(out, straight_run, capsys)
    assert _fallback_note(out, 4, err)


def test_partial_last_metrics_line_left_by_a_crash_is_dropped_on_resume(straight_run, tmp_path, capsys):
    out = _interrupted_at_4(straight_run, tmp_path)
    with open(f"{out}/metrics.jsonl", "a") as f:
        f.write('{"step": 7, "train/lo')  # a write cut by a kill: no newline
    err = _resume_matches_straight(out, straight_run, capsys)
    assert f"hookmix: note: dropped an incomplete last line of {out}/metrics.jsonl (left by a crash)" in err


@pytest.mark.parametrize(
    "garbage", ['{"step": 1, "train/lo\n', "not json\n", '{"no_step": 1}\n', "[1, 2]\n", '{"step": "3"}\n']
)
def test_damaged_metrics_line_is_bad_input_and_nothing_is_rewritten(garbage, straight_run, tmp_path, capsys):
    out = _interrupted_at_4(straight_run, tmp_path)
    lines = open(f"{out}/metrics.jsonl").readlines()
    with open(f"{out}/metrics.jsonl", "w") as f:
        f.writelines([*lines[:2], garbage, *lines[2:]])
    before = snapshot(out)
    code, _, err = cli("train", "--resume", out, capsys=capsys)
    assert code == 2
    assert one_line(err).startswith(f"hookmix: error: {out}/metrics.jsonl line 3 is not a metrics record")
    assert snapshot(out) == before


def test_leftover_temporary_files_are_removed_on_the_next_start(straight_run, tmp_path, capsys):
    out = _interrupted_at_4(straight_run, tmp_path)
    for name in (".tmp-aaaa", "checkpoints/.tmp-bbbb"):
        with open(f"{out}/{name}", "wb") as f:
            f.write(b"half a checkpoint")
    err = _resume_matches_straight(out, straight_run, capsys)
    assert f"hookmix: note: removed 2 temporary file(s) of a write interrupted in {out}" in err
    assert not [n for _, _, names in os.walk(out) for n in names if n.startswith(".tmp-")]


def test_resume_with_changed_overrides_keeps_the_recipe_history(straight_run, tmp_path, capsys):
    out = _interrupted_at_4(straight_run, tmp_path)
    original = open(f"{out}/recipe.toml").read()
    code, _, err = cli("train", "--resume", out, "run.steps=8", "--quiet", capsys=capsys)
    assert code == 0
    kept = f"{out}/recipe-history/001-until-step-00000004.toml"
    assert (
        f"hookmix: note: recipe changed on resume at step 4 (run.steps: 6 -> 8); the previous recipe is kept as {kept}"
    ) in err
    assert open(kept).read() == original
    assert tomllib.load(open(f"{out}/recipe.toml", "rb"))["run"]["steps"] == 8  # what the next resume runs
    code, _, err = cli("train", "--resume", out, "run.steps=10", "--quiet", capsys=capsys)
    assert code == 0 and os.listdir(f"{out}/recipe-history") == [
        "001-until-step-00000004.toml",
        "002-until-step-00000008.toml",
    ]


def test_resume_with_the_same_recipe_records_no_change(straight_run, tmp_path, capsys):
    out = _interrupted_at_4(straight_run, tmp_path)
    err = _resume_matches_straight(out, straight_run, capsys)
    assert "recipe changed" not in err and not os.path.exists(f"{out}/recipe-history")


# --- dead ends --------------------------------------------------------------------------------


def test_failure_before_the_first_checkpoint_names_the_way_out_and_it_works(tmp_path, capsys):
    out = str(tmp_path / "run")
    code, _, err = cli(
        "train",
        "shakespeare-gpt",
        *TINY_GPT,
        "run.steps=4",
        "run.log_interval=1",
        "plugins.adamw.lr=1e6",
        "--quiet",
        "--out",
        out,
        capsys=capsys,
    )
    assert code == 1
    line = one_line(err)
    assert re.fullmatch(
        rf"hookmix: error: step \d: loss term 'ce' is not finite .*; no checkpoint was written "
        rf"yet: `hookmix train --resume {re.escape(out)} \[KEY=VALUE \.\.\.\]` starts it again from "
        rf"step 0",
        line,
    ), line
    failed_metrics = open(f"{out}/metrics.jsonl").read()

    # the way out the message names: resume with a fix
    code, stdout, err = cli("train", "--resume", out, "plugins.adamw.lr=1e-3", "--quiet", capsys=capsys)
    assert code == 0 and "done: 4 steps" in stdout
    assert one_line(err) == (
        f"hookmix: note: {out} holds a run that stopped before its first checkpoint; starting "
        f"again from step 0 with its recipe (the failed attempt's files are kept in "
        f"{out}/failed-attempts/1)"
    )
    assert open(f"{out}/failed-attempts/1/metrics.jsonl").read() == failed_metrics  # nothing lost silently
    assert tomllib.load(open(f"{out}/recipe.toml", "rb"))["plugins"]["adamw"]["lr"] == 1e-3


def test_fresh_run_into_a_run_that_died_before_its_first_checkpoint_starts_again(tmp_path, capsys):
    out = str(tmp_path / "run")
    os.makedirs(out)
    with open(f"{out}/recipe.toml", "w") as f:  # what a kill before the first checkpoint leaves
        f.write("[run]\nplugins = []\n")
    with open(f"{out}/metrics.jsonl", "w") as f:
        f.write('{"step": 1, "train/loss": 4.2}\n')
    code, stdout, err = cli(
        "train", "shakespeare-gpt", *TINY_GPT, "run.steps=2", "--quiet", "--out", out, capsys=capsys
    )
    assert code == 0 and "done: 2 steps" in stdout
    assert "starting again from step 0 with this recipe" in one_line(err)
    assert sorted(os.listdir(f"{out}/failed-attempts/1")) == ["metrics.jsonl", "recipe.toml"]
