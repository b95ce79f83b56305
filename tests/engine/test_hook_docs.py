"""Every hook declares its calling convention on its spec, and everything that needs it reads it from there:
the manager, the plan, the FSDP full-weight rule and docs/hooks.md."""

from __future__ import annotations

import inspect
import os
import re

import pytest

from engine import BadInput, Plugin, hookimpl, hookspecs
from engine import manager as manager_module
from engine.hookspecs import KINDS, Convention
from engine.manager import Manager
from engine.testing import TOY, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOKS = [n for n in vars(hookspecs) if n.startswith("hookmix_")]


def test_every_hook_declares_its_convention_on_its_spec_and_the_manager_lists_them_all():
    assert HOOKS == hookspecs.hook_names() == Manager.hook_names() and len(HOOKS) >= 20
    for name in HOOKS:
        convention = getattr(hookspecs, name).convention
        assert isinstance(convention, Convention) and convention.kind in KINDS, name
        assert hookspecs.convention(name) is convention
    tables = [
        (hookspecs, "CONVENTIONS"),
        (hookspecs, "EXCLUSIVE"),
        (manager_module, "COMBINE"),
        (manager_module, "NOTIFY"),
    ]
    assert not [name for module, name in tables if hasattr(module, name)]  # the spec is the one place


def test_a_spec_declares_its_convention_as_pluggy_declares_firstresult():
    kinds = {name: hookspecs.convention(name).kind for name in HOOKS}
    assert {n for n, k in kinds.items() if k == "wrapper"} == {"hookmix_optimizer_step", "hookmix_evaluate"}
    assert hookspecs.convention("hookmix_aux_outputs") == Convention("merge", into="outputs", names="output")
    assert hookspecs.convention("hookmix_transform_logits") == Convention("fold", into="logits")
    for name in HOOKS:  # pluggy's own marker: only the wrapper hooks take the engine's one inner result
        assert getattr(hookspecs, name).hookmix_spec["firstresult"] == (kinds[name] == "wrapper"), name
    with pytest.raises(ValueError):
        Convention("collect-all")  # one vocabulary


@pytest.mark.parametrize("name", HOOKS)
def test_hook_docstring_names_its_convention_in_its_summary_line(name):
    doc = inspect.getdoc(getattr(hookspecs, name))
    assert doc, f"{name} has no docstring"
    summary = doc.splitlines()[0]
    found = [kind for kind in KINDS if re.search(rf"\({kind}\b", summary)]
    assert found == [hookspecs.convention(name).kind], (
        f"{name}: its spec declares {hookspecs.convention(name).kind!r} but its summary line says {found}"
    )


class Cheater(Plugin):
    """Implements the evaluation without a wrapper."""

    name = "cheater"

    @hookimpl
    def hookmix_evaluate(self, model):
        return {}


class Term(Plugin):
    """Returns a loss term."""

    name = "term"

    @hookimpl
    def hookmix_loss_terms(self):
        return {"term": 1.0}


def test_the_manager_reads_the_convention_for_callers_validation_and_the_plan(monkeypatch):
    result = train(TOY, steps=1)
    manager = result.trainer.manager
    assert manager.conventions == hookspecs.conventions()
    plan = result.trainer.stream.getvalue()
    assert re.search(r"\n  \* hookmix_data +toy_data\n", plan)  # exclusive
    assert re.search(r"\n    hookmix_loss_terms +toy_ce\n", plan)
    with pytest.raises(BadInput, match="hookmix_evaluate must be implemented with wrapper=True"):
        Manager({"cheater": Cheater()})
    # the caller follows the declaration: loss terms redeclared as notify return nothing
    monkeypatch.setattr(hookspecs.hookmix_loss_terms, "convention", Convention("notify"))
    assert Manager({"term": Term()}).loss_terms({}, {}, None) is None


def test_the_fsdp_rule_reads_which_hooks_see_row_shards_from_the_specs():
    shards = {n for n in HOOKS if hookspecs.convention(n).fsdp_weights == "shards"}
    assert shards == {"hookmix_before_backward", "hookmix_after_backward", "hookmix_optimizer_step", "hookmix_evaluate"}
    gathered = {n for n in HOOKS if hookspecs.convention(n).fsdp_weights == "gathered"}
    assert gathered == {"hookmix_after_optimizer_step", "hookmix_eval_metrics"}
    pytest.importorskip("torch.distributed.fsdp")
    from engine.distributed import fsdp
    from engine.distributed.fsdp import check_full_weight_plugins

    class NeedsFull(Plugin):
        """Needs full weights and observes the backward."""

        name = "needs_full"
        needs_full_weights = True

        @hookimpl
        def hookmix_after_backward(self, model):
            return None

    with pytest.raises(BadInput, match=r"'needs_full' needs full weight matrices .* in hookmix_after_backward"):
        check_full_weight_plugins(Manager({"needs_full": NeedsFull()}))
    assert not hasattr(fsdp, "UNGATHERED_HOOKS")


def _sections() -> dict[str, str]:
    path = os.path.join(ROOT, "docs", "hooks.md")
    assert os.path.exists(path), "docs/hooks.md is missing (python docs/gen_hooks.py writes it)"
    text = open(path, encoding="utf-8").read()
    parts = re.split(r"^###\s+`?(hookmix_\w+)`?\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_section_in_docs_hooks_md_with_its_declared_convention(name):
    sections = _sections()
    assert name in sections, f"docs/hooks.md has no `### {name}` section"
    summary = inspect.getdoc(getattr(hookspecs, name)).splitlines()[0]
    assert summary in sections[name], f"docs/hooks.md's {name} section is stale (python docs/gen_hooks.py)"
    kind = hookspecs.convention(name).kind
    assert f"Convention: **{kind}**" in sections[name], f"docs/hooks.md's {name} section is stale"


def test_docs_hooks_md_documents_no_hook_that_does_not_exist():
    assert sorted(set(_sections()) - set(HOOKS)) == []
