"""Errors of the output location: one line naming the path and the fix; exit 2 before training,
exit 1 with the last good checkpoint intact (and a resumable run) when a write fails during it."""

from __future__ import annotations

import errno
import importlib.util
import os

import pytest
from reliability_helpers import GPT6, TINY_GPT, cli, one_line, records

from engine.rundir.directory import RunDir


def _files(url: str) -> list[str]:
    run_dir = RunDir(url)
    return run_dir.fs.find(run_dir.path) if run_dir.fs.exists(run_dir.path) else []


def _local_cases(tmp_path):
    (tmp_path / "a-file").write_text("x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "not-a-run" / "notes.txt").write_text("mine")
    return [
        (str(tmp_path / "a-file"), r"run directory \S+/a-file is a file; pass a directory"),
        (
            str(tmp_path / "dangling"),
            r"run directory \S+/dangling is a symbolic link to \S+/nowhere, which does "
            r"not exist; create its target or pass another --out",
        ),
        (str(tmp_path / "a-file" / "run"), r"run directory \S+/a-file/run: \S+/a-file is a file, not a directory"),
        (
            str(tmp_path / "not-a-run"),
            r"run directory \S+/not-a-run is not empty and holds no hookmix run "
            r"\(notes.txt, \.\.\.\); pass a new or empty directory as --out",
        ),
        ("http://localhost:9/run", r"run directory http://localhost:9/run: http:// is read-only; pass a local path"),
    ]


def test_bad_local_locations_are_one_line_and_write_nothing(tmp_path, capsys):
    before = sorted(os.listdir(tmp_path))
    for out, expected in _local_cases(tmp_path):
        files = sorted(os.listdir(tmp_path))
        code, _, err = cli("train", "shakespeare-gpt", *TINY_GPT, "run.steps=2", "--out", out, capsys=capsys)
        line = one_line(err)
        assert code == 2, (out, line)
        assert __import__("re").search(expected, line), line
        assert sorted(os.listdir(tmp_path)) == files
    assert (tmp_path / "not-a-run").exists() and os.listdir(tmp_path / "not-a-run") == ["notes.txt"]
    assert before == []


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed here")
def test_url_whose_backend_is_not_installed(capsys):
    code, _, err = cli("train", "shakespeare-gpt", *TINY_GPT, "--out", "s3://bucket/run", capsys=capsys)
    assert code == 2
    assert one_line(err).startswith(
        "hookmix: error: run directory s3://bucket/run: the fsspec backend for s3:// "
        "is not installed (Install s3fs to access S3); install it or pass a local path"
    )


@pytest.mark.parametrize(
    "read_only, code, expected",
    [
        (True, errno.EROFS, "(Read-only file system); choose a writable --out"),
        (False, errno.ENOSPC, "(No space left on device); free disk space or choose another --out"),
        (False, errno.EACCES, "(Permission denied); choose a writable --out"),
    ],
)
def test_unwritable_location_is_refused_before_training(faulty, read_only, code, expected, capsys):
    faulty.read_only, faulty.code = read_only, code
    faulty.fail = staticmethod(lambda path: True)  # every write fails: the lock file is the first
    out = f"faulty://unwritable-{code}/run"
    rc, stdout, err = cli("train", "shakespeare-gpt", *TINY_GPT, "--out", out, capsys=capsys)
    assert rc == 2
    assert one_line(err) == f"hookmix: error: cannot write to run directory {out} {expected}"
    assert [f for f in _files(out) if not f.endswith("/")] == []
    assert "step " not in stdout  # not one step trained


def test_disk_full_during_training_keeps_the_last_checkpoint_and_resumes(faulty, straight_run, capsys):
    opened = []

    def fourth_step_checkpoint(path):  # GPT6 checkpoints at 2, 4, 6: the second one fails
        if "/checkpoints/.tmp-" in path:
            opened.append(path)
            return len(opened) == 2
        return False

    faulty.fail = staticmethod(fourth_step_checkpoint)
    out = "faulty://full-disk/run"
    code, _, err = cli("train", "shakespeare-gpt", *GPT6, "--quiet", "--out", out, capsys=capsys)
    assert code == 1
    assert one_line(err) == (
        f"hookmix: error: step 4: writing the run directory failed (No space left on device: "
        f"{opened[1]}); the last good checkpoint "
        f"(step 2) is intact: `hookmix train --resume {out} [KEY=VALUE ...]` continues from it"
    )
    assert RunDir(out).list("checkpoints") == ["step-00000002.pt"]  # no partial step 4, no temporary file

    faulty.fail = staticmethod(lambda path: False)  # space freed
    code, stdout, err = cli("train", "--resume", out, "--quiet", capsys=capsys)
    assert code == 0 and "done: 6 steps" in stdout
    with open(f"{straight_run}/metrics.jsonl") as f:
        assert records(RunDir(out).read_text("metrics.jsonl")) == records(f.read())  # nothing lost, nothing repeated


def test_memory_out_warns_that_outputs_vanish(capsys):
    code, _, err = cli(
        "train", "shakespeare-gpt", *TINY_GPT, "run.steps=1", "--quiet", "--out", "memory://vanish", capsys=capsys
    )
    assert code == 0
    assert one_line(err) == (
        "hookmix: note: run directory memory://vanish lives in this process's memory; its outputs vanish when it exits"
    )


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", "HOOKMIX_CACHE is set but empty; unset it or point it at a directory"),
        ("FILE", "HOOKMIX_CACHE={} is a file; point it at a directory (created if missing)"),
    ],
)
def test_cache_location_must_be_a_directory(value, expected, tmp_path, monkeypatch, capsys):
    if value == "FILE":
        value = str(tmp_path / "cache-file")
        (tmp_path / "cache-file").write_text("x")
    monkeypatch.setenv("HOOKMIX_CACHE", value)
    code, _, err = cli("train", "shakespeare-gpt", *TINY_GPT, "--out", str(tmp_path / "run"), capsys=capsys)
    assert code == 2
    assert one_line(err) == "hookmix: error: " + expected.format(value)
    assert not (tmp_path / "run").exists()
