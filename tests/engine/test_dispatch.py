"""The hook callers the manager writes per run (engine/dispatch.py): order, arguments, results, tracebacks;
tracing and profiling of every hook, wrappers included."""

from __future__ import annotations

import ast
import inspect
import re
import time
import traceback

import pytest
import torch

from engine import Plugin, hookimpl
from engine.dispatch import make_caller
from engine.errors import PluginConflict
from engine.failures.blame import failing_plugin
from engine.hookspecs import Convention
from engine.manager import Manager
from engine.perf.profile import Profile
from engine.testing import TOY, train

COLLECT, NOTIFY, EXCLUSIVE = Convention("collect"), Convention("notify"), Convention("exclusive")


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
        COLLECT,
    )
    assert caller("B", "O", "S") == [("p1", {"a": 1}), ("p3", {"b": 2})]
    assert seen == [("first", "B", "O", "S"), ("quiet", "O"), ("last", "S")]
    assert caller(state="S", outputs="O", batch="B") == [("p1", {"a": 1}), ("p3", {"b": 2})]  # keywords too
    assert make_caller("hookmix_on_log", ("metrics", "state"), [], COLLECT)({}, None) == []


def test_a_fold_passes_each_result_on_and_keeps_the_value_on_none():
    caller = make_caller(
        "hookmix_transform_logits",
        ("logits", "role", "state"),
        [
            ("double", lambda logits: logits * 2, ("logits",)),
            ("skip", lambda role: None, ("role",)),
            ("add", lambda logits, role: logits + len(role), ("logits", "role")),
        ],
        Convention("fold", into="logits"),
    )
    assert caller(3, "student", None) == 3 * 2 + len("student")
    assert "logits = r" in inspect.getsource(caller) and "results" not in inspect.getsource(caller)


def test_a_notify_caller_only_calls():
    seen = []
    caller = make_caller(
        "hookmix_after_backward",
        ("model", "state"),
        [
            ("a", lambda model: seen.append(("a", model)) or "ignored", ("model",)),
            ("b", lambda state, model: seen.append(("b", state, model)), ("state", "model")),
        ],
        NOTIFY,
    )
    assert caller("M", "S") is None
    assert seen == [("a", "M"), ("b", "S", "M")]
    source = inspect.getsource(caller)
    assert "results" not in source and "    a__hookmix_after_backward(model)" in source


def test_a_merge_caller_merges_named_results_and_names_both_plugins_on_a_clash():
    def terms(*named):
        return [(f"p{i}", lambda outputs, n=n: n, ("outputs",)) for i, n in enumerate(named)]

    merge, terms_merge = Convention("merge"), Convention("merge", names="loss term")
    one = make_caller("hookmix_loss_terms", ("batch", "outputs", "state"), terms({"ce": 1}), terms_merge)
    returned = {"ce": 1}
    merged = make_caller("hookmix_loss_terms", ("outputs",), [("p", lambda: returned, ())], merge)(None)
    assert one(None, None, None) == {"ce": 1} and merged == returned and merged is not returned  # a copy
    assert make_caller("hookmix_loss_terms", ("outputs",), terms(None), merge)(None) == {}
    two = make_caller("hookmix_loss_terms", ("batch", "outputs", "state"), terms({"ce": 1}, None, {"kd": 2}), merge)
    assert two(None, None, None) == {"ce": 1, "kd": 2}
    clash = make_caller(
        "hookmix_loss_terms", ("batch", "outputs", "state"), terms({"ce": 1}, {"kd": 2}, {"ce": 3}), terms_merge
    )
    with pytest.raises(PluginConflict, match=r"loss term 'ce' returned by both p0 and p2; rename one"):
        clash(None, None, None)
    into_outputs = Convention("merge", into="outputs", names="output")
    into = make_caller("hookmix_aux_outputs", ("outputs",), terms({"feat": 1}), into_outputs)
    outputs = {"logits": 0}
    assert into(outputs) is outputs and outputs == {"logits": 0, "feat": 1}
    with pytest.raises(PluginConflict, match=r"output 'logits' returned by both the model outputs and p0"):
        make_caller("hookmix_aux_outputs", ("outputs",), terms({"logits": 1}), into_outputs)({"logits": 0})


