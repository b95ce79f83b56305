"""The shipped DIST and CTKD recipes: the MNIST-1D arms of ``hookmix distill-mnist1d`` and the CIFAR-100 R32x4 -> R8x4
recipes, each resolved and trained for a few steps (CIFAR-100 on a small synthetic archive in the official layout,
from a one-step R32x4 teacher), and the rows and pairwise lines the experiment writes for them.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

import engine
from engine.testing import train
from plugins.kd import experiment

MNIST1D = ["mnist1d-student-dist", "mnist1d-student-dist-ls", "mnist1d-student-ctkd", "mnist1d-student-ctkd-ls"]
CIFAR = ["cifar100-r8x4-dist", "cifar100-r8x4-ctkd"]
STEPS_PER_EPOCH = 50000 / 64  # CIFAR-100's 50,000 training images in batches of 64 (spec §11.1)


def test_every_arm_of_the_experiment_is_a_shipped_recipe():
    for arm, recipe in experiment.ARMS.items():
        engine.load_recipe(recipe)  # resolves (bad input if the name is not shipped or a key is invalid)
        assert recipe.startswith("mnist1d-student-"), arm  # the run folder is the name without this prefix
    assert {"DIST", "DIST+LS", "CTKD", "CTKD+LS"} <= set(experiment.ARMS)
    assert set(MNIST1D) <= set(experiment.ARMS.values())
    for a, b in experiment.PAIRS:
        assert a in experiment.ARMS and b in experiment.ARMS
    assert {("DIST+LS", "DIST"), ("CTKD+LS", "CTKD"), ("CTKD", "KD")} <= set(experiment.PAIRS)


def loss_settings(name: str) -> tuple[list[str], dict]:
    recipe = engine.load_recipe(name)
    return recipe.run.plugins, recipe.plugin_configs


def test_the_mnist1d_dist_arms_differ_by_logit_std_only():
    (plain, plain_cfg), (ls, ls_cfg) = loss_settings(MNIST1D[0]), loss_settings(MNIST1D[1])
    assert ls == [*plain, "logit_std"]
    assert plain_cfg["dist_kd"] == ls_cfg["dist_kd"]
    c = plain_cfg["dist_kd"]
    assert (c.beta, c.gamma, c.temperature, c.weight) == (1.0, 1.0, 4.0, 2.0)  # the official CIFAR settings
    assert plain_cfg["cross_entropy"].weight == 1.0
    for other in ("mlp", "adamw", "mnist1d"):  # the same student and budget as the other arms
        assert plain_cfg[other] == loss_settings("mnist1d-student-kd")[1][other]
    assert engine.load_recipe(MNIST1D[0]).run.steps == engine.load_recipe("mnist1d-student-kd").run.steps


def test_the_mnist1d_ctkd_arms_take_the_kd_arms_weights():
    for ctkd, kd in [(MNIST1D[2], "mnist1d-student-kd"), (MNIST1D[3], "mnist1d-student-kd-ls")]:
        (plugins, cfg), (kd_plugins, kd_cfg) = loss_settings(ctkd), loss_settings(kd)
        assert plugins == [*kd_plugins, "ctkd"]
        assert cfg["kd"].weight == kd_cfg["kd"].weight and cfg["cross_entropy"] == kd_cfg["cross_entropy"]
        c = cfg["ctkd"]
        assert (c.t_start, c.t_end, c.init, c.decay_steps, c.lambda_start, c.lambda_end) == (1, 20, 1, -1, 0, -1)


def test_the_cifar100_recipes_use_the_official_settings_and_the_kd_protocol():
    kd = engine.load_recipe("cifar100-r8x4-kd")
    for name in CIFAR:
        recipe = engine.load_recipe(name)
        assert recipe.run.steps == kd.run.steps == 240 * STEPS_PER_EPOCH
        for table in ("cifar100", "resnet", "sgd", "teacher"):
            assert recipe.plugin_configs[table] == kd.plugin_configs[table], (name, table)
    dist = engine.load_recipe(CIFAR[0]).plugin_configs
    d = dist["dist_kd"]
    assert (d.beta, d.gamma, d.temperature, d.weight, dist["cross_entropy"].weight) == (1.0, 1.0, 4.0, 2.0, 1.0)
    ctkd = engine.load_recipe(CIFAR[1]).plugin_configs
    c = ctkd["ctkd"]
    assert (c.t_start, c.t_end, c.init, c.lambda_start, c.lambda_end) == (1.0, 20.0, 1.0, 0.0, -1.0)
    assert c.decay_steps == math.ceil(10 * STEPS_PER_EPOCH)  # the official 10 of 240 epochs
    assert (ctkd["cross_entropy"].weight, ctkd["kd"].weight) == (0.1, 0.9)  # 0.1 CE + 0.9 loss_div


# --- shortened runs ------------------------------------------------------------------------------------------

SHORT = ["run.device=cpu", "run.threads=1", "run.checkpoint_interval=0", "run.log_interval=1"]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A synthetic CIFAR-100 archive and a one-step R32x4 teacher trained on it with the shipped teacher recipe."""
    from plugins.cifar.cifar100 import write_synthetic_cifar100

    root = tmp_path_factory.mktemp("cifar")
    path = str(root / "cifar-100-python.tar.gz")
    write_synthetic_cifar100(path, n_train=32, n_test=8, seed=0)
    data = [f"plugins.cifar100.path={path}", "plugins.cifar100.batch_size=8", "plugins.cifar100.eval_batch_size=8"]
    teacher = str(root / "teacher")
    engine.train("cifar100-r32x4", *data, *SHORT, "run.steps=1", "run.eval_interval=0", out=teacher, quiet=True)
    return data + [f"plugins.teacher.run={teacher}"]


