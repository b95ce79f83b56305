"""Fuzzing every shipped plugin's config through the real CLI (in process): the bad-input promise.

Every generated bad value (tests/fuzz/plugin_config_cases.py: wrong types, nan / inf, negative, zero, huge, wrong
lengths, bad list items, values outside a Literal, unknown keys, a non-table) must give: exit code 2,
exactly one line on stderr naming the plugin and the key, no traceback, and no run directory. Values
that are valid for their field are listed with a reason in plugin_config_cases.VALID and checked to be accepted.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections import defaultdict
from pathlib import Path

import attrs
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from plugin_config_cases import BASE, FREE_TEXT, PLUGIN_BASE, VALID, Case, expected_valid, generate, shipped_plugins  # noqa: E402

from engine.cli.main import main  # noqa: E402
from engine.config.recipe import apply_overrides, read_recipe, resolve  # noqa: E402
from engine.config.registry import Registry  # noqa: E402
from engine.errors import BadInput  # noqa: E402

PLUGINS = shipped_plugins()
CASES = generate(PLUGINS)
BY_PLUGIN: dict[str, list[Case]] = defaultdict(list)
for _case in CASES:
    BY_PLUGIN[_case.plugin].append(_case)


def run_cli(argv: list[str]) -> tuple[int | str, str]:
    """(exit code or 'traceback: ...', stderr) of ``hookmix ARGV`` run in this process."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except BaseException as exc:  # an uncaught exception is a traceback for the user
            return f"traceback: {type(exc).__name__}: {exc}", err.getvalue()
    return code, err.getvalue()


def refusal_problem(case: Case, code, stderr: str, out: Path) -> str | None:
    """What breaks the bad-input promise for ``case``, or None."""
    lines = stderr.splitlines()
    if code != 2:
        return f"exit {code!r}, stderr {stderr.strip()[:200]!r}"
    if len(lines) != 1:
        return f"{len(lines)} lines on stderr: {stderr[:300]!r}"
    line = lines[0]
    if "Traceback" in stderr:
        return f"traceback on stderr: {line[:200]!r}"
    if f"plugins.{case.plugin}" not in line or (case.field and case.field not in line):
        return f"the line does not name plugins.{case.plugin}.{case.field}: {line[:200]!r}"
    if out.exists():
        return f"{out} was created"
    return None


def test_every_shipped_plugin_is_covered():
    assert PLUGINS, "no hookmix.plugins entry point of the hookmix distribution: is the package installed?"
    missing = sorted(set(PLUGINS) - set(PLUGIN_BASE))
    assert not missing, (
        f"shipped plugins without fuzz coverage: {missing}; add them to tests/fuzz/plugin_config_cases.PLUGIN_BASE"
    )
    assert not set(PLUGIN_BASE) - set(PLUGINS), "PLUGIN_BASE names plugins that are not shipped"
    for name, cls in PLUGINS.items():
        covered = {c.field for c in BY_PLUGIN[name]}
        assert {"", *(f.name for f in attrs.fields(cls.Config))} <= covered if cls.Config else {""} <= covered


def test_valid_list_names_only_generated_cases():
    """Every exception in plugin_config_cases.VALID / FREE_TEXT names a real field and a generated kind (no stale entries)."""
    generated = {(c.plugin, c.field, c.kind) for c in CASES}
    for (plugin, field), kinds in VALID.items():
        for kind in kinds:
            assert (plugin, field, kind) in generated, f"VALID lists {plugin}.{field}:{kind}, never generated"
    fields = {(c.plugin, c.field) for c in CASES}
    assert FREE_TEXT <= fields


def test_the_generator_is_systematic():
    """The generator stays systematic: every field gets every kind of its type (1,779 cases today)."""
    refused = [c for c in CASES if expected_valid(c) is None]
    assert len(CASES) > 1500 and len(refused) > 1400, (len(CASES), len(refused))