def test_an_exclusive_caller_returns_its_one_result():
    caller = make_caller(
        "hookmix_forward", ("model", "batch", "state"), [("p", lambda batch: {"x": batch}, ("batch",))], EXCLUSIVE
    )
    assert caller(None, 5, None) == {"x": 5}
    assert make_caller("hookmix_forward", ("model", "batch", "state"), [], EXCLUSIVE)(None, 5, None) is None
    with pytest.raises(ValueError, match="takes one provider, not 2"):
        make_caller("hookmix_forward", ("model",), [("a", lambda: 1, ()), ("b", lambda: 2, ())], EXCLUSIVE)


def test_a_caller_refuses_an_argument_the_spec_does_not_have():
    with pytest.raises(ValueError, match=r"p\.hookmix_on_log takes \['loss'\], not in the spec"):
        make_caller("hookmix_on_log", ("metrics", "state"), [("p", lambda loss: None, ("loss",))], COLLECT)


def test_a_plugin_name_is_a_string_literal_and_part_of_an_identifier_never_code():
    odd = "a plugin name'); import os; ('"
    seen = []
    impls = [(odd, lambda loss: seen.append(loss) or 1, ("loss",)), ("2nd", lambda loss: 2, ("loss",))]
    caller = make_caller("hookmix_before_backward", ("loss", "state"), impls, COLLECT)
    tree = ast.parse(inspect.getsource(caller))
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    callees = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "a_plugin_name____import_os______hookmix_before_backward" in callees
    assert "_2nd__hookmix_before_backward" in callees
    assert caller("L", None) == [(odd, 1), ("2nd", 2)] and seen == ["L"]  # the name itself comes back unchanged
    same = make_caller("hookmix_on_log", ("metrics",), [("a-b", lambda: 1, ()), ("a_b", lambda: 2, ())], COLLECT)
    assert same(None) == [("a-b", 1), ("a_b", 2)]  # two names that map to one identifier stay apart


class Tracer(Plugin):
    """Observes the loss before backward."""

    name = "tracer"

    @hookimpl
    def hookmix_before_backward(self, loss):
        return None


class Around(Plugin):
    """Wraps the optimizer step and the evaluation; restores state in load_plugin_state."""

    name = "around"

    @hookimpl(wrapper=True)
    def hookmix_optimizer_step(self, optimizer):
        return (yield)

    @hookimpl(wrapper=True)
    def hookmix_evaluate(self):
        time.sleep(0.001)
        metrics = yield
        return {**metrics, "around/seen": 1.0}


def test_hookmix_trace_prints_every_call_with_its_plugin_wrappers_included(monkeypatch, capsys):
    monkeypatch.setenv("HOOKMIX_TRACE", "1")
    result = train([*TOY, Tracer, Around], steps=2)
    err = capsys.readouterr().err
    assert err.count("[hookmix trace] hookmix_before_backward -> tracer\n") == 2
    assert "[hookmix trace] hookmix_loss_terms -> toy_ce\n" in err
    assert err.count("[hookmix trace] hookmix_optimizer_step -> around (wrapper)\n") == 2
    assert err.count("[hookmix trace] hookmix_evaluate -> around (wrapper)\n") == 1  # at the end
    assert result.metrics[-1]["around/seen"] == 1.0  # the traced wrapper still returns what it returns


def test_the_manager_dispatches_through_written_callers():
    manager = Manager({"tracer": Tracer()})
    assert "    tracer__hookmix_before_backward(loss)" in inspect.getsource(manager._calls["hookmix_before_backward"])
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


def test_hookmix_profile_times_every_plugin_wrappers_included_each_over_its_own_code(monkeypatch):
    def slow_evaluation(model, state):
        time.sleep(0.05)
        return {"val/x": 1.0}

    monkeypatch.setenv("HOOKMIX_PROFILE", "1")
    manager = Manager({"tracer": Tracer(), "around": Around()}, evaluate=slow_evaluation)
    assert manager.evaluate(None, None) == {"val/x": 1.0, "around/seen": 1.0}
    manager.before_backward(torch.tensor(1.0), None)
    profile = manager.profile
    assert {key: calls for key, (calls, _) in profile.totals.items()} == {
        ("hookmix_evaluate", "around"): 1,
        ("hookmix_before_backward", "tracer"): 1,
    }
    assert 0.001 <= profile.seconds("hookmix_evaluate", "around") < 0.05  # the inner evaluation is not its time


