"""Running a recipe from Python: :func:`train`, :func:`load_recipe`, and what a run gives back (:class:`Result`).

The command line, the benchmarks, the test kit and the experiment drivers all turn a recipe into a
trainer here, so a recipe means the same thing in each of them::

    import engine

    result = engine.train("mnist1d-mlp", "run.steps=50", plugins=[MyLoss])
    result.summary["metrics"], result.metrics[-1], result.model, result.run_dir

``recipe`` is a shipped recipe name, a TOML path or URL, or a dict of the tables a TOML recipe holds
(``{"run": {...}, "plugins": {"adamw": {...}}}``). ``overrides`` are the command line's dotted
``KEY=VALUE`` strings, applied in order. ``plugins`` are plugin classes from the caller's own code:
registered under their ``name`` without an entry point, and enabled: a class the recipe does not list in
``run.plugins`` is appended to it (after the overrides); a listed one keeps its place.

Bad input (a recipe, an override, a plugin set, an output location) raises :class:`engine.BadInput`
with a one-line message before anything is written, as the command line's exit 2 does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Union

import attrs

from engine.config.recipe import Recipe, apply_overrides, read_recipe, resolve
from engine.config.registry import Registry
from engine.errors import BadInput
from engine.plugin import Plugin

if TYPE_CHECKING:
    from typing import IO

    import torch

    from engine.loop import Trainer
    from engine.state import State

#: What a recipe may be given as: a shipped name, a TOML path or URL, or a dict of tables.
RecipeSource = Union[str, os.PathLike, Mapping[str, Any]]


@attrs.define
class Result:
    """What a finished run gives back.

    ``summary`` is what ``summary.json`` holds (steps, wall seconds, plugin versions, the last value of
    every metric); ``metrics`` the ``metrics.jsonl`` records in order (empty on ranks other than 0, which
    write nothing); ``run_dir`` the run directory's URL; ``trainer`` the :class:`engine.Trainer` that ran.
    ``model``, ``state`` and ``plugins`` (the enabled plugin instances by name) are read from it.
    """

    summary: dict
    metrics: list[dict]
    trainer: Trainer
    run_dir: str

    @property
    def state(self) -> State:
        return self.trainer.state

    @property
    def model(self) -> torch.nn.Module:
        """The trained model (the plain module, never a DDP/FSDP wrapper)."""
        return self.trainer.state.model

    @property
    def recipe(self) -> Recipe:
        """The resolved recipe the run trained (every default filled in, as in ``recipe.toml``)."""
        return self.trainer.recipe

    @property
    def plugins(self) -> dict[str, Plugin]:
        return dict(self.trainer.manager.plugins)


def train(
    recipe: RecipeSource | None = None,
    *overrides: str,
    plugins: Iterable[type[Plugin]] = (),
    out: str | None = None,
    resume: bool | str = False,
    quiet: bool = False,
    stream: IO[str] | None = None,
    profile: bool = False,
    stop_at: int | None = None,
    registry: Registry | None = None,
) -> Result:
    """Train ``recipe`` with ``overrides`` to its ``run.steps`` and return the :class:`Result`.

    ``plugins``: plugin classes defined in code, registered and enabled (see the module docstring).
    ``out``: the run directory URL (the CLI's ``--out``; default ``run.out``, else ``runs/<name>-<time>``).
    ``resume``: ``True`` continues the run in ``out`` from its newest checkpoint; a run directory
    continues that run with its own recipe (``recipe`` stays ``None``; overrides still apply), as
    ``hookmix train --resume RUN_DIR`` does. ``quiet`` prints no plan or progress; ``stream`` receives
    them instead of stdout; ``profile`` times every hook (``result.trainer.profile``). ``stop_at`` stops
    after that step with a checkpoint, as an interrupted run would. ``registry`` replaces the installed
    plugins as the place names are looked up (tools and the test kit that assemble their own plugin set);
    it cannot be combined with ``plugins``.
    """
    from engine.loop import Trainer

    trainer = Trainer.from_recipe(
        recipe,
        *overrides,
        plugins=plugins,
        out=out,
        resume=resume,
        quiet=quiet,
        stream=stream,
        profile=profile,
        registry=registry,
    )
    summary = trainer.run(stop_at=stop_at)
    run_dir = trainer.state.run_dir
    metrics = read_metrics(run_dir.read_text("metrics.jsonl")) if trainer.state.is_main else []
    return Result(summary, metrics, trainer, run_dir.url())


def load_recipe(
    recipe: RecipeSource,
    *overrides: str,
    plugins: Iterable[type[Plugin]] = (),
    out: str | None = None,
    registry: Registry | None = None,
) -> Recipe:
    """The resolved recipe :func:`train` would run with these arguments (every default filled in, as
    ``recipe.toml`` holds it), built and checked without training or writing anything.

    ``recipe.run`` is the ``[run]`` table, ``recipe.plugin_configs`` each enabled plugin's config object,
    ``recipe.to_dict()`` the tables as a dict that :func:`train` accepts back.
    """
    resolved, _ = resolve_run(recipe, overrides, plugins=plugins, out=out, registry=registry)
    return resolved


def make_trainer(
    trainer_class: type[Trainer],
    recipe: RecipeSource | None = None,
    *overrides: str,
    plugins: Iterable[type[Plugin]] = (),
    out: str | None = None,
    resume: bool | str = False,
    quiet: bool = False,
    stream: IO[str] | None = None,
    profile: bool = False,
    registry: Registry | None = None,
) -> Trainer:
    """``Trainer.from_recipe``: the recipe resolved, and a trainer made for it (not yet set up).

    Under torchrun an elastic restart of the worker group continues the run directory that an earlier
    attempt of the same launch claimed (decided in ``Trainer.setup``), as ``hookmix train`` does.
    """
    from engine.failures import interrupts

    resolved, registry = resolve_run(recipe, overrides, plugins=plugins, out=out, resume=resume, registry=registry)
    interrupts.check()  # a safe point of start-up (the CLI records signals until here)
    return trainer_class(resolved, registry, resume=bool(resume), stream=stream, quiet=quiet, profile=profile)


def resolve_run(
    recipe: RecipeSource | None,
    overrides: Iterable[str],
    *,
    plugins: Iterable[type[Plugin]] = (),
    out: str | None = None,
    resume: bool | str = False,
    registry: Registry | None = None,
) -> tuple[Recipe, Registry]:
    """The resolved recipe and the registry its plugin names are looked up in; bad input raises."""
    classes = _plugin_classes(plugins)
    registry = _registry(classes, registry)
    if isinstance(resume, str):  # a run directory: its own recipe, continued in place
        name, raw = _recipe_of_run(recipe, out, resume)
        out = resume
    else:
        name, raw = _read(recipe, registry)
    raw = apply_overrides(raw, _strings(overrides))
    if out:
        set_out(raw, out)
    if classes:
        _enable(raw, classes)
    resolved = resolve(name, raw, registry)
    try:  # recipe.toml is written after the run directory is claimed: refuse what TOML cannot hold now
        resolved.to_toml()
    except (TypeError, ValueError) as exc:
        raise BadInput(
            f"the recipe holds a value TOML cannot ({exc}); use strings, numbers, booleans, lists and tables"
        ) from None
    return resolved, registry


def set_out(raw: dict, out: str) -> None:
    """Put the run directory ``out`` in a raw recipe's ``[run]`` table (the CLI's ``--out``)."""
    _run_table(raw)["out"] = out


def _run_table(raw: dict) -> dict:
    """The raw ``[run]`` table, made when missing; bad input when it is not a table."""
    run = raw.setdefault("run", {})
    if not isinstance(run, dict):
        raise BadInput(
            f"run must be a table, got {type(run).__name__} {run!r}; write [run] with key = value lines "
            f"(or overrides like run.steps=50)"
        )
    return run


def read_metrics(text: str) -> list[dict]:
    """The records of a ``metrics.jsonl`` text, in order."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _recipe_of_run(recipe: Any, out: str | None, run_dir: str) -> tuple[str, dict]:
    from engine.rundir.claim import open_location
    from engine.rundir.open_run import open_run

    if recipe is not None:
        raise BadInput(f"resume={run_dir!r} trains that run's own recipe; pass recipe=None (overrides still apply)")
    if out:
        raise BadInput(f"resume={run_dir!r} continues in that directory itself; drop out= (copy it to branch a run)")
    open_location(run_dir)  # a location that cannot be read or written: one line, before anything
    run = open_run(run_dir)  # one way to open a run: its recipe (and, in the trainer, its checkpoint)
    return run.name, run.recipe_raw