def cli_sample() -> list[Case]:
    """The cases run through the whole CLI in the default suite: the first refused case of every kind and of
    every plugin (each CLI call costs ~50 ms, mostly entry-point metadata, so all of them are marked slow)."""
    picked: dict[str, Case] = {}
    for case in CASES:
        if expected_valid(case) is None:
            picked.setdefault(f"kind:{case.kind}", case)
            picked.setdefault(f"plugin:{case.plugin}", case)
    return list(dict.fromkeys(picked.values()))


def _check_through_cli(cases: list[Case], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOOKMIX_CACHE", str(tmp_path / "cache"))
    failures = []
    for i, case in enumerate(cases):
        out = tmp_path / f"out-{i}"
        code, stderr = run_cli(case.argv(str(out)))
        problem = refusal_problem(case, code, stderr, out)
        if problem:
            failures.append(f"{case.id} ({case.override}): {problem}")
    assert not failures, f"{len(failures)} cases break the bad-input promise:\n" + "\n".join(failures[:20])


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_bad_config_values_are_refused_at_resolve(plugin):
    """Every refused case of the plugin, through the CLI's own resolution path (read, override, resolve):
    one BadInput whose first and only line names plugins.NAME and the key, before anything is built."""
    registry = Registry()
    name, raw = read_recipe(BASE, registry)
    failures = []
    for case in BY_PLUGIN[plugin]:
        if expected_valid(case) is not None:
            continue
        try:
            resolve(name, apply_overrides(raw, [*PLUGIN_BASE[case.plugin], "run.steps=1", case.override]), registry)
        except BadInput as exc:
            problem = refusal_problem(case, 2, f"hookmix: error: {exc}\n", Path("/nonexistent/out"))
        except Exception as exc:  # a traceback for the user
            problem = f"traceback: {type(exc).__name__}: {exc}"
        else:
            problem = "accepted (exit 0: it would train)"
        if problem:
            failures.append(f"{case.id} ({case.override}): {problem}")
    assert not failures, f"{len(failures)} cases break the bad-input promise:\n" + "\n".join(failures[:20])


def test_bad_config_values_through_the_cli(tmp_path, monkeypatch):
    """The whole CLI in process (exit 2, one stderr line, no traceback, no run directory) for a sample that
    covers every kind of bad value and every plugin."""
    sample = cli_sample()
    assert {c.plugin for c in sample} == set(PLUGINS)
    _check_through_cli(sample, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_every_bad_config_value_through_the_cli(plugin, tmp_path, monkeypatch):
    """Every refused case through the whole CLI (about 100 s for all plugins)."""
    _check_through_cli([c for c in BY_PLUGIN[plugin] if expected_valid(c) is None], tmp_path, monkeypatch)


def test_values_listed_as_valid_are_accepted():
    """The exceptions are real: each listed value resolves (so the list cannot hide a refusal)."""
    registry = Registry()
    name, raw = read_recipe(BASE, registry)
    refused = []
    for case in CASES:
        if expected_valid(case) is None:
            continue
        try:
            resolve(name, apply_overrides(raw, [*PLUGIN_BASE[case.plugin], case.override]), registry)
        except BadInput as exc:
            refused.append(f"{case.id}: {exc}")
    assert not refused, "listed as valid but refused:\n" + "\n".join(refused)


def test_the_checker_flags_every_broken_promise(tmp_path):
    """refusal_problem catches each way a refusal can be wrong (so the fuzz test can fail)."""
    case = Case("adamw", "lr", "nan", "plugins.adamw.lr=nan")
    good = "hookmix: error: plugins.adamw: lr=nan must be a number in (0, 1e+06]; fix the value\n"
    assert refusal_problem(case, 2, good, tmp_path / "none") is None
    assert "exit 0" in refusal_problem(case, 0, "", tmp_path / "none")  # accepted: a missing validator
    assert "exit 1" in refusal_problem(case, 1, good, tmp_path / "none")
    assert "traceback" in refusal_problem(case, "traceback: ValueError: x", "", tmp_path / "none")
    assert "2 lines" in refusal_problem(case, 2, good + "warning\n", tmp_path / "none")
    assert "does not name" in refusal_problem(case, 2, "hookmix: error: something failed\n", tmp_path / "none")
    assert "created" in refusal_problem(case, 2, good, tmp_path)
