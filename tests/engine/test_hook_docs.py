"""Every hook states its calling convention and is documented in docs/hooks.md."""

from __future__ import annotations

import inspect
import os
import re

import pytest

from engine import hookspecs
from engine.manager import WRAPPER_HOOKS, Manager

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONVENTIONS = ("collect-all", "exclusive", "ordered fold", "wrapper", "per plugin")
HOOKS = [n for n in vars(hookspecs) if n.startswith("hookmix_")]


def _convention(name: str) -> list[str]:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    return [c for c in CONVENTIONS if c in doc.splitlines()[0]] if doc else []


def test_the_hook_list_is_the_managers():
    assert HOOKS == Manager.hook_names() and len(HOOKS) >= 20


@pytest.mark.parametrize("name", HOOKS)
def test_hook_docstring_states_one_calling_convention(name):
    doc = inspect.getdoc(getattr(hookspecs, name))
    assert doc, f"{name} has no docstring"
    found = _convention(name)
    assert len(found) == 1, f"{name}: the summary line must name one of {CONVENTIONS}, found {found}"
    expected = ("exclusive" if name in hookspecs.EXCLUSIVE else "wrapper" if name in WRAPPER_HOOKS
                else "per plugin" if name in hookspecs.PER_PLUGIN else None)
    if expected is not None:
        assert found == [expected], f"{name} is treated as {expected} by the engine but documented as {found}"
    else:
        assert found[0] in ("collect-all", "ordered fold"), f"{name}: {found[0]} but the engine does not treat it so"


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
