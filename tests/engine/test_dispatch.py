"""The hook callers the manager writes per run (engine/dispatch.py): order, arguments, results."""

from __future__ import annotations

import pytest
import torch

from engine import Plugin, hookimpl
from engine.dispatch import make_caller
from engine.errors import PluginConflict
from engine.manager import Manager
from engine.testing import TOY, train


def test_a_caller_calls_in_order_with_the_arguments_each_takes_and_skips_none():
    seen = []

    def first(batch, outputs, state):
        seen.append(("first", batch, outputs, state))
        return {"a": 1}

    def quiet(outputs):
        seen.append(("quiet", outputs))

    def last(state):
        seen.append(("last", state))
        return {"b": 2}

    caller = make_caller(
        "hookmix_loss_terms",
        ("batch", "outputs", "state"),
        [("p1", first, ("batch", "outputs", "state")), ("p2", quiet, ("outputs",)), ("p3", last, ("state",))],
    )
    assert caller("B", "O", "S") == [("p1", {"a": 1}), ("p3", {"b": 2})]
    assert seen == [("first", "B", "O", "S"), ("quiet", "O"), ("last", "S")]
    assert caller(state="S", outputs="O", batch="B") == [("p1", {"a": 1}), ("p3", {"b": 2})]  # keywords too
    assert make_caller("hookmix_on_log", ("metrics", "state"), [])({}, None) == []


def test_a_fold_passes_each_result_on_and_keeps_the_value_on_none():
    caller = make_caller(
        "hookmix_transform_logits",
        ("logits", "role", "state"),
        [
            ("double", lambda logits: logits * 2, ("logits",)),
            ("skip", lambda role: None, ("role",)),
            ("add", lambda logits, role: logits + len(role), ("logits", "role")),
        ],
        "fold",
        "logits",
    )
    assert caller(3, "student", None) == 3 * 2 + len("student")
    assert "logits = r" in caller.source and "results" not in caller.source


def test_a_notify_caller_only_calls():
    seen = []
    caller = make_caller(
        "hookmix_after_backward",
        ("model", "state"),
        [
            ("a", lambda model: seen.append(("a", model)) or "ignored", ("model",)),
            ("b", lambda state, model: seen.append(("b", state, model)), ("state", "model")),
        ],
        "call",
    )
    assert caller("M", "S") is None
    assert seen == [("a", "M"), ("b", "S", "M")]
    assert "results" not in caller.source and "    _f0(model)" in caller.source


def test_a_merge_caller_merges_named_results_and_names_both_plugins_on_a_clash():
    def terms(*named):
        return [(f"p{i}", lambda outputs, n=n: n, ("outputs",)) for i, n in enumerate(named)]

    one = make_caller("hookmix_loss_terms", ("batch", "outputs", "state"), terms({"ce": 1}), "merge", what="loss term")
    returned = {"ce": 1}
    merged = make_caller("hookmix_loss_terms", ("outputs",), [("p", lambda: returned, ())], "merge")(None)
    assert one(None, None, None) == {"ce": 1} and merged == returned and merged is not returned  # a copy
    assert make_caller("hookmix_loss_terms", ("outputs",), terms(None), "merge")(None) == {}
    two = make_caller(
        "hookmix_loss_terms",
        ("batch", "outputs", "state"),
        terms({"ce": 1}, None, {"kd": 2}),
        "merge",
        what="loss term",
    )
    assert two(None, None, None) == {"ce": 1, "kd": 2}
    clash = make_caller(
        "hookmix_loss_terms",
        ("batch", "outputs", "state"),
        terms({"ce": 1}, {"kd": 2}, {"ce": 3}),
        "merge",
        what="loss term",
    )
    with pytest.raises(PluginConflict, match=r"loss term 'ce' returned by both p0 and p2; rename one"):
        clash(None, None, None)
    into = make_caller("hookmix_aux_outputs", ("outputs",), terms({"feat": 1}), "merge", "outputs", "output")
    outputs = {"logits": 0}
    assert into(outputs) is outputs and outputs == {"logits": 0, "feat": 1}
    with pytest.raises(PluginConflict, match=r"output 'logits' returned by both the model outputs and p0"):
        make_caller("hookmix_aux_outputs", ("outputs",), terms({"logits": 1}), "merge", "outputs", "output")(
            {"logits": 0}
        )


