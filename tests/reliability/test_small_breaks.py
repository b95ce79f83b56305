"""Smaller breaks of the bad-input promise: `new-plugin` leaves nothing behind when it refuses,
numbered run files never overwrite one another, `bench --noop` is a count, a file where a run keeps
a folder is named, and a training failure names the step that was running."""

from __future__ import annotations

import os
import re
import shutil
import uuid

import pytest
from reliability_helpers import TINY_GPT, cli, one_line

from engine import Plugin, TrainingFailure, hookimpl
from engine.rundir.claim import next_number, record_recipe_change
from engine.rundir.directory import RunDir
from engine.testing import TOY, train

# --- new-plugin: everything checked first, written atomically -------------------------------------


def _everything(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(r, n), path) for r, ds, fs in os.walk(path) for n in ds + fs)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a" * 244, r"plugin name 'a{40}\.\.\.' \(244 characters\) is too long: .*; pick a name of at most 218 "),
        ("a" * 219, r"\(219 characters\) is too long"),
        ("zl\u00f6ss", r"must be a lowercase Python identifier"),
        ("z-loss", r"must be a lowercase Python identifier"),
        ("z/loss", r"must be a lowercase Python identifier"),
        ("../zloss", r"must be a lowercase Python identifier"),
        ("zloss\n", r"must be a lowercase Python identifier"),
        ("_zloss", r"must be a lowercase Python identifier"),
        ("import", r"must be a lowercase Python identifier"),
        ("a" * 5000, r"must be|is too long"),
    ],
)
@pytest.mark.parametrize("given_dir", [False, True])
def test_new_plugin_refusals_leave_nothing(name, expected, given_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["new-plugin", name, *(["--dir", str(tmp_path / "pkg")] if given_dir else [])]
    code, _, err = cli(*argv, capsys=capsys)
    assert code == 2
    line = one_line(err)
    assert re.search(expected, line), line
    assert len(line) < 400
    assert _everything(tmp_path) == []


def test_new_plugin_longest_name_is_written_whole(tmp_path, capsys):
    name = "a" * 218
    code, stdout, _ = cli("new-plugin", name, "--dir", str(tmp_path / "pkg"), capsys=capsys)
    assert code == 0 and stdout.startswith(f"wrote {tmp_path / 'pkg'}")
    assert f"hookmix_{name}/recipes/{name}-mnist1d.toml" in _everything(tmp_path / "pkg")
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no temporary directory left


def test_new_plugin_into_an_empty_directory_and_new_parents(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for where in (tmp_path / "empty", tmp_path / "new" / "deeper" / "pkg"):
        code, _, _ = cli("new-plugin", "zloss", "--dir", str(where), capsys=capsys)
        assert code == 0
        assert "pyproject.toml" in os.listdir(where)
    assert sorted(os.listdir(tmp_path)) == ["empty", "new"]


@pytest.mark.parametrize("case", ["non-empty", "a file", "below a file", "below a dangling link", "unwritable"])
def test_new_plugin_bad_destination_is_one_line_and_leaves_nothing(case, tmp_path, capsys, monkeypatch):
    (tmp_path / "keep.txt").write_text("mine")
    dest = tmp_path / "pkg"
    if case == "non-empty":
        dest.mkdir()
        (dest / "notes.txt").write_text("mine")
        expected = "already exists and is not an empty directory; pass --dir NEW_DIR"
    elif case == "a file":
        dest.write_text("mine")
        expected = "already exists and is not an empty directory"
    elif case == "below a file":
        dest = tmp_path / "keep.txt" / "sub" / "pkg"
        expected = f"{tmp_path / 'keep.txt'} is not a directory; pass --dir"
    elif case == "below a dangling link":
        os.symlink(tmp_path / "nowhere", tmp_path / "link")
        dest = tmp_path / "link" / "pkg"
        expected = "link is not a directory; pass --dir"
    else:  # root writes anywhere: make the last write fail the way a read-only disk does

        def refuse(src, dst):
            raise OSError(30, "Read-only file system", src)

        monkeypatch.setattr(os, "rename", refuse)
        expected = f"cannot write {dest} (Read-only file system); pass --dir with a writable location"
    before = _everything(tmp_path)
    code, _, err = cli("new-plugin", "zloss", "--dir", str(dest), capsys=capsys)
    assert code == 2
    assert expected in one_line(err)
    assert _everything(tmp_path) == before


# --- numbered run files: from the highest number, never over an existing file ----------------------


@pytest.mark.parametrize(
    "names, expected",
    [
        ([], 1),
        (["001-until-step-00000004.toml"], 2),
        (["002-until-step-00000008.toml"], 3),  # the first was deleted: 2 is not reused
        (["001-a.toml", "README.md", ".tmp-123", "notes-7.txt", "010-until-step-1.toml"], 11),
        (["1", "3", "x"], 4),
    ],
)
def test_next_number_counts_from_the_highest(names, expected):
    assert next_number(names) == expected


@pytest.mark.parametrize("url", ["local", "memory"])
def test_recipe_history_after_a_deleted_entry_overwrites_nothing(url, tmp_path):
    url = str(tmp_path / "run") if url == "local" else f"memory://history-{uuid.uuid4().hex}/run"
    run_dir = RunDir(url)
    run_dir.write_text_atomic("recipe.toml", "[run]\nsteps = 4\n")
    record_recipe_change(run_dir, "[run]\nsteps = 8\n", 4)
    run_dir.write_text_atomic("recipe.toml", "[run]\nsteps = 8\n")
    record_recipe_change(run_dir, "[run]\nsteps = 10\n", 8)
    run_dir.remove("recipe-history/001-until-step-00000004.toml")  # a user tidies up
    run_dir.write_text_atomic("recipe-history/notes.txt", "mine")
    run_dir.write_text_atomic("recipe.toml", "[run]\nsteps = 10\n")
    record_recipe_change(run_dir, "[run]\nsteps = 12\n", 10)
    assert run_dir.list("recipe-history") == [
        "002-until-step-00000008.toml",
        "003-until-step-00000010.toml",
        "notes.txt",
    ]
    assert run_dir.read_text("recipe-history/002-until-step-00000008.toml") == "[run]\nsteps = 8\n"  # kept
    assert run_dir.read_text("recipe-history/003-until-step-00000010.toml") == "[run]\nsteps = 10\n"


def test_recipe_history_write_is_exclusive(tmp_path):
    run_dir = RunDir(str(tmp_path / "run"))
    run_dir.write_text_atomic("recipe-history/001-until-step-00000004.toml", "first")
    with pytest.raises(FileExistsError):
        run_dir.write_text_new("recipe-history/001-until-step-00000004.toml", "second")
    assert run_dir.read_text("recipe-history/001-until-step-00000004.toml") == "first"
    assert run_dir.list("recipe-history") == ["001-until-step-00000004.toml"]  # no temporary file left


def _died_before_checkpoint(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(f"{out}/recipe.toml", "w") as f:
        f.write("[run]\nplugins = []\n")
    with open(f"{out}/metrics.jsonl", "w") as f:
        f.write(f'{{"step": 1, "attempt": "{uuid.uuid4().hex}"}}\n')


def test_failed_attempts_after_a_deleted_one_overwrite_nothing(tmp_path, capsys):
    out = str(tmp_path / "run")
    _died_before_checkpoint(out)
    os.makedirs(f"{out}/failed-attempts/2")  # 1 deleted, 2 kept: the next is 3, not 2 again
    with open(f"{out}/failed-attempts/2/metrics.jsonl", "w") as f:
        f.write("kept\n")
    argv = ["train", "shakespeare-gpt", *TINY_GPT, "run.steps=1", "--quiet", "--out", out]
    code, _, err = cli(*argv, capsys=capsys)
    assert code == 0
    assert f"kept in {out}/failed-attempts/3)" in one_line(err)
    assert open(f"{out}/failed-attempts/2/metrics.jsonl").read() == "kept\n"


# --- a file where the run keeps a folder (and the reverse): named, with the fix for the command ----


@pytest.mark.parametrize(
    "name, kind", [("recipe-history", "file"), ("tensorboard", "file"), ("failed-attempts", "file")]
)
def test_file_where_the_run_keeps_a_folder_is_named_on_resume(name, kind, finished_run, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(finished_run, out)
    if os.path.isdir(f"{out}/{name}"):
        shutil.rmtree(f"{out}/{name}")
    with open(f"{out}/{name}", "w") as f:
        f.write("mine")
    before = sorted(os.listdir(out))
    code, _, err = cli("train", "--resume", out, "run.steps=3", "--quiet", capsys=capsys)
    assert code == 2
    assert one_line(err) == (
        f"hookmix: error: run directory {out}: {out}/{name} is a file where hookmix keeps its {name}/ "
        f"directory; move the file away, then run `hookmix train --resume {out}` again"
    )
    assert sorted(os.listdir(out)) == before and open(f"{out}/{name}").read() == "mine"


@pytest.mark.parametrize(
    "name, damage, expected",
    [
        ("recipe.toml", "directory", "is a directory where a file belongs; move it away"),
        ("checkpoints/step-00000002.pt", "directory", "is a directory where a file belongs; move it away"),
        ("metrics.jsonl", "directory", "is a directory where hookmix writes its metrics.jsonl file"),
        (
            "recipe.toml",
            "non-UTF-8",
            "is not UTF-8 text (a bad byte at offset 2); it is damaged: restore it from a copy",
        ),
    ],
)
def test_damaged_run_files_are_named_on_resume(name, damage, expected, finished_run, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(finished_run, out)
    os.remove(f"{out}/{name}")
    if damage == "directory":
        os.makedirs(f"{out}/{name}")
    else:
        with open(f"{out}/{name}", "wb") as f:
            f.write(b"# \xff\xfe\n")
    code, _, err = cli("train", "--resume", out, "run.steps=3", "--quiet", capsys=capsys)
    assert code == 2
    line = one_line(err)
    assert f"{out}/{name} {expected}" in line, line


def test_directory_where_the_run_writes_a_file_is_named_on_a_fresh_start(tmp_path, capsys):
    out = str(tmp_path / "run")
    _died_before_checkpoint(out)
    os.makedirs(f"{out}/summary.json")
    code, _, err = cli("train", "shakespeare-gpt", *TINY_GPT, "run.steps=1", "--quiet", "--out", out, capsys=capsys)
    assert code == 2
    assert one_line(err) == (
        f"hookmix: error: run directory {out}: {out}/summary.json is a directory where hookmix writes its "
        f"summary.json file; move the directory away, or pass another --out"
    )
    assert sorted(os.listdir(out)) == ["metrics.jsonl", "recipe.toml", "summary.json"]


# --- bench --noop is a count ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "x", "1.5", ""])
def test_bench_noop_must_be_a_whole_number_from_zero(value, capsys):
    code, _, err = cli("bench", "overhead", "--noop", value, capsys=capsys)
    assert code == 2
    assert one_line(err) == (
        f"hookmix: error: argument --noop: {value!r} is not a whole number >= 0; see `hookmix bench --help`"
    )


def test_bench_noop_zero_is_accepted():
    from engine.cli.main import _build_parser

    assert _build_parser({}).parse_args(["bench", "overhead", "--noop", "0"]).noop == 0


# --- a training failure names the step that was running (1-based, as every step message) ------------


def _raising_in(hook: str, at: int) -> type[Plugin]:
    """A plugin whose ``hook`` raises during step ``at`` (the step whose optimizer step ran, for the
    hooks after it)."""

    class Boom(Plugin):
        name = "boom"

        @hookimpl
        def hookmix_loss_terms(self, batch, outputs, state):
            if hook == "loss_terms" and state.step + 1 == at:  # state.step counts completed steps
                raise RuntimeError(f"boom in {hook}")

        @hookimpl
        def hookmix_after_optimizer_step(self, model, optimizer, state):
            if hook == "after_optimizer_step" and state.step == at:  # already counts this step
                raise RuntimeError(f"boom in {hook}")

        @hookimpl
        def hookmix_on_log(self, metrics, state):
            if hook == "on_log" and metrics["step"] == at:
                raise RuntimeError(f"boom in {hook}")

        @hookimpl
        def hookmix_eval_metrics(self, model, state):
            if hook == "eval_metrics" and state.step == at:
                raise RuntimeError(f"boom in {hook}")
            return None

    return Boom


@pytest.mark.parametrize("hook", ["loss_terms", "after_optimizer_step", "on_log", "eval_metrics"])
@pytest.mark.parametrize("at", [1, 3])
def test_failure_names_the_step_whose_hook_raised(hook, at):
    with pytest.raises(TrainingFailure) as failed:
        train([*TOY, _raising_in(hook, at)], steps=4, eval_interval=1, checkpoint_interval=2)
    saved = "no checkpoint was written yet" if at < 2 else r"the last good checkpoint \(step 2\) is intact"
    assert re.match(
        rf"step {at}: plugin 'boom' failed \(RuntimeError: boom in {hook}\); check \[plugins\.boom\]; {saved}",
        str(failed.value),
    ), str(failed.value)
