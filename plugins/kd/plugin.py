"""Engine plugins of the distillation package: ``teacher``, ``kd``, ``dkd``, and ``cifar100`` / ``resnet`` / ``sgd``.

Spec: ``shared/specs/distillation.md``. The losses themselves live in :mod:`plugins.kd.losses` (pure PyTorch);
this module only wires them into hooks:

* ``teacher`` rebuilds a frozen model from a hookmix run directory and adds ``outputs["teacher_logits"]``
  (``hookmix_aux_outputs``). It is never trained, never in the optimizer and never saved in checkpoints: the
  recipe's ``plugins.teacher.run`` is its source.
* ``kd`` / ``dkd`` return named, weighted loss terms. They read logits only through
  ``state.logits(..., kind="distillation")``, so a transform such as ``logit_std`` reaches them while the
  supervised ``cross_entropy`` term keeps the raw logits.
* ``cifar100`` / ``resnet`` / ``sgd`` give the CRD / mdistiller CIFAR-100 protocol (spec §11.1) for users
  with a GPU and the official archive.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from engine import BadInput, Plugin, field, hookimpl, non_negative, one_of, positive
from engine.loop import make_state

RECIPES = "plugins.kd.recipes"
DISTILLATION = "distillation"  # the `kind` every distillation consumer passes to state.logits


# --- helpers shared with plugins.nkd ---------------------------------------------------------------------


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
            return state.manager.forward(model, batch, state)["logits"]
    finally:
        model.train(was_training)


def distill_inputs(plugin: Plugin, batch: dict, outputs: dict, state, *, teacher: bool = True):
    """Student (and teacher) logits as ``plugin`` should see them, flattened to (N, C), plus (N,) targets.

    Logits go through ``state.logits(role=..., consumer=plugin.name, kind="distillation")`` before
    flattening; language-model logits (B, T, V) become (B*T, V). Positions whose target is negative (the usual
    ``-100`` ignore index) are dropped from all three tensors.
    """
    student = state.logits(outputs["logits"], role="student", consumer=plugin.name, kind=DISTILLATION)
    width = student.shape[-1]
    student = student.reshape(-1, width)
    target = batch["target"].reshape(-1) if "target" in batch else None
    t = None
    if teacher:
        if "teacher_logits" not in outputs:
            raise BadInput(f"{plugin.name} needs outputs['teacher_logits']; add 'teacher' to run.plugins")
        t = state.logits(outputs["teacher_logits"], role="teacher", consumer=plugin.name, kind=DISTILLATION)
        t = t.reshape(-1, t.shape[-1])
        if t.shape != student.shape:
            raise BadInput(f"{plugin.name}: teacher logits {tuple(t.shape)} and student logits "
                           f"{tuple(student.shape)} differ; use a teacher trained on the same classes")
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


# --- teacher ---------------------------------------------------------------------------------------------


@attrs.define
class TeacherConfig:
    run: str = field("", "hookmix run directory (any fsspec URL) of the trained teacher, or a checkpoint "
                         "RUN/checkpoints/step-N.pt in it; the recipe is read from RUN/recipe.toml")
    weights: str = field("model", "model: the trained weights; ema: the ema plugin's averaged weights",
                         validator=one_of("model", "ema"))
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


# --- kd / dkd --------------------------------------------------------------------------------------------


@attrs.define
class KDConfig:
    temperature: float = field(4.0, "softening temperature T (spec §5: T 4 CIFAR, 1 ImageNet; 2 with LS = "
                                    "its base temperature)", validator=positive)
    weight: float = field(0.9, "weight of the KD term (spec §5: 0.9 with CE 0.1 in the DKD paper; 9 with LS)",
                          validator=non_negative)
    form: str = field("kl", "kl: T^2 KL(p_t||p_s), zero at identical logits; ce: T^2 CE(p_t, p_s) (same gradient)",
                      validator=one_of("kl", "ce"))


class KD(Plugin):
    """Hinton knowledge distillation: the loss term `kd` = weight * T^2 * KL(p_teacher(T) || p_student(T))."""

    name = "kd"
    Config = KDConfig
    provides = ("loss:distillation",)
    requires = ("teacher",)
    recipes = RECIPES

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        from plugins.kd.losses import kd_loss

        c = self.config
        student, teacher, _ = distill_inputs(self, batch, outputs, state)
        return {"kd": c.weight * kd_loss(student, teacher, c.temperature, form=c.form)}


@attrs.define
class DKDConfig:
    alpha: float = field(1.0, "weight of TCKD (spec §6: 1; 9 with LS = 1 x kd weight)", validator=non_negative)
    beta: float = field(8.0, "weight of NCKD (spec §6: 8 CIFAR default, 2-6 some pairs; 72 with LS)",
                        validator=non_negative)
    temperature: float = field(4.0, "temperature T (spec §6: 4 CIFAR, 1 ImageNet; 2 with LS)", validator=positive)
    warmup_steps: int = field(-1, "linear warm-up of both terms over this many steps, min(step/N, 1); -1: 1/12 "
                                  "of run.steps (mdistiller's 20 of 240 epochs); 0: none")


class DKD(Plugin):
    """Decoupled KD: the terms `tckd` = alpha T^2 TCKD and `nckd` = beta T^2 NCKD, with a linear warm-up."""

    name = "dkd"
    Config = DKDConfig
    provides = ("loss:distillation",)
    requires = ("teacher",)

    @hookimpl
    def hookmix_configure(self, state):
        if self.config.warmup_steps < -1:
            raise BadInput(f"plugins.dkd.warmup_steps={self.config.warmup_steps}: use >= 0, or -1 for 1/12 of run.steps")

    def warmup(self, state) -> int:
        n = self.config.warmup_steps
        return max(1, round(state.run.steps * 20 / 240)) if n == -1 else n

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        from plugins.kd.losses import dkd_loss, dkd_warmup_factor

        c = self.config
        student, teacher, target = distill_inputs(self, batch, outputs, state)
        target = need_target(self, target)
        # the step being taken, counted from 1 like mdistiller's epochs: the first step is already > 0
        factor = dkd_warmup_factor(state.step + 1, self.warmup(state))
        _, parts = dkd_loss(student, teacher, target, c.alpha, c.beta, c.temperature)
        state.log("dkd/warmup", factor)
        return {"tckd": factor * parts["tckd"], "nckd": factor * parts["nckd"]}


# --- CIFAR-100 protocol: data, ResNets, SGD --------------------------------------------------------------


class CIFAR100Batches:
    """CIFAR-100 batches: random crop + flip from the engine's generator for training; the test split for val."""

    def __init__(self, path: str, batch_size: int, eval_batch_size: int, augment: bool, padding: int) -> None:
        from plugins.kd.cifar100 import NUM_CLASSES, load_cifar100

        train_x, train_y = load_cifar100(path, "train")
        test_x, test_y = load_cifar100(path, "test")
        if not 1 <= batch_size <= len(train_y):
            raise ValueError(f"batch_size must be between 1 and the {len(train_y)} training images")
        self.train_x, self.train_y = torch.from_numpy(train_x), torch.from_numpy(train_y)
        self.test_x, self.test_y = torch.from_numpy(test_x), torch.from_numpy(test_y)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.augment, self.padding = augment, padding
        self.info = {"task": "classification", "num_classes": NUM_CLASSES, "channels": 3, "image_size": 32}

    def train_batch(self, generator: torch.Generator) -> dict:
        from plugins.kd.cifar100 import normalize_cifar100, random_crop_flip

        idx = torch.randperm(len(self.train_y), generator=generator)[: self.batch_size]
        images = self.train_x[idx]
        if self.augment:
            images = random_crop_flip(images, generator, self.padding)
        return {"input": normalize_cifar100(images), "target": self.train_y[idx]}

    def val_batches(self):
        from plugins.kd.cifar100 import normalize_cifar100

        for start in range(0, len(self.test_y), self.eval_batch_size):
            end = start + self.eval_batch_size
            yield {"input": normalize_cifar100(self.test_x[start:end]), "target": self.test_y[start:end].clone()}


