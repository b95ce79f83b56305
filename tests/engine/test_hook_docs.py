"""Every hook states its calling convention and is documented in docs/hooks.md."""

from __future__ import annotations

import inspect
import os
import re

import pytest

from engine import hookspecs
from engine.manager import Manager

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONVENTIONS = ("collect-all", "exclusive", "ordered fold", "wrapper", "per plugin")
HOOKS = [n for n in vars(hookspecs) if n.startswith("hookmix_")]


def _convention(name: str) -> list[str]:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    return [c for c in CONVENTIONS if c in doc.splitlines()[0]] if doc else []


def test_the_hook_list_is_the_managers_and_every_hook_has_a_convention_as_data():
    assert HOOKS == Manager.hook_names() == list(hookspecs.CONVENTIONS) and len(HOOKS) >= 20
    assert set(hookspecs.CONVENTIONS.values()) <= set(CONVENTIONS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_docstring_states_one_calling_convention(name):
    doc = inspect.getdoc(getattr(hookspecs, name))
    assert doc, f"{name} has no docstring"
    found = _convention(name)
    assert found == [hookspecs.CONVENTIONS[name]], (
        f"{name}: the engine treats it as {hookspecs.CONVENTIONS[name]} (hookspecs.CONVENTIONS) "
        f"but its summary line says {found}"
    )


def _sections() -> dict[str, str]:
    path = os.path.join(ROOT, "docs", "hooks.md")
    assert os.path.exists(path), "docs/hooks.md is missing (python docs/gen_hooks.py writes it)"
    text = open(path, encoding="utf-8").read()
    parts = re.split(r"^###\s+`?(hookmix_\w+)`?\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_section_in_docs_hooks_md(name):
    sections = _sections()
    assert name in sections, f"docs/hooks.md has no `### {name}` section"
    summary = inspect.getdoc(getattr(hookspecs, name)).splitlines()[0]
    assert summary in sections[name], f"docs/hooks.md's {name} section is stale (regenerate it)"


def test_docs_hooks_md_documents_no_hook_that_does_not_exist():
    assert sorted(set(_sections()) - set(HOOKS)) == []
