"""What a distillation loss plugin reads: logits through ``state.logits(kind="distillation")``, and targets.

Shared by the loss plugins of :mod:`plugins.kd` and :mod:`plugins.nkd`. Every consumer passes the same ``kind``,
so a logit transform such as ``logit_std`` reaches all of them while the supervised ``cross_entropy`` term keeps
the raw logits.
"""

from __future__ import annotations

import torch

from engine import BadInput, Plugin

DISTILLATION = "distillation"  # the `kind` every distillation consumer passes to state.logits
TEACHER = "teacher"  # the teacher plugin's name; an instance is teacher@LABEL (plugin API 1.1)
LOGITS = "teacher_logits"  # the output the teacher adds; teacher@LABEL adds teacher_logits@LABEL
TEMPERATURE = "kd_temperature"  # a learned temperature (0-d tensor) the ctkd plugin adds; read by kd, dkd, nkd


def temperature_of(outputs: dict, configured: float):
    """The temperature a distillation loss uses: ``outputs["kd_temperature"]`` when a plugin adds it (``ctkd``: a
    0-d tensor whose backward trains the temperature), else the loss's configured number, returned as it is so a
    run without ``ctkd`` computes bit for bit what it did before (docs/distillation.md, "CTKD")."""
    return outputs.get(TEMPERATURE, configured)


def teacher_logits_key(teacher: str) -> str:
    """The output the teacher (instance) named ``teacher`` adds: ``teacher_logits`` for ``teacher``,
    ``teacher_logits@large`` for ``teacher@large`` (what ``Plugin.scoped`` gives that instance)."""
    _, sep, label = teacher.partition("@")
    return f"{LOGITS}{sep}{label}"


def default_teachers(plugin: Plugin) -> tuple[str, ...]:
    """The teacher a distillation consumer reads when its config names none: the one with its instance label
    (``kd`` reads ``teacher``, ``kd@large`` reads ``teacher@large``)."""
    return (f"{TEACHER}@{plugin.instance}" if plugin.instance else TEACHER,)


def check_teachers(plugin: Plugin, teachers: tuple[str, ...], state, key: str = "teachers") -> None:
    """Bad input, at configure time, when a teacher ``plugin`` reads is not enabled (naming the enabled ones).

    A teacher is an enabled ``teacher`` instance, or (``teacher`` itself) any plugin that provides ``"teacher"``
    and adds ``outputs["teacher_logits"]``, as an API 1.0 third-party teacher may.
    """
    enabled = [n for n in state.plugin_names if n.partition("@")[0] == TEACHER]
    for name in teachers:
        if state.provider(name) is None:
            default = "" if getattr(plugin.config, key, None) else f" (plugins.{plugin.name}.{key} = [] reads it)"
            raise BadInput(
                f"{plugin.name} reads teacher {name!r}{default}, which run.plugins does not enable "
                f"(enabled teachers: {', '.join(enabled) or 'none'}); enable it, or set plugins.{plugin.name}.{key} "
                f'to the teachers to read, e.g. ["{enabled[0] if enabled else TEACHER}"]'
            )


def sample_batch(state) -> dict:
    """A small batch of the run's data for shape checks, without touching the engine's data generator.

    The first validation batch when there is one, else a training batch drawn with a private generator (the
    engine's generator drives the data order and must not move).
    """
    batch = next(iter(state.data.val_batches()), None)
    if batch is None:
        batch = state.data.train_batch(torch.Generator().manual_seed(0))
    return {k: v[:2].to(state.device) if torch.is_tensor(v) else v for k, v in batch.items()}


def student_logits_of(model: torch.nn.Module, batch: dict, state) -> torch.Tensor:
    """The student's logits on ``batch`` in eval mode without gradient (the run's forward, custom or not)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return state.forward(model, batch)["logits"]
    finally:
        model.train(was_training)


def distill_inputs(plugin: Plugin, batch: dict, outputs: dict, state, *, teacher: bool = True, teachers=()):
    """Student (and teacher) logits as ``plugin`` should see them, flattened to (N, C), plus (N,) targets.

    Logits go through ``state.logits(role=..., consumer=plugin.name, kind="distillation")`` before
    flattening; language-model logits (B, T, V) become (B*T, V). Positions whose target is negative (the usual
    ``-100`` ignore index) are dropped from all three tensors. ``teachers``: the teacher instances to read
    (default: :func:`default_teachers`); with several, each one's logits go through ``state.logits`` (so
    ``logit_std`` standardizes each teacher with its own statistics) and the results are averaged.
    """
    student = state.logits(outputs["logits"], role="student", consumer=plugin.name, kind=DISTILLATION)
    width = student.shape[-1]
    student = student.reshape(-1, width)
    target = batch["target"].reshape(-1) if "target" in batch else None
    t = None
    if teacher:
        seen = []
        for name in teachers or default_teachers(plugin):
            key = teacher_logits_key(name)
            if key not in outputs:
                raise BadInput(f"{plugin.name} needs outputs[{key!r}]; add {name!r} to run.plugins")
            seen.append(state.logits(outputs[key], role="teacher", consumer=plugin.name, kind=DISTILLATION))
        t = seen[0] if len(seen) == 1 else torch.stack(seen).mean(0)  # averaged-logit multi-teacher KD
        t = t.reshape(-1, t.shape[-1])
        if t.shape != student.shape:
            raise BadInput(
                f"{plugin.name}: teacher logits {tuple(t.shape)} and student logits "
                f"{tuple(student.shape)} differ; use a teacher trained on the same classes"
            )
    if target is not None:
        keep = target >= 0
        if not bool(keep.all()):
            student, target = student[keep], target[keep]
            t = t[keep] if t is not None else None
    return student, t, target


def need_target(plugin: Plugin, target) -> torch.Tensor:
    if target is None:
        raise BadInput(f"{plugin.name} needs batch['target'] (class indices); use a labelled data plugin")
    return target
