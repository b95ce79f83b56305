"""The ``teacher`` plugin: a frozen model rebuilt from a hookmix run directory (docs/distillation.md).

It adds ``outputs["teacher_logits"]`` (``hookmix_aux_outputs``). It is never trained, never in the optimizer and
never saved in checkpoints: the recipe's ``plugins.teacher.run`` is its source.

Several teachers (plugin API 1.1 instances): ``teacher@cnn`` has its own ``[plugins."teacher@cnn"]`` table and adds
``outputs["teacher_logits@cnn"]``, its frozen module and its metric ``teacher@cnn/val_accuracy`` carry its name, and
its checkpoint state is kept under it; a distillation term reads it by name (``plugins."kd@cnn".teachers``).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch

from engine import BadInput, Plugin, field, hookimpl, load_recipe, open_run

from .distill_inputs import LOGITS, sample_batch, student_logits_of

RECIPES = "plugins.kd.recipes"


@attrs.define
class TeacherConfig:
    run: str = field(
        "",
        "hookmix run directory (any fsspec URL) of the trained teacher, or a checkpoint "
        "RUN/checkpoints/step-N.pt in it; the recipe is read from RUN/recipe.toml",
    )
    weights: Literal["model", "ema"] = field(
        "model", "model: the trained weights; ema: the ema plugin's averaged weights"
    )
    eval_metric: bool = field(
        True, "log the teacher's accuracy on the validation data (teacher/val_accuracy, computed once)"
    )


#: The target of a position no loss is taken on (torch's cross-entropy default; the sequence data sets use it).
IGNORE_INDEX = -100

#: Data-info keys that must agree between the teacher's data and the student's.
_INFO_KEYS = ("task", "num_classes", "vocab_size", "itos", "input_dim", "channels", "image_size")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Teacher(Plugin):
    """A frozen teacher rebuilt from a hookmix run; adds outputs['teacher_logits'] (teacher@x: ['teacher_logits@x'])."""

    name = "teacher"
    Config = TeacherConfig
    recipes = RECIPES
    multi_instance = True  # teacher@cnn, teacher@mlp: multi-teacher distillation

    def __init__(self) -> None:
        super().__init__()
        self.model: torch.nn.Module | None = None
        self.step: int | None = None
        self._accuracy: float | None = None

    # where the teacher comes from, and building it (engine.open_run: one way to open a run)

    def _open(self):
        url = self.config.run.strip().rstrip("/")
        if not url:
            raise BadInput(
                f"plugins.{self.name}.run is empty; set it to a trained teacher's run directory, "
                f"e.g. plugins.{self.name}.run=runs/mnist1d-teacher-cnn"
            )
        try:
            return open_run(url)
        except BadInput as exc:
            raise BadInput(
                f"plugins.{self.name}.run={url}: {exc} (train one first, e.g. hookmix train "
                f"mnist1d-teacher-cnn --out runs/mnist1d-teacher-cnn)"
            ) from None

    def _check_forward(self, run, registry) -> None:
        for name in run.plugins:
            try:
                cls = registry.load(name)
            except BadInput:
                continue  # not installed here: only the data and model plugins are rebuilt
            if callable(getattr(cls, "hookmix_forward", None)):  # its own implementation or an inherited one
                raise BadInput(
                    f"the teacher's recipe uses a custom forward (plugin {name!r}); only teachers whose "
                    f"forward is model(batch['input']) are supported"
                )

    def _student_data_if_same(self, state, run, data_name: str):
        """The student's data when the student enables the teacher's data plugin with the same config."""
        if data_name not in state.recipe.run.plugins:
            return None
        mine = state.recipe.plugin_configs[data_name]
        if mine is None:  # a data plugin without a Config: nothing says the two data sets are the same
            return None
        tables = run.recipe_raw.get("plugins", {})
        table = tables.get(data_name, {}) if isinstance(tables, dict) else {}
        try:  # the teacher's table structured as the student's is (every default filled in)
            theirs = load_recipe(
                {"run": {"plugins": [data_name]}, "plugins": {data_name: table}}, registry=state.registry
            )
        except BadInput:
            return None
        return state.data if mine == theirs.plugin_configs[data_name] else None

    def _check_info(self, teacher_info: dict, student_info: dict) -> None:
        for key in _INFO_KEYS:
            if key in teacher_info and key in student_info and teacher_info[key] != student_info[key]:
                raise BadInput(
                    f"incompatible teacher {self.config.run}: it was trained on data with {key}="
                    f"{_short(teacher_info[key])} but the student's data has {_short(student_info[key])}; "
                    f"use a teacher trained on the same classes / vocabulary"
                )

    def build(self, state) -> torch.nn.Module:
        """Rebuild the teacher's model through its own plugins and load its weights (frozen, eval mode).

        The student's RNG streams do not move (``Run.build`` constructs in a forked RNG), so a run
        initialises identically with or without a teacher.
        """
        run = self._open()
        registry = state.registry  # the run's: installed plugins plus classes registered in code (tests)
        self._check_forward(run, registry)
        data_name, _ = run.data_and_model_plugins(registry)
        shared = self._student_data_if_same(state, run, data_name)
        try:
            built = run.build(registry, state.device, weights=None, data=shared)
        except BadInput as exc:
            if shared is not None:
                raise
            try:  # the teacher's data cannot be built here: the weight load and the shape check still guard
                built = run.build(registry, state.device, weights=None, data=state.data)
            except BadInput:
                raise exc from None
        self._check_info(getattr(built.data, "info", {}) or {}, getattr(state.data, "info", {}) or {})
        try:
            weights = run.weights(self.config.weights)
        except BadInput:
            raise BadInput(
                f"plugins.{self.name}.weights={self.config.weights} but the teacher run {self.config.run} "
                f"has no {self.config.weights} weights; set plugins.{self.name}.weights=model"
            ) from None
        try:
            built.model.load_state_dict(weights)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise BadInput(
                f"incompatible teacher {self.config.run}: its weights do not fit the model its recipe "
                f"builds here ({str(exc).splitlines()[0][:160]})"
            ) from None
        self.step = run.step
        return built.model.to(state.device).eval().requires_grad_(False)

    def _check_shapes(self, state) -> None:
        batch = sample_batch(state)
        student = student_logits_of(state.model, batch, state)
        try:
            with torch.no_grad():
                teacher = self.model(batch["input"])
        except Exception as exc:  # any failure here means the teacher cannot read the student's inputs
            raise BadInput(
                f"incompatible teacher {self.config.run}: it cannot run on the student's inputs "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
            ) from None
        if teacher.shape != student.shape:
            raise BadInput(
                f"incompatible teacher {self.config.run}: it gives logits of shape "
                f"{tuple(teacher.shape)[1:]} per example, the student {tuple(student.shape)[1:]}; "
                f"use a teacher trained on the same classes / vocabulary"
            )

    # hooks

    @hookimpl
    def hookmix_configure(self, state):
        self._open()  # fail before any data is built

    @hookimpl
    def hookmix_setup_model(self, model, state):
        # frozen: under run.strategy='fsdp' the engine shards it (docs/distributed.md, "Frozen models")
        self.model = state.add_frozen_module(self.name, self.build(state))  # teacher, or teacher@x
        self._check_shapes(state)

    @hookimpl
    def hookmix_aux_outputs(self, batch, state):
        with torch.no_grad():
            return {self.scoped(LOGITS): self.model(batch["input"])}  # teacher_logits, or teacher_logits@x

    @hookimpl
    def hookmix_eval_metrics(self, state):
        if not self.config.eval_metric:
            return None
        if self._accuracy is None:  # the teacher is frozen: computed once per process
            # each rank scores its contiguous share of every validation batch (the teacher is called once per
            # batch on every rank, as a sharded teacher's collectives need); the counts are summed over ranks
            counts = torch.zeros(2, dtype=torch.float64)
            with torch.no_grad():
                for batch in state.data.val_batches():
                    n = batch["input"].shape[0]
                    rows = slice(state.rank * n // state.world_size, (state.rank + 1) * n // state.world_size)
                    x = batch["input"][rows].to(state.device)
                    target = batch["target"][rows].to(state.device).reshape(-1)
                    with state.autocast():
                        logits = self.model(x)
                    pred = logits.float().reshape(-1, logits.shape[-1]).argmax(-1)
                    scored = target != IGNORE_INDEX  # positions no loss is taken on (prompts, padding) are not scored
                    right = float((scored & (pred == target)).sum())
                    counts += torch.tensor([right, float(scored.sum())], dtype=torch.float64)
            correct, total = state.all_reduce_sum(counts).tolist()
            self._accuracy = correct / total if total else float("nan")
        return {f"{self.name}/val_accuracy": self._accuracy}  # teacher/..., or teacher@x/...

    @hookimpl
    def hookmix_plugin_state(self, state):
        return {"source": self.config.run, "step": self.step}  # the weights are not saved: the source is

    @hookimpl
    def hookmix_load_plugin_state(self, plugin_state, state):
        if plugin_state.get("step") != self.step:
            raise BadInput(
                f"the teacher changed since this run was checkpointed (step {plugin_state.get('step')} "
                f"then, {self.step} now); set plugins.{self.name}.run to RUN/checkpoints/"
                f"step-{plugin_state.get('step'):08d}.pt to resume exactly"
            )