@attrs.define
class CIFAR100Config:
    path: str = field("", "fsspec URL of cifar-100-python.tar.gz or of its extracted cifar-100-python/ folder")
    batch_size: int = field(64, "training images per micro-batch (spec §11.1: 64)")
    eval_batch_size: int = field(500, "test images per evaluation batch")
    augment: bool = field(True, "RandomCrop(32, padding) + horizontal flip on training batches (spec §11.1)")
    padding: int = field(4, "crop padding in pixels", validator=non_negative)


class CIFAR100Data(Plugin):
    """CIFAR-100 from the official python archive (restricted unpickler); val = the 10,000-image test split."""

    name = "cifar100"
    Config = CIFAR100Config
    provides = ("data", "data:classification")
    recipes = RECIPES

    @hookimpl
    def hookmix_data(self, state):
        from plugins.kd.cifar100 import UnsafePickleError

        c = self.config
        if not c.path:
            raise BadInput("plugins.cifar100.path is empty; set it to cifar-100-python.tar.gz (any fsspec URL)")
        try:
            return CIFAR100Batches(c.path, c.batch_size, c.eval_batch_size, c.augment, c.padding)
        except FileNotFoundError as exc:
            raise BadInput(f"plugins.cifar100.path: {exc}; download the python version of CIFAR-100") from None
        except UnsafePickleError as exc:
            raise BadInput(f"plugins.cifar100.path: {exc}") from None
        except (ValueError, OSError, EOFError) as exc:
            raise BadInput(f"plugins.cifar100: {str(exc).splitlines()[0]}; check the archive") from None


