"""Generated bad input for the [run] table and the command line, each run through the real CLI
in-process: exit 2, exactly one stderr line (naming the key for [run] values), no traceback,
nothing written. Every RunConfig field is covered; a new field fails the coverage test until its
type has cases here."""

from __future__ import annotations

import os
import typing

import attrs
import pytest
from reliability_helpers import TINY_GPT, cli, one_line

from engine.config.recipe import RunConfig

attrs.resolve_types(RunConfig)
# the smallest valid value of each integer field (a zero below it is a generated bad value)
MIN_INT = {"steps": 1, "grad_accum": 1, "log_interval": 1, "keep_checkpoints": 1}
# values outside each string field's allowed set
BAD_STRINGS = {
    "device": ["meta", "mps", "xla", '""', '"cuda:x"', '"cpu:0"', "CUDA"],
    "precision": ["fp16", '""', "FP32", "bf16x"],
    "out": ['"run\\u0000dir"'],
    "dist_backend": ["mpi", '""', "GLOO", "ucc"],
    "strategy": ["fsdp2", '""', "DDP", "zero3"],
}

CATEGORIES = {
    int: lambda name: {
        "wrong type": ['"abc"', "1.5", "1e23", "true", "[1]", "{a = 1}"],
        "non-finite": ["nan", "inf", "-inf"],
        "negative": ["-1", "-9223372036854775808"],
        "zero": ["0"] if MIN_INT.get(name, 0) > 0 else [],
        "huge": ["9223372036854775808", "100000000000000000000000000000"],
    },
    float: lambda name: {
        "wrong type": ['"abc"', "true", "[1.0]", "{a = 1}"],
        "non-finite": ["nan", "inf", "-inf", "1e400"],
        "negative": ["-1.0", "-1e-300", "-1"],
    },
    bool: lambda name: {
        "wrong type": ['"yes"', "1", "0", "1.5", "[true]", '"true"'],
    },
    str: lambda name: {
        "wrong type": ["1", "1.5", "true", '["cpu"]', "nan"],
        "not allowed": BAD_STRINGS.get(name, []),
    },
    list[str]: lambda name: {
        "wrong type": ['"gpt"', "5", "[1]", "[[]]", "nan"],
        "empty": ["[]"],
        "unknown name": ['["tinyshakespeare", "gpt", "adamw", "cross_entropy", "nope"]'],
        "repeated": ['["tinyshakespeare", "gpt", "gpt", "adamw", "cross_entropy"]'],
    },
}


def field_cases() -> list[tuple[str, str, str]]:
    """(field, category, override) for every RunConfig field; fails on a field type without cases."""
    cases = []
    for f in attrs.fields(RunConfig):
        if f.type not in CATEGORIES:
            raise AssertionError(f"RunConfig.{f.name} has type {f.type}, which has no generated cases here")
        for category, values in CATEGORIES[f.type](f.name).items():
            cases += [(f.name, category, f"run.{f.name}={v}") for v in values]
    return cases


STRUCTURE_CASES = [
    "run=5",
    'run="x"',
    "run=[1]",
    "run.steps.x=1",
    "run.stepz=1",
    "run.Steps=100",
    "run.plugins.x=1",
    "plugins=5",
    "plugins.nope.x=1",
    "plugins.adamw=3",
    "plugins.adamw.nope=1",
    "run.steps+=5",
    "run.plugins-=nope",
    "run.plugins+=nope",
    "foo.bar=1",
    "=5",
    "run..steps=5",
    "run.steps",
    "description.x=1",
]

CLI_CASES = [
    ["train"],
    ["train", "nope-recipe"],
    ["train", "missing.toml"],
    ["train", "shakespeare-gpt", "--bogus"],
    ["train", "shakespeare-gpt", "--out"],
    ["train", "--resume", "no/such/run"],
    ["train", "--resume"],
    ["train", "--resume", "no/such/run", "--out", "run"],
    ["train", "shakespeare-gpt", "--resume", "run"],
    ["bogus-verb"],
    ["describe", "nope"],
    ["describe"],
    ["bench", "nope"],
    ["bench", "overhead", "--steps", "x"],
    ["plugins", "--bogus"],
    ["train", "http://localhost:9/recipe.toml"],
    ["train", "s3x://bucket/recipe.toml"],
]


def test_every_run_field_has_cases_in_every_category_of_its_type():
    cases = field_cases()
    covered = {name for name, _, _ in cases}
    assert covered == {f.name for f in attrs.fields(RunConfig)}
    for f in attrs.fields(RunConfig):
        empty = [
            c
            for c, values in CATEGORIES[f.type](f.name).items()
            if not values and not (c == "zero" and MIN_INT.get(f.name, 0) == 0)
        ]
        assert not empty, f"RunConfig.{f.name}: no bad values for {empty}"
    assert typing.get_origin(list[str]) is list


def _refused(argv: list[str], tmp_path, monkeypatch, capsys) -> str:
    monkeypatch.chdir(tmp_path)  # a default run directory (runs/...) would appear here
    code, stdout, err = cli(*argv, capsys=capsys)
    line = one_line(err)
    assert code == 2, (argv, line)
    assert line.startswith("hookmix: error: "), line
    assert os.listdir(tmp_path) == [], f"{argv} wrote {os.listdir(tmp_path)}"
    assert "step " not in stdout
    return line


@pytest.mark.parametrize("name, category, override", field_cases())
def test_bad_run_value_is_refused(name, category, override, tmp_path, monkeypatch, capsys):
    out = [] if name == "out" else ["--out", str(tmp_path / "run")]  # --out would replace run.out
    line = _refused(["train", "shakespeare-gpt", *TINY_GPT, override, *out], tmp_path, monkeypatch, capsys)
    assert name in line, f"{override}: the message does not name {name}: {line}"


@pytest.mark.parametrize("override", STRUCTURE_CASES)
def test_bad_override_structure_is_refused(override, tmp_path, monkeypatch, capsys):
    _refused(
        ["train", "shakespeare-gpt", *TINY_GPT, override, "--out", str(tmp_path / "run")], tmp_path, monkeypatch, capsys
    )


@pytest.mark.parametrize("argv", CLI_CASES, ids=" ".join)
def test_bad_command_line_is_refused(argv, tmp_path, monkeypatch, capsys):
    _refused(argv, tmp_path, monkeypatch, capsys)