def test_a_profile_times_the_callables_it_is_given():
    profile = Profile()

    def wrapper():
        result = yield
        return result + 1

    timed = profile.timed("hookmix_on_log", "p", lambda x: x * 2)
    assert timed(3) == 6
    around = profile.timed_wrapper("hookmix_evaluate", "w", wrapper)()
    next(around)
    with pytest.raises(StopIteration) as stop:
        around.send(41)
    assert stop.value.value == 42
    failing = profile.timed_wrapper("hookmix_evaluate", "w", wrapper)()
    next(failing)
    with pytest.raises(ValueError):  # the inner call failed: the wrapper sees the exception, and it propagates
        failing.throw(ValueError("inner"))
    assert {key: calls for key, (calls, _) in profile.totals.items()} == {
        ("hookmix_on_log", "p"): 1,
        ("hookmix_evaluate", "w"): 2,
    }


class Raises(Plugin):
    """Raises inside its loss-terms hook."""

    name = "raises"

    @hookimpl
    def hookmix_loss_terms(self, outputs):
        raise RuntimeError("inside the plugin")


class Term(Plugin):
    """Returns a loss term."""

    name = "term"

    @hookimpl
    def hookmix_loss_terms(self, outputs):
        return {"term": 1.0}


def _caller_frame(plugins: dict) -> tuple[traceback.FrameSummary, str]:
    with pytest.raises(RuntimeError, match="inside the plugin") as failure:
        Manager(plugins).loss_terms({}, {"logits": None}, None)
    frames = traceback.extract_tb(failure.value.__traceback__)
    return next(f for f in frames if f.name == "hookmix_loss_terms"), "".join(traceback.format_exception(failure.value))


def test_a_traceback_through_a_caller_shows_its_source_line_and_the_plugins_name():
    caller, text = _caller_frame({"term": Term(), "raises": Raises()})
    assert re.search(r'File "<hookmix caller hookmix_loss_terms( #\d+)?>", line 6, in hookmix_loss_terms\n', text)
    assert "\n    r = raises__hookmix_loss_terms(outputs)\n" in text
    assert 'raise RuntimeError("inside the plugin")' in text  # and on into the plugin's own code
    other, _ = _caller_frame({"raises": Raises(), "term": Term()})  # another plan: another text, another name
    assert other.filename != caller.filename and other.filename.startswith("<hookmix caller hookmix_loss_terms")
    assert (other.lineno, other.line) == (3, "r = raises__hookmix_loss_terms(outputs)")
    again, _ = _caller_frame({"term": Term(), "raises": Raises()})  # the same text: the same name
    assert (again.filename, again.lineno, again.line) == (caller.filename, 6, caller.line)


class Restores(Plugin):
    """Fails to restore its checkpoint state."""

    name = "restores"

    @hookimpl
    def hookmix_load_plugin_state(self, plugin_state):
        raise ValueError(f"cannot restore {plugin_state}")

    @hookimpl(wrapper=True)
    def hookmix_optimizer_step(self):
        raise RuntimeError("before the step")
        yield


def test_blame_finds_the_plugin_by_its_hook_code_however_the_hook_was_called():
    plugins = {"tracer": Tracer(), "restores": Restores(), "also": Restores()}  # one class under two names
    manager = Manager(plugins)
    with pytest.raises(ValueError) as failure:  # called by the manager itself, per plugin
        manager.load_plugin_states({"also": {"x": 1}}, None)
    assert failing_plugin(failure.value, plugins) == "also"
    with pytest.raises(RuntimeError) as failure:  # a wrapper, called by pluggy
        manager.optimizer_step(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), None)
    assert failing_plugin(failure.value, plugins) == "restores"  # the outermost wrapper, which raised first

    def engine_code(name="tracer"):  # a local called ``name`` holding a plugin's name does not blame it
        raise RuntimeError("the engine's own")

    with pytest.raises(RuntimeError) as failure:
        engine_code()
    assert failing_plugin(failure.value, plugins) is None
