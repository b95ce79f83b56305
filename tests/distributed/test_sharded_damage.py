"""Damaged sharded (DCP) checkpoints are handled like damaged one-file checkpoints, on 2 real processes (gloo).

One FSDP launch trains the reference run: 4 steps, checkpoints at steps 2 and 4. Copies of its run directory get
one kind of damage each in step 4's directory, and one launch resumes them all: each falls back to step 2 with
one note naming the damaged file (rank 0 prints it; every rank falls back) and ends bit-identical to the
reference (a resume is bit-exact). The damage is found before DCP loads (a missing, empty or truncated file, a
damaged or missing ``.metadata``, a missing directory) or while it reads (random bytes of the right length: only
the rank that reads that file fails, and DCP hands the failure to every rank). A copy whose every checkpoint is
damaged stops with exit 2 and the same one line on every rank, and so does ``hookmix train --resume`` of one in a
single process (a run made by ``hookmix train --nproc 2``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from dist_plugins import MNIST1D_DATA as DATA  # this directory is on sys.path (conftest.py)

from engine.testing.distributed import assert_identical_results, launch_cases, read_results, write_cases

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CASE = dict(
    plugins=["mnist1d", "mlp", "adamw", "cross_entropy"],
    config={"mnist1d": DATA, "mlp": {"hidden": [32]}, "adamw": {"lr": 1e-2}},
    steps=4,
    threads=1,
    log_interval=1,
    eval_interval=2,
    checkpoint_interval=2,
    strategy="fsdp",
)
LAUNCH = ["--standalone", "--nproc-per-node", "2"]


def _halve(path: str) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def _scramble(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "wb") as f:  # the same length: only reading the pieces finds it
        f.write(os.urandom(size))


# damage to step 4's directory D -> what the note says after "sharded checkpoint " ({d}: D, escaped)
DAMAGE = {
    "truncated": (lambda d: _halve(f"{d}/__1_0.distcp"), r"file {d}/__1_0\.distcp is truncated \(\d+ of \d+ bytes\)"),
    "empty": (lambda d: os.truncate(f"{d}/__0_0.distcp", 0), r"file {d}/__0_0\.distcp is truncated \(0 of \d+ bytes\)"),
    "missing": (lambda d: os.remove(f"{d}/__0_0.distcp"), r"file {d}/__0_0\.distcp is missing"),
    "random": (lambda d: _scramble(f"{d}/__1_0.distcp"), r"file {d}/__1_0\.distcp is unreadable \(\w+\)"),
    "metadata_truncated": (lambda d: _halve(f"{d}/.metadata"), r"{d}/\.metadata is unreadable \(\w+\)"),
    "metadata_missing": (lambda d: os.remove(f"{d}/.metadata"), r"{d} has no readable \.metadata \([^)]+\)"),
    "directory_missing": (shutil.rmtree, r"directory {d} is missing"),
}


def _note(err: str, copy: str, damage: str) -> list[str]:
    d = re.escape(f"{copy}/checkpoints/step-00000004.dcp")
    said = DAMAGE[damage][1].format(d=d)
    pattern = rf"hookmix: note: sharded checkpoint {said}; it is damaged; falling back to the previous checkpoint\n"
    return re.findall(pattern, err)


def _launch(cases: list[dict]) -> tuple[int, str, str]:
    work = write_cases(cases)
    proc = launch_cases(work, LAUNCH)
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err, work


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("damage") / "reference")
    code, err, work = _launch([dict(CASE, out=out)])
    assert code == 0, err[-4000:]
    return out, read_results(work, 1)[0]


@pytest.fixture(scope="module")
def resumed(reference, tmp_path_factory) -> tuple[dict, str, str]:
    """Every kind of damage in a copy of the reference, resumed in one launch: (results, stderr, root)."""
    root = str(tmp_path_factory.mktemp("resumed"))
    for name, (damage, _) in DAMAGE.items():
        shutil.copytree(reference[0], f"{root}/{name}")
        damage(f"{root}/{name}/checkpoints/step-00000004.dcp")
    code, err, work = _launch([dict(CASE, out=f"{root}/{name}", resume=True) for name in DAMAGE])
    done = all(os.path.exists(f"{work}/result{i}.pt") for i in range(len(DAMAGE)))
    assert code == 0 or (done and "Traceback" not in err), err[-4000:]  # gloo may abort at teardown (harness)
    return dict(zip(DAMAGE, read_results(work, len(DAMAGE)))), err, root


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_sharded_checkpoint_falls_back_to_the_previous_one(reference, resumed, damage):
    results, err, root = resumed
    assert len(_note(err, f"{root}/{damage}", damage)) == 1, err[-4000:]  # one note, from rank 0
    assert results[damage]["checks"] == 2  # steps 3 and 4 trained again, both ranks equal after each
    assert_identical_results(reference[1], results[damage])


def _damage_all(src: str, dst: str) -> None:
    shutil.copytree(src, dst)
    for step in (2, 4):
        for rank in (0, 1):
            os.truncate(f"{dst}/checkpoints/step-0000000{step}.dcp/__{rank}_0.distcp", 10)


def _files(path: str) -> dict[str, bytes]:
    out = {}
    for folder, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.relpath(os.path.join(folder, name), path)] = f.read()
    return out


def _last(copy: str) -> str:
    return (
        rf"sharded checkpoint file {re.escape(copy)}/checkpoints/step-00000002\.dcp/__0_0\.distcp is truncated "
        rf"\(10 of \d+ bytes\); it is damaged; no earlier checkpoint to fall back to: restore the file from a copy"
    )


def test_every_sharded_checkpoint_damaged_stops_every_rank_with_one_line(reference, tmp_path):
    copy = str(tmp_path / "run")
    _damage_all(reference[0], copy)
    before = _files(copy)
    code, err, _ = _launch([dict(CASE, out=copy, resume=True)])
    assert code != 0 and "exitcode  : 2" in err, err[-4000:]  # torchrun's report of the first failing rank
    lines = [line for line in err.splitlines() if line.startswith("hookmix: error: ")]
    # torchrun stops the other rank once the first exits: one or both print their line, the same line
    assert 1 <= len(lines) <= 2 and all(re.search(_last(copy) + "$", line) for line in lines), err[-4000:]
    workers = re.split(r"^[WEI]\d{4} ", err, maxsplit=1, flags=re.M)[0]  # before torchrun's own report
    assert "Traceback" not in workers and len(re.findall(r"hookmix: note: sharded checkpoint file", err)) == 1
    assert _files(copy) == before


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, cache) -> str:
    """A run of the command line: `hookmix train mnist1d-mlp --nproc 2 run.strategy=fsdp`, checkpoints at 2, 4."""
    out = str(tmp_path_factory.mktemp("cli") / "run")
    overrides = [f"plugins.mnist1d.{k}={v}" for k, v in DATA.items()]
    overrides += ["run.strategy=fsdp", "run.steps=4", "run.checkpoint_interval=2", "run.threads=1"]
    argv = ["train", "mnist1d-mlp", *overrides, "--nproc", "2", "--out", out, "--quiet"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from engine.cli.main import main

    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_command_line_resume_falls_back_and_reports_total_damage_in_one_line(cli_run, tmp_path, capsys):
    """One process resumes the FSDP run's checkpoints: a truncated shard of step 4 falls back to step 2 (one note);
    with every shard damaged, the error is one line and exit 2, after the note, and nothing is written."""
    copy = str(tmp_path / "fallback")
    shutil.copytree(cli_run, copy)
    _halve(f"{copy}/checkpoints/step-00000004.dcp/__1_0.distcp")
    code, stdout, err = _cli(capsys, "train", "--resume", copy, "run.steps=6", "--quiet")
    assert code == 0 and "done: 6 steps" in stdout and len(_note(err, copy, "truncated")) == 1, err

    copy = str(tmp_path / "all")
    _damage_all(cli_run, copy)
    before = _files(copy)
    code, _, err = _cli(capsys, "train", "--resume", copy, "run.steps=6", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and "Traceback" not in err, err
    assert lines[0].startswith("hookmix: note: sharded checkpoint file ") and "step-00000004.dcp" in lines[0]
    assert re.fullmatch("hookmix: error: " + _last(copy), lines[1]), lines[1]
    assert _files(copy) == before