def _read(recipe: Any, registry: Registry) -> tuple[str, dict]:
    """(name, raw tables) of a recipe given as a shipped name, a TOML path/URL or a dict."""
    if isinstance(recipe, os.PathLike):
        recipe = os.fspath(recipe)
    if isinstance(recipe, str):
        return read_recipe(recipe, registry)
    if isinstance(recipe, Mapping):
        return str(recipe.get("name", "recipe")), dict(recipe)
    if recipe is None:
        raise BadInput(
            "no recipe given; pass a shipped recipe name, a .toml path or URL, or a dict of tables "
            "(or resume=RUN_DIR to continue a run)"
        )
    raise BadInput(
        f"recipe must be a shipped recipe name, a .toml path or URL, or a dict of tables, "
        f"got {type(recipe).__name__} {recipe!r}"
    )


def _strings(overrides: Iterable[str]) -> list[str]:
    overrides = list(overrides)
    for item in overrides:
        if not isinstance(item, str):
            raise BadInput(f"override {item!r} is not a KEY=VALUE string; write e.g. 'run.steps=50'")
    return overrides


def _plugin_classes(plugins: Any) -> list[type[Plugin]]:
    """The plugin classes passed in code, checked: subclasses of :class:`engine.Plugin` with distinct names."""
    if isinstance(plugins, type):  # plugins=MyPlugin: one class
        plugins = [plugins]
    classes: list[type[Plugin]] = []
    for cls in plugins:
        if isinstance(cls, str):
            raise BadInput(
                f"plugins= takes plugin classes, got the name {cls!r}; enable an installed plugin with "
                f"the override 'run.plugins+={cls}'"
            )
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            raise BadInput(f"plugins= takes subclasses of engine.Plugin, got {cls!r}")
        if not isinstance(cls.name, str) or not cls.name:
            raise BadInput(f"plugin class {cls.__qualname__} has no name; declare name = '...' (what recipes use)")
        twin = next((c for c in classes if c.name == cls.name and c is not cls), None)
        if twin is not None:
            raise BadInput(
                f"plugin classes {twin.__qualname__} and {cls.__qualname__} are both named {cls.name!r}; "
                f"pass one of them"
            )
        if cls not in classes:
            classes.append(cls)
    return classes


def _registry(classes: list[type[Plugin]], registry: Registry | None) -> Registry:
    if registry is None:
        return Registry({cls.name: cls for cls in classes})  # a class shadows an installed plugin of its name
    if classes:
        raise BadInput("pass plugin classes in plugins= or in the registry=, not both")
    return registry


def _enable(raw: dict, classes: list[type[Plugin]]) -> None:
    """Append the classes the recipe does not list to ``run.plugins`` (a malformed table is left to resolve)."""
    run = _run_table(raw)
    listed = run.setdefault("plugins", [])
    if isinstance(listed, list):
        run["plugins"] = listed + [cls.name for cls in classes if cls.name not in listed]
