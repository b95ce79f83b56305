"""The ``teacher`` plugin: a frozen model rebuilt from a hookmix run directory (docs/distillation.md).

It adds ``outputs["teacher_logits"]`` (``hookmix_aux_outputs``). It is never trained, never in the optimizer and
never saved in checkpoints: the recipe's ``plugins.teacher.run`` is its source.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch

from engine import BadInput, Plugin, field, hookimpl
from engine.loop import make_state

from .distill_inputs import sample_batch, student_logits_of

RECIPES = "plugins.kd.recipes"


@attrs.define
class TeacherConfig:
    run: str = field("", "hookmix run directory (any fsspec URL) of the trained teacher, or a checkpoint "
                         "RUN/checkpoints/step-N.pt in it; the recipe is read from RUN/recipe.toml")
    weights: Literal["model", "ema"] = field("model", "model: the trained weights; ema: the ema plugin's averaged "
                                                      "weights")
    eval_metric: bool = field(True, "log the teacher's accuracy on the validation data (teacher/val_accuracy, "
                                    "computed once)")


def _implements(cls: type, hook: str) -> bool:
    return callable(getattr(cls, hook, None))


#: Data-info keys that must agree between the teacher's data and the student's.
_INFO_KEYS = ("task", "num_classes", "vocab_size", "itos", "input_dim", "channels", "image_size")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Teacher(Plugin):
    """A frozen teacher rebuilt from a hookmix run; adds outputs['teacher_logits'] (no grad, eval mode)."""

    name = "teacher"
    Config = TeacherConfig
    provides = ("teacher",)
    recipes = RECIPES

    def __init__(self) -> None:
        super().__init__()
        self.model: torch.nn.Module | None = None
        self.step: int | None = None
        self._accuracy: float | None = None

    # where the teacher comes from

    def _source(self):
        """(run directory, checkpoint name or None for the latest) from ``plugins.teacher.run``."""
        from engine.outputs import RunDir

        url = self.config.run.strip().rstrip("/")
        if not url:
            raise BadInput("plugins.teacher.run is empty; set it to a trained teacher's run directory, "
                           "e.g. plugins.teacher.run=runs/mnist1d-teacher-cnn")
        if url.endswith(".pt"):
            parent, name = url.rsplit("/", 1) if "/" in url else ("", url)
            if parent.rsplit("/", 1)[-1] != "checkpoints":
                raise BadInput(f"plugins.teacher.run={url}: a checkpoint must be RUN/checkpoints/step-N.pt (the "
                               f"recipe is read from RUN/recipe.toml); or pass the run directory")
            base = parent.rsplit("/", 1)[0] if "/" in parent else "."
            return RunDir(base), f"checkpoints/{name}"
        return RunDir(url), None

    def _read_recipe(self, run_dir) -> dict:
        from engine.recipe import parse_toml

        try:
            present = run_dir.exists("recipe.toml")
        except (OSError, ValueError) as exc:
            raise BadInput(f"plugins.teacher.run={self.config.run}: cannot read it ({exc}); check the URL") from None
        if not present:
            raise BadInput(f"plugins.teacher.run={self.config.run} holds no recipe.toml; pass the directory of a "
                           f"trained hookmix run (train one first, e.g. hookmix train mnist1d-teacher-cnn "
                           f"--out runs/mnist1d-teacher-cnn)")
        return parse_toml(run_dir.read_text("recipe.toml"), run_dir.url("recipe.toml"))

    def _load_payload(self, run_dir, name: str | None) -> dict:
        from engine import checkpoint

        if name is None:
            steps = checkpoint.list_steps(run_dir)
            if not steps:
                raise BadInput(f"plugins.teacher.run={self.config.run} has no checkpoint in checkpoints/; "
                               f"let the teacher run finish (it checkpoints at its last step)")
            name = f"checkpoints/step-{steps[-1]:08d}.pt"
        return checkpoint.load(run_dir, name)

    # building it

    def _plugins_of(self, raw: dict, registry) -> tuple[str, str]:
        """Names of the data and model plugins of the teacher's recipe (only those are rebuilt)."""
        names = raw.get("run", {}).get("plugins", [])
        data = model = None
        unloadable = []
        for name in names:
            try:
                cls = registry.load(name)
            except BadInput:
                unloadable.append(name)
                continue
            if _implements(cls, "hookmix_forward"):
                raise BadInput(f"the teacher's recipe uses a custom forward (plugin {name!r}); only teachers whose "
                               f"forward is model(batch['input']) are supported")
            if _implements(cls, "hookmix_data") and data is None:
                data = name
            if _implements(cls, "hookmix_model") and model is None:
                model = name
        if model is None:
            extra = f" (not installed here: {', '.join(unloadable)})" if unloadable else ""
            raise BadInput(f"the teacher's recipe {self.config.run}/recipe.toml enables no model plugin that "
                           f"can be loaded{extra}; install it or pass another teacher")
        if data is None:
            raise BadInput(f"the teacher's recipe {self.config.run}/recipe.toml enables no data plugin; "
                           f"pass the run directory of a complete training run")
        return data, model

    def _teacher_data(self, state, tstate, data_name: str):
        """The teacher's data: the student's own when it is the same plugin with the same config, else rebuilt
        from the teacher's recipe (for its info); falls back to the student's data when that cannot be built."""
        from engine.recipe import converter

        student_data = next(iter(state.manager.providers("hookmix_data")), None)
        if student_data == data_name:
            mine = state.recipe.plugin_configs.get(data_name)
            theirs = tstate.recipe.plugin_configs.get(data_name)
            if converter.unstructure(mine) == converter.unstructure(theirs):
                return state.data
        try:
            return tstate.manager.data(tstate)
        except BadInput:
            return state.data  # not available here: the weight load and the shape check still guard

    def _check_info(self, teacher_info: dict, student_info: dict) -> None:
        for key in _INFO_KEYS:
            if key in teacher_info and key in student_info and teacher_info[key] != student_info[key]:
                raise BadInput(f"incompatible teacher {self.config.run}: it was trained on data with {key}="
                               f"{_short(teacher_info[key])} but the student's data has {_short(student_info[key])}; "
                               f"use a teacher trained on the same classes / vocabulary")

    def build(self, state) -> torch.nn.Module:
        """Rebuild the teacher's model through its own model plugin and load its weights (frozen, eval mode)."""
        from engine.recipe import resolve

        run_dir, ckpt = self._source()
        raw = self._read_recipe(run_dir)
        registry = state.registry  # the run's: installed plugins plus classes registered in code (tests)
        data_name, model_name = self._plugins_of(raw, registry)
        tables = raw.get("plugins", {}) if isinstance(raw.get("plugins"), dict) else {}
        reduced = {"run": {**raw.get("run", {}), "plugins": [data_name, model_name]},
                   "plugins": {n: tables[n] for n in (data_name, model_name) if n in tables}}
        try:
            recipe = resolve(str(raw.get("name", "teacher")), reduced, registry)
        except BadInput as exc:
            raise BadInput(f"the teacher's recipe {run_dir.url('recipe.toml')} does not resolve here: {exc}") from None
        payload = self._load_payload(run_dir, ckpt)
        if self.config.weights == "ema":
            weights = payload.get("plugins", {}).get("ema", {}).get("shadow")
            if weights is None:
                raise BadInput(f"plugins.teacher.weights=ema but the teacher run {self.config.run} has no ema state; "
                               f"set plugins.teacher.weights=model")
        else:
            weights = payload["model"]

        # The teacher's own data and model plugins, behind a state of their own (engine.loop.make_state).
        try:
            tstate = make_state(recipe, registry, state.device)
        except BadInput as exc:
            raise BadInput(f"the teacher's data/model plugins cannot be set up here: {exc}") from None
        # The teacher's construction must not move the student's RNG streams (same init with or without it).
        with torch.random.fork_rng(devices=[]):
            tstate.data = self._teacher_data(state, tstate, data_name)
            self._check_info(getattr(tstate.data, "info", {}) or {}, getattr(state.data, "info", {}) or {})
            model = tstate.manager.model(tstate)
        try:
            model.load_state_dict(weights)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise BadInput(f"incompatible teacher {self.config.run}: its weights do not fit the model its recipe "
                           f"builds here ({str(exc).splitlines()[0][:160]})") from None
        model.to(state.device).eval().requires_grad_(False)
        self.step = int(payload["step"])
        return model

    def _check_shapes(self, state) -> None:
        batch = sample_batch(state)
        student = student_logits_of(state.model, batch, state)
        try:
            with torch.no_grad():
                teacher = self.model(batch["input"])
        except Exception as exc:  # any failure here means the teacher cannot read the student's inputs
            raise BadInput(f"incompatible teacher {self.config.run}: it cannot run on the student's inputs "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
        if teacher.shape != student.shape:
            raise BadInput(f"incompatible teacher {self.config.run}: it gives logits of shape "
                           f"{tuple(teacher.shape)[1:]} per example, the student {tuple(student.shape)[1:]}; "
                           f"use a teacher trained on the same classes / vocabulary")

    # hooks

    @hookimpl
    def hookmix_configure(self, state):
        run_dir, _ = self._source()
        self._read_recipe(run_dir)  # fail before any data is built

    @hookimpl
    def hookmix_setup_model(self, model, state):
        self.model = self.build(state)
        self._check_shapes(state)

    @hookimpl
    def hookmix_aux_outputs(self, batch, state):
        with torch.no_grad():
            return {"teacher_logits": self.model(batch["input"])}

    @hookimpl
    def hookmix_eval_metrics(self, state):
        if not self.config.eval_metric:
            return None
        if self._accuracy is None:  # the teacher is frozen: computed once per process
            correct = total = 0
            with torch.no_grad():
                for batch in state.data.val_batches():
                    x = batch["input"].to(state.device)
                    target = batch["target"].to(state.device).reshape(-1)
                    with state.autocast():
                        logits = self.model(x)
                    pred = logits.float().reshape(-1, logits.shape[-1]).argmax(-1)
                    correct += int((pred == target).sum())
                    total += target.numel()
            self._accuracy = correct / total if total else float("nan")
        return {"teacher/val_accuracy": self._accuracy}

    @hookimpl
    def hookmix_plugin_state(self, state):
        return {"source": self.config.run, "step": self.step}  # the weights are not saved: the source is

    @hookimpl
    def hookmix_load_plugin_state(self, plugin_state, state):
        if plugin_state.get("step") != self.step:
            raise BadInput(f"the teacher changed since this run was checkpointed (step {plugin_state.get('step')} "
                           f"then, {self.step} now); set plugins.teacher.run to RUN/checkpoints/"
                           f"step-{plugin_state.get('step'):08d}.pt to resume exactly")

    @hookimpl
    def hookmix_commands(self):
        from engine import Command
        from plugins.kd import experiment

        return {"distill-mnist1d": Command(help="MNIST-1D distillation table: CNN teacher, MLP student arms, seeds",
                                           add_arguments=experiment.add_arguments, run=experiment.run)}
