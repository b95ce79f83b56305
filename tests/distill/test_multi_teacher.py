"""Multi-teacher distillation with plugin instances (plugin API 1.1): teacher@cnn, teacher@mlp, kd@cnn, kd@mlp.

Each kd instance reads the teacher with its label unless its ``teachers`` key names others; several teachers are
averaged after each one's logits went through ``state.logits`` (so logit_std standardizes each teacher). Tiny
teachers (a 1-D CNN and an MLP, 100 steps on 400 MNIST-1D examples) keep it to seconds.
"""

import json

import pytest
import torch

import engine
from engine import BadInput, Plugin, hookimpl
from engine.loop import Trainer
from engine.rundir.checkpoint import load_latest
from engine.rundir.directory import RunDir
from engine.testing import assert_resumes_exactly, make_recipe, train
from plugins.kd.losses import kd_loss
from plugins.logit_std.transform import standardize_logits

DATA = {"num_train": 400, "num_test": 100, "batch_size": 50}
STUDENT = ["mnist1d", "mlp", "adamw", "cross_entropy"]
TEACHERS = ["teacher@cnn", "teacher@mlp"]


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """Generated MNIST-1D arrays go to a temporary cache, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("hookmix_cache")
        mp.setenv("HOOKMIX_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, cache_dir) -> dict[str, str]:
    """Two tiny trained teachers of different architectures: {"cnn": run dir, "mlp": run dir}."""
    out = {}
    for label, model, config in (("cnn", "cnn1d", {"channels": 16}), ("mlp", "mlp", {"hidden": [64]})):
        out[label] = str(tmp_path_factory.mktemp(f"teacher-{label}") / "run")
        train(
            ["mnist1d", model, "adamw", "cross_entropy"],
            {"mnist1d": DATA, model: config, "adamw": {"lr": 1e-2}},
            steps=100,
            out=out[label],
            threads=1,
        )
    return out


def config(teachers, **extra):
    base = {"mnist1d": DATA, "mlp": {"hidden": [32]}, "adamw": {"lr": 1e-2}}
    base |= {f"teacher@{label}": {"run": run} for label, run in teachers.items()}
    return base | extra


def test_each_kd_instance_reads_the_teacher_with_its_label(teachers):
    kd = {"temperature": 2.0, "weight": 4.5}
    both = train(
        [*STUDENT, *TEACHERS, "kd@cnn", "kd@mlp", "logit_std"],
        config(teachers, **{"kd@cnn": kd, "kd@mlp": kd}),
        steps=1,
        threads=1,
    )
    first = both.metrics[0]
    for label, run in teachers.items():  # the same student, batch and teacher, distilled from one teacher alone
        alone = train(
            [*STUDENT, "teacher", "kd", "logit_std"],
            {**config({}), "teacher": {"run": run}, "kd": kd},
            steps=1,
            threads=1,
        )
        assert first[f"train/loss/kd@{label}"] == alone.metrics[0]["train/loss/kd"]
        assert both.metrics[-1][f"teacher@{label}/val_accuracy"] == alone.metrics[-1]["teacher/val_accuracy"]
    assert first["train/loss/kd@cnn"] != first["train/loss/kd@mlp"]
    # each teacher is its own frozen module, under its instance name
    assert set(both.state.frozen_modules) == set(TEACHERS)
    assert both.state.frozen_modules["teacher@cnn"] is both.plugins["teacher@cnn"].model


@pytest.mark.parametrize("standardize", [True, False])
def test_averaged_logit_kd_averages_each_teachers_logits_as_the_consumer_sees_them(teachers, standardize):
    names = [*STUDENT, *TEACHERS, "kd"] + (["logit_std"] if standardize else [])
    kd = {"temperature": 2.0, "weight": 9.0, "teachers": TEACHERS}
    recipe, registry = make_recipe(names, config(teachers, kd=kd), steps=1, threads=1)
    trainer = Trainer(recipe, registry, stream=__import__("io").StringIO())
    trainer.setup()
    gen = torch.Generator().manual_seed(0)
    s, t1, t2 = (torch.randn(8, 10, generator=gen) * k for k in (1.0, 3.0, 0.5))
    batch = {"target": torch.randint(0, 10, (8,), generator=gen)}
    outputs = {"logits": s, "teacher_logits@cnn": t1, "teacher_logits@mlp": t2}
    term = trainer.manager.loss_terms(batch, outputs, trainer.state)["kd"]
    z = standardize_logits if standardize else (lambda x: x)
    expected = 9.0 * kd_loss(z(s), (z(t1) + z(t2)) / 2, 2.0)
    assert torch.allclose(term, expected, atol=1e-6)


def test_a_teacher_a_kd_instance_reads_must_be_enabled(teachers):
    with pytest.raises(
        BadInput,
        match=r"kd@big reads teacher 'teacher@big' \(plugins.kd@big.teachers = \[\] reads it\), which run.plugins "
        r"does not enable \(enabled teachers: teacher@cnn, teacher@mlp\); enable it, or set plugins.kd@big.teachers",
    ):
        train([*STUDENT, *TEACHERS, "kd@big"], config(teachers), steps=1, threads=1)
    with pytest.raises(BadInput, match=r"kd reads teacher 'teacher@gpu', which run.plugins does not enable"):
        train([*STUDENT, *TEACHERS, "kd"], config(teachers, kd={"teachers": ["teacher@gpu"]}), steps=1, threads=1)
    with pytest.raises(BadInput, match=r"plugins.kd: teachers=\['kd@cnn'\] must be a list of values, each"):
        train([*STUDENT, *TEACHERS, "kd"], config(teachers, kd={"teachers": ["kd@cnn"]}), steps=1, threads=1)


class OwnTeacher(Plugin):
    """A third-party teacher written against API 1.0: provides "teacher" and adds outputs["teacher_logits"]."""

    name = "own_teacher"
    provides = ("teacher",)

    @hookimpl
    def hookmix_aux_outputs(self, outputs):
        return {"teacher_logits": 2.0 * outputs["logits"].detach()}


def test_a_plugin_that_provides_teacher_still_feeds_the_plain_kd():
    result = train([*STUDENT, OwnTeacher, "kd"], config({}), steps=1, threads=1)
    assert "train/loss/kd" in result.metrics[0]


def test_dkd_instances_name_their_terms_and_metric_after_themselves(teachers):
    result = train([*STUDENT, *TEACHERS, "dkd@cnn", "dkd@mlp"], config(teachers), steps=1, threads=1)
    first = result.metrics[0]
    for label in ("cnn", "mlp"):
        assert {f"train/loss/tckd@{label}", f"train/loss/nckd@{label}", f"dkd@{label}/warmup"} <= set(first)


def test_two_teachers_are_checkpointed_under_their_names_and_resume_exactly(teachers, tmp_path):
    names = [*STUDENT, *TEACHERS, "kd@cnn", "kd@mlp", "logit_std"]
    out = str(tmp_path / "run")
    train(names, config(teachers), steps=2, out=out, threads=1)
    saved = load_latest(RunDir(out))["plugins"]
    for label, run in teachers.items():
        assert saved[f"teacher@{label}"] == {"source": run, "step": 100}
    assert_resumes_exactly(names, config(teachers), steps=4, threads=1)


@pytest.mark.parametrize(
    "recipe, terms",
    [("mnist1d-student-mt-kd-ls", {"kd@cnn", "kd@mlp"}), ("mnist1d-student-mt-avg-kd-ls", {"kd"})],
)
def test_the_shipped_multi_teacher_recipes_train(teachers, recipe, terms, tmp_path):
    overrides = [f"plugins.teacher@{label}.run={json.dumps(run)}" for label, run in teachers.items()]
    overrides += [f"plugins.mnist1d.{k}={v}" for k, v in DATA.items()]
    result = engine.train(recipe, *overrides, "run.steps=2", "run.threads=1", out=str(tmp_path / "run"), quiet=True)
    first = result.metrics[0]
    assert {f"train/loss/{t}" for t in terms} | {"train/loss/ce"} <= set(first)
    assert not any(k.startswith("train/loss/") and k.removeprefix("train/loss/") not in terms | {"ce"} for k in first)
    assert {"teacher@cnn/val_accuracy", "teacher@mlp/val_accuracy"} <= set(result.summary["metrics"])