def test_an_exclusive_caller_returns_its_one_result():
    caller = make_caller(
        "hookmix_forward", ("model", "batch", "state"), [("p", lambda batch: {"x": batch}, ("batch",))], "exclusive"
    )
    assert caller(None, 5, None) == {"x": 5}
    assert make_caller("hookmix_forward", ("model", "batch", "state"), [], "exclusive")(None, 5, None) is None
    with pytest.raises(ValueError, match="takes one provider, not 2"):
        make_caller("hookmix_forward", ("model",), [("a", lambda: 1, ()), ("b", lambda: 2, ())], "exclusive")


def test_a_caller_refuses_an_argument_the_spec_does_not_have():
    with pytest.raises(ValueError, match=r"p\.hookmix_on_log takes \['loss'\], not in the spec"):
        make_caller("hookmix_on_log", ("metrics", "state"), [("p", lambda loss: None, ("loss",))])


def test_the_source_holds_argument_names_only():
    caller = make_caller(
        "hookmix_before_backward", ("loss", "state"), [("a plugin name'); import os; ('", lambda loss: None, ("loss",))]
    )
    assert "import" not in caller.source and "a plugin name" not in caller.source
    caller(torch.tensor(1.0), None)


class Tracer(Plugin):
    """Observes the loss before backward."""

    name = "tracer"

    @hookimpl
    def hookmix_before_backward(self, loss):
        return None


def test_hookmix_trace_prints_every_call_with_its_plugin(monkeypatch, capsys):
    monkeypatch.setenv("HOOKMIX_TRACE", "1")
    train([*TOY, Tracer], steps=2)
    err = capsys.readouterr().err
    assert err.count("[hookmix trace] hookmix_before_backward -> tracer") == 2
    assert "[hookmix trace] hookmix_loss_terms -> " in err


def test_the_manager_dispatches_through_written_callers():
    manager = Manager({"tracer": Tracer()})
    assert "_f0(loss)" in manager._calls["hookmix_before_backward"].source
    assert manager.before_backward is manager._calls["hookmix_before_backward"]  # bound: no method around it


class GradMode(Plugin):
    """Records whether autograd is on in the post-step hook; raises there at step ``fail_at``."""

    name = "grad_mode"
    fail_at = 0

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    @hookimpl
    def hookmix_after_optimizer_step(self, state):
        self.seen.append(torch.is_grad_enabled())
        if state.step == self.fail_at:
            raise RuntimeError("boom")


@pytest.mark.parametrize("c_switch", [True, False], ids=["torch-C-switch", "torch.set_grad_enabled"])
def test_post_step_hooks_run_without_autograd_and_switch_it_back_even_on_an_error(c_switch, monkeypatch):
    switched: list[bool] = []
    if not c_switch:  # a torch without the private C switch: the manager uses the public one as a function

        def public(mode: bool) -> None:
            switched.append(mode)
            torch.set_grad_enabled(mode)

        monkeypatch.setattr("engine.manager._set_grad_enabled", public)
    result = train([*TOY, GradMode], steps=3)
    assert result.trainer.manager.plugins["grad_mode"].seen == [False] * 3
    assert torch.is_grad_enabled()
    assert switched == ([] if c_switch else [False, True] * 3)  # off around each step's hooks, then back
    manager = Manager({"grad_mode": GradMode()})
    manager.plugins["grad_mode"].fail_at = 1
    with pytest.raises(RuntimeError, match="boom"):
        manager.after_optimizer_step(None, None, type("S", (), {"step": 1})())
    assert torch.is_grad_enabled()