@attrs.define
class ResNetConfig:
    arch: str = field("resnet8x4", "resnet8x4 (student, ~1.2M parameters) or resnet32x4 (teacher, ~7.4M)",
                      validator=one_of("resnet8x4", "resnet32x4"))


class ResNet(Plugin):
    """CIFAR ResNets of the CRD / mdistiller family (resnet8x4, resnet32x4); penultimate feature: `flatten`."""

    name = "resnet"
    Config = ResNetConfig
    provides = ("model",)

    @hookimpl
    def hookmix_model(self, state):
        from plugins.kd import resnet

        info = getattr(state.data, "info", {}) or {}
        if "num_classes" not in info or info.get("channels", 3) != 3:
            raise BadInput("resnet needs RGB image classification data (e.g. cifar100); enable a matching data plugin")
        return getattr(resnet, self.config.arch)(num_classes=info["num_classes"])


@attrs.define
class SGDConfig:
    lr: float = field(0.05, "learning rate (spec §11.1: 0.05; 0.01 for ShuffleNet / MobileNet students)",
                      validator=positive)
    momentum: float = field(0.9, "momentum")
    weight_decay: float = field(5e-4, "L2 weight decay on every parameter (spec §11.1: 5e-4)")
    nesterov: bool = field(False, "Nesterov momentum")
    milestones: list[int] = field([], "steps after which the learning rate is multiplied by gamma (MultiStepLR)")
    gamma: float = field(0.1, "learning-rate factor at each milestone", validator=positive)


class SGD(Plugin):
    """SGD with momentum and weight decay, and a multi-step learning-rate schedule (the CIFAR KD protocol)."""

    name = "sgd"
    Config = SGDConfig
    provides = ("optimizer",)

    @hookimpl
    def hookmix_configure(self, state):
        m = self.config.milestones
        if any(b <= a for a, b in zip(m, m[1:])) or any(s < 1 for s in m):
            raise BadInput(f"plugins.sgd.milestones={m} must be increasing positive step counts, e.g. [150, 180]")

    @hookimpl
    def hookmix_optimizer(self, param_groups, state):
        c = self.config
        groups = [{k: v for k, v in g.items() if k != "name"} for g in param_groups]
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                               nesterov=c.nesterov)

    @hookimpl
    def hookmix_lr_scheduler(self, optimizer, state):
        if not self.config.milestones:
            return None
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(self.config.milestones), self.config.gamma)
