"""Turning an exception raised by a plugin's setup hook into one line that names the plugin.

A config value can pass its validators and still fail inside torch (a shape torch refuses, an
allocation too large for the machine). During setup such an error is the recipe's fault, not a
crash: it becomes :class:`BadInput` naming the plugin whose hook raised it and, when the error
message mentions one, the config key.
"""

from __future__ import annotations

import inspect
import os
import re
import traceback
import types

import attrs

from engine.errors import BadInput, HookmixError, TrainingFailure

_RUN_DIR = os.path.join("engine", "rundir", "")  # the modules that write the run directory


def _writing_outputs(exc: BaseException) -> bool:
    return any(_RUN_DIR in frame.f_code.co_filename for frame, _ in traceback.walk_tb(exc.__traceback__))


def failing_plugin(exc: BaseException, plugins: dict, built: dict | None = None) -> str | None:
    """The plugin (of ``plugins``) whose hook raised ``exc``: the outermost hook call in the traceback.

    A hook call is a frame running the code of one of the plugins' hook implementations, however it
    was called (a written caller, pluggy, the manager itself); where two enabled plugins share that
    code (one class under two names), the frame's ``self`` says which. Outermost, because a hook may
    run another run's plugins (a teacher builds its model). Outside hooks (the loop calls
    ``state.data.train_batch``, ``model(...)``), a method of an object in ``built`` ({id(object):
    plugin that built it}) or of a plugin names its plugin.
    """
    frames = [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
    hooks = _hook_code(plugins)
    by_id = {id(plugin): name for name, plugin in plugins.items()}
    for frame in frames:
        names = hooks.get(frame.f_code, ())
        if len(names) > 1:
            names = [n for n in names if by_id.get(id(frame.f_locals.get("self"))) == n]
        if len(names) == 1:
            return names[0]
    owners = by_id | (built or {})
    for frame in frames:  # a method of what a plugin built, or of a plugin outside its hooks
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in owners:
            return owners[id(owner)]
    return None


def _hook_code(plugins: dict) -> dict[types.CodeType, list[str]]:
    """{code object of a hook implementation: the plugins that implement a hook with it} (the function
    as declared and, for a decorated one, the function it wraps)."""
    code: dict[types.CodeType, list[str]] = {}
    for name, plugin in plugins.items():
        for attr in dir(type(plugin)):
            method = getattr(plugin, attr) if attr.startswith("hookmix_") else None
            if not callable(method):  # not a hook, or switched off (``hookmix_x = None``)
                continue
            function = getattr(method, "__func__", method)
            for each in {function, inspect.unwrap(function)}:
                names = code.setdefault(each.__code__, []) if hasattr(each, "__code__") else [name]
                if name not in names:
                    names.append(name)
    return code


def mentioned_key(message: str, config) -> str | None:
    """The first config field named in ``message`` (e.g. torch's error repeats an argument name)."""
    if config is None or not attrs.has(type(config)):
        return None
    for f in attrs.fields(type(config)):
        if re.search(rf"\b{re.escape(f.name)}\b", message):
            return f.name
    return None


def setup_failure(exc: Exception, what: str, plugins: dict) -> BadInput:
    """Bad input for ``exc`` raised while the setup step ``what`` (e.g. "build the model") ran."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    cause = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    name = failing_plugin(exc, plugins)
    if name is None:
        return BadInput(f"setup failed to {what} ({cause}); check the plugin settings of the recipe")
    key = mentioned_key(text, getattr(plugins[name], "config", None))
    where = f"plugins.{name}.{key}" if key else f"[plugins.{name}]"
    return BadInput(f"plugin {name!r} failed to {what} ({cause}); check {where}")


def built_by(state, manager) -> dict[int, str]:
    """{id(object): the plugin that built it} for the data, every model submodule and the optimizer."""
    built = {}
    for hook_name, objects in [
        ("hookmix_data", [state.data]),
        ("hookmix_model", list(state.model.modules())),
        ("hookmix_optimizer", [state.optimizer]),
    ]:
        providers = manager.providers(hook_name)
        if providers:
            built.update({id(o): providers[0] for o in objects})
    return built


def step_failure(exc: Exception, step: int, state, manager) -> str:
    """The first part of a one-line training failure for ``exc`` raised during step ``step``."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    cause = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    plugins = manager.plugins
    name = failing_plugin(exc, plugins, built_by(state, manager))
    if name is None:
        return f"step {step}: training failed ({cause})"
    key = mentioned_key(text, getattr(plugins[name], "config", None))
    where = f"plugins.{name}.{key}" if key else f"[plugins.{name}]"
    return f"step {step}: plugin {name!r} failed ({cause}); check {where}"


def way_out(url: str, saved_step: int | None) -> str:
    """How to continue after a training failure: named in every such message."""
    if saved_step is None:
        return (
            f"no checkpoint was written yet: `hookmix train --resume {url} [KEY=VALUE ...]` starts it again from step 0"
        )
    return (
        f"the last good checkpoint (step {saved_step}) is intact: "
        f"`hookmix train --resume {url} [KEY=VALUE ...]` continues from it"
    )


def training_failure(
    exc: Exception, state, manager, saved_step: int | None, step: int | None = None
) -> TrainingFailure | None:
    """The one-line failure for ``exc`` raised while training step ``step`` (1-based: the step being run,
    its logging, evaluation and checkpoint included), ending with the way out; ``None`` for errors that
    are already one line of another kind (bad input found mid-run).

    ``step`` defaults to ``state.step + 1``, which is right only before the optimizer step: from
    ``hookmix_after_optimizer_step`` on, ``state.step`` already counts the step, so the loop passes it.
    """
    step = state.step + 1 if step is None else step
    out = way_out(state.run_dir.url(), saved_step)
    if isinstance(exc, TrainingFailure):
        return TrainingFailure(f"{str(exc).splitlines()[0]}; {out}")
    if isinstance(exc, HookmixError):
        return None
    if isinstance(exc, OSError) and _writing_outputs(exc):  # disk full, a vanished mount: checkpoints are atomic
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = f": {exc.filename}" if exc.filename else ""
        return TrainingFailure(f"step {step}: writing the run directory failed ({reason}{where}); {out}")
    return TrainingFailure(f"{step_failure(exc, step, state, manager)}; {out}")
