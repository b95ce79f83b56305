"""Opening runs: the plugins of a recipe behind a State, and a finished run's recipe, checkpoint and weights.

One way in, for the trainer and for every plugin or command that reuses another run (a
distillation teacher, a policy's starting weights, ``lipschitz-check``)::

    run = open_run("runs/teacher")               # a run directory, or RUN/checkpoints/step-N.pt
    run.step, run.recipe_raw                     # what it is
    weights = run.weights("model")               # or "ema": a plugin's saved copy of the weights
    built = run.build(registry, device)          # its data and model plugins, rebuilt, weights loaded
    built.model, built.data, built.state
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from engine.config.recipe import parse_toml, resolve
from engine.config.registry import Registry
from engine.errors import BadInput
from engine.manager import build_state
from engine.state import State


@attrs.define
class Built:
    """A run's data and model plugins rebuilt outside its training (see :meth:`Run.build`)."""

    state: State
    data: Any
    model: torch.nn.Module
    data_plugin: str
    model_plugin: str


class Run:
    """A hookmix run directory opened for reading: its recipe, checkpoints and weights."""

    def __init__(self, url: str, checkpoint_name: str | None = None) -> None:
        from engine.rundir.directory import RunDir

        self.url = url.rstrip("/")
        self.run_dir = RunDir(self.url)
        self.checkpoint_name = checkpoint_name
        try:
            present = self.run_dir.exists("recipe.toml")
        except (OSError, ValueError) as exc:
            raise BadInput(f"cannot read {self.url} ({exc}); check the URL") from None
        if not present:
            raise BadInput(f"{self.url} holds no recipe.toml; pass the directory of a hookmix run")
        self.recipe_raw: dict = parse_toml(self.run_dir.read_text("recipe.toml"), self.run_dir.url("recipe.toml"))
        self.name = str(self.recipe_raw.get("name", "run"))
        self._payload: dict | None = None

    @property
    def plugins(self) -> list[str]:
        names = self.recipe_raw.get("run", {}).get("plugins", [])
        return list(names) if isinstance(names, list) else []

    def checkpoint(self) -> dict:
        """The checkpoint this run was opened at (the latest unless a file was named); loaded once."""
        from engine.rundir import checkpoint

        if self._payload is None:
            if self.checkpoint_name is None:
                steps = checkpoint.list_steps(self.run_dir)
                if not steps:
                    raise BadInput(
                        f"{self.url} has no checkpoint in checkpoints/; let the run reach a checkpoint "
                        f"(it writes one at its last step) or pass another run"
                    )
                self.checkpoint_name = f"checkpoints/step-{steps[-1]:08d}.pt"
            self._payload = checkpoint.load(self.run_dir, self.checkpoint_name)
        return self._payload

    @property
    def step(self) -> int:
        return int(self.checkpoint()["step"])

    def weights(self, which: str = "model") -> dict[str, torch.Tensor]:
        """The model's weights, or a plugin's saved copy of them (``which`` = that plugin's name).

        A plugin that keeps another copy of the model's weights (an EMA) stores it under
        ``"weights"`` in its plugin state; that is what ``which="ema"`` reads.
        """
        payload = self.checkpoint()
        if which == "model":
            return payload["model"]
        saved = payload.get("plugins", {}).get(which, {})
        if not isinstance(saved, dict) or "weights" not in saved:
            raise BadInput(
                f"run {self.url} holds no {which!r} weights (plugin {which!r} was not enabled or keeps "
                f"none); use the model's weights"
            )
        return saved["weights"]

    def data_and_model_plugins(self, registry: Registry) -> tuple[str, str]:
        """The recipe's data and model plugins (the implementers of hookmix_data / hookmix_model)."""
        data = model = None
        unloadable = []
        for name in self.plugins:
            try:
                cls = registry.load(name)
            except BadInput:
                unloadable.append(name)
                continue
            if data is None and implements(cls, "hookmix_data"):
                data = name
            if model is None and implements(cls, "hookmix_model"):
                model = name
        if model is None:
            extra = f" (not installed here: {', '.join(unloadable)})" if unloadable else ""
            raise BadInput(
                f"the recipe of {self.url} enables no model plugin that can be loaded{extra}; "
                f"install it or pass another run"
            )
        if data is None:
            raise BadInput(f"the recipe of {self.url} enables no data plugin; pass the directory of a training run")
        return data, model

    def build(
        self, registry: Registry, device: torch.device, *, weights: str | None = "model", data: Any = None
    ) -> Built:
        """Rebuild the run's data and model through their own plugins and load ``weights`` into the model.

        Only the data and model plugins are set up (the other plugins of the recipe need not be
        installed). ``data`` reuses an already built data source instead of building the run's.
        Construction runs in a forked torch RNG seeded with the run's seed: the caller's streams do
        not move, and the rebuild is the same every time.
        ``weights=None`` leaves the freshly initialised model.
        """
        data_name, model_name = self.data_and_model_plugins(registry)
        tables = self.recipe_raw.get("plugins", {})
        tables = tables if isinstance(tables, dict) else {}
        reduced = {
            "run": {**self.recipe_raw.get("run", {}), "plugins": [data_name, model_name]},
            "plugins": {n: tables[n] for n in (data_name, model_name) if n in tables},
        }
        try:
            recipe = resolve(self.name, reduced, registry)
            state, manager = build_state(recipe, registry, device)
        except BadInput as exc:
            raise BadInput(f"the recipe of {self.url} does not resolve here: {exc}") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.run.seed)  # built as its own training built it
            state.data = data if data is not None else manager.data(state)
            model = manager.model(state)
        if weights is not None:
            try:
                model.load_state_dict(self.weights(weights))
            except (RuntimeError, KeyError, ValueError) as exc:
                raise BadInput(
                    f"the weights of {self.url} do not fit the model its recipe builds here "
                    f"({str(exc).splitlines()[0][:160]})"
                ) from None
        state.model = model.to(device)
        return Built(state, state.data, state.model, data_name, model_name)


def open_run(source: str) -> Run:
    """Open a run directory, or one checkpoint file ``RUN/checkpoints/step-N.pt`` of it."""
    if not isinstance(source, str) or not source:
        raise BadInput("no run given; pass a hookmix run directory (or RUN/checkpoints/step-N.pt)")
    if source.endswith(".pt"):
        parent, _, name = source.rstrip("/").rpartition("/checkpoints/")
        if not parent:
            raise BadInput(
                f"{source} is not inside a run's checkpoints/ folder; pass RUN/checkpoints/step-N.pt "
                f"or the run directory"
            )
        return Run(parent, f"checkpoints/{name}")
    return Run(source)


def implements(cls: type, hook_name: str) -> bool:
    """Whether a plugin class implements a hook (own or inherited implementation)."""
    return callable(getattr(cls, hook_name, None))