@pytest.mark.parametrize("name", CIFAR)
def test_the_cifar100_recipes_train(cifar, name, tmp_path):
    result = engine.train(name, *cifar, *SHORT, "run.steps=2", "run.eval_interval=2", out=str(tmp_path), quiet=True)
    train_records = [m for m in result.metrics if "train/loss" in m]
    assert len(train_records) == 2 and all(math.isfinite(m["train/loss"]) for m in train_records)
    terms = {"cifar100-r8x4-dist": ("dist_inter", "dist_intra"), "cifar100-r8x4-ctkd": ("kd",)}[name]
    assert all(f"train/loss/{t}" in train_records[0] for t in terms)
    if name.endswith("ctkd"):
        assert train_records[0]["ctkd/lambda"] == pytest.approx(math.cos(math.pi / 7813) / 2 - 0.5, abs=1e-12)
    assert any("val/accuracy" in m for m in result.metrics)


DATA = {"num_train": 400, "num_test": 100, "batch_size": 50}


@pytest.fixture(scope="module")
def mnist1d_teacher(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOOKMIX_CACHE", str(tmp_path_factory.mktemp("hookmix_cache")))
        out = str(tmp_path_factory.mktemp("mnist1d_teacher") / "run")
        config = {"mnist1d": DATA, "mlp": {"hidden": [32]}, "adamw": {"lr": 1e-2}}
        train(["mnist1d", "mlp", "adamw", "cross_entropy"], config, steps=40, out=out, threads=1)
        yield out  # the cache variable stays set for the tests of this module that use the teacher


@pytest.mark.parametrize("name", MNIST1D)
def test_the_mnist1d_recipes_train(mnist1d_teacher, name, tmp_path):
    overrides = [f"plugins.mnist1d.{k}={v}" for k, v in DATA.items()]
    overrides += [f"plugins.teacher.run={mnist1d_teacher}", "plugins.mlp.hidden=[32]"]
    overrides += ["run.steps=12", "run.eval_interval=12", "run.log_interval=1", "run.threads=1"]
    result = engine.train(name, *overrides, out=str(tmp_path / "run"), quiet=True)
    records = [m for m in result.metrics if "train/loss" in m]
    assert len(records) == 12 and all(math.isfinite(m["train/loss"]) for m in records)
    assert ("logit_std/std_student" in records[0]) == name.endswith("-ls")
    assert ("ctkd/temperature" in records[0]) == ("ctkd" in name)
    assert any("val/accuracy" in m for m in result.metrics)


# --- the document the experiment writes ----------------------------------------------------------------------


def test_the_document_has_the_dist_and_ctkd_rows_settings_and_pairs():
    """render() on made-up accuracies: every arm's row and settings, the pairwise lines, the learned temperature."""

    def runs(arm: str, base: float) -> list[dict]:
        t = 3.0 if arm.startswith("CTKD") else None
        return [
            {"last": base + i / 100, "best": base + 0.01 + i / 100, "wall": 1.0, "temperature": t} for i in range(3)
        ]

    results = {arm: runs(arm, 0.6 + k / 100) for k, arm in enumerate(experiment.ARMS)}
    teacher = {"best": 0.93, "last": 0.92, "wall": 60.0}
    args = SimpleNamespace(seeds=3, student_steps=0, threads=1)
    text = experiment.render(results, teacher, args, "hookmix distill-mnist1d --seeds 3")
    for arm, recipe in experiment.ARMS.items():
        assert f"| {arm} | `{recipe}` |" in text
        assert f"\n- {arm}: " in text  # its settings line
    for a, b in [("DIST+LS", "DIST"), ("CTKD+LS", "CTKD"), ("CTKD", "KD")]:
        assert f"\n- {a} vs {b}: " in text
    assert "`dist_kd` beta 1.0, gamma 1.0, temperature 4.0, weight 2.0" in text
    assert "`kd` weight 0.9, temperature learned by `ctkd`" in text
    assert "CTKD 3.00 ± 0.00; CTKD+LS 3.00 ± 0.00" in text
    assert experiment.CHOICES["DIST"] in text and experiment.CHOICES["CTKD"] in text
