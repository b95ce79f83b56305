"""Engine-level checks of the distillation plugins: teacher, kd, dkd, nkd, uskd, logit_std, cifar100/resnet/sgd.

Everything runs on tiny data (MNIST-1D with 400 training examples, a 1-D CNN teacher of 16 channels trained
for 100 steps) through the real engine (engine.testing), so the hooks, the plugin order and the checkpoints
are the ones a user gets.
"""

import json

import pytest
import torch

from engine import BadInput
from engine.cli.main import main as cli_main
from engine.loop import Trainer
from engine.rundir.checkpoint import load_latest
from engine.rundir.directory import RunDir
from engine.testing import assert_resumes_exactly, make_recipe, train

DATA = {"num_train": 400, "num_test": 100, "batch_size": 50}
STUDENT = ["mnist1d", "mlp", "adamw", "cross_entropy"]


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """Generated MNIST-1D arrays go to a temporary cache, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("hookmix_cache")
        mp.setenv("HOOKMIX_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, cache_dir):
    """A tiny trained CNN teacher run (~40% test accuracy) on a local path, with checkpoints at steps 50 and 100."""
    out = str(tmp_path_factory.mktemp("teacher") / "run")
    train(
        ["mnist1d", "cnn1d", "adamw", "cross_entropy"],
        steps=100,
        out=out,
        checkpoint_interval=50,
        threads=1,
        config={"mnist1d": DATA, "cnn1d": {"channels": 16}, "adamw": {"lr": 1e-2}},
    )
    return out


def student_config(teacher_dir, **extra):
    config = {"mnist1d": DATA, "mlp": {"hidden": [32]}, "adamw": {"lr": 1e-2}, "teacher": {"run": teacher_dir}}
    config.update(extra)
    return config


def setup_trainer(plugins, config):
    recipe, registry = make_recipe(plugins, config, steps=2, threads=1)
    trainer = Trainer(recipe, registry, stream=__import__("io").StringIO())
    trainer.setup()
    return trainer


# --- logit_std is scoped to the distillation consumers ---------------------------------------------------


def test_ce_unaffected_by_logit_std(teacher_dir):
    plugins = [*STUDENT, "teacher", "kd"]
    plain = train(plugins, student_config(teacher_dir), steps=1, threads=1)
    ls = train([*plugins, "logit_std"], student_config(teacher_dir), steps=1, threads=1)
    alone = train(STUDENT, {k: v for k, v in student_config(teacher_dir).items() if k in STUDENT}, steps=1, threads=1)
    # same init and batch (the teacher does not move the student's RNG streams), and CE sees raw logits
    assert alone.metrics[0]["train/loss/ce"] == plain.metrics[0]["train/loss/ce"] == ls.metrics[0]["train/loss/ce"]
    assert plain.metrics[0]["train/loss/kd"] != ls.metrics[0]["train/loss/kd"]
    assert "logit_std/std_student" in ls.metrics[0] and "logit_std/std_teacher" in ls.metrics[0]
    # the supervised consumer is handed the very same tensor
    state = ls.state
    z = torch.randn(4, 10)
    assert state.logits(z, role="student", consumer="cross_entropy", kind="supervised") is z
    zs = state.logits(z, role="student", consumer="kd", kind="distillation")
    assert torch.allclose(zs.mean(-1), torch.zeros(4), atol=1e-6)
    assert torch.allclose(zs.std(-1), torch.ones(4), atol=1e-5)


def test_kd_with_ls_is_invariant_to_affine_rescaling_through_the_plugin_path(teacher_dir):
    gen = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(16, 10, generator=gen) * 3, torch.randn(16, 10, generator=gen) * 3
    batch = {"target": torch.randint(0, 10, (16,), generator=gen)}

    def kd_term(trainer, s, t):
        terms = trainer.manager.loss_terms(batch, {"logits": s, "teacher_logits": t}, trainer.state)
        return terms["kd"]

    config = student_config(teacher_dir, kd={"temperature": 2.0, "weight": 9.0})
    ls = setup_trainer([*STUDENT, "teacher", "kd", "logit_std"], config)
    base = kd_term(ls, zs, zt)
    assert torch.allclose(kd_term(ls, 0.5 * zs - 2.0, 3.0 * zt + 5.0), base, atol=1e-5)
    assert kd_term(ls, 4.0 * zt + 1.0, zt).abs() < 1e-5  # KD_LS(a z_t + b, z_t) = 0
    plain = setup_trainer([*STUDENT, "teacher", "kd"], config)
    assert not torch.allclose(kd_term(plain, 0.5 * zs - 2.0, 3.0 * zt + 5.0), kd_term(plain, zs, zt), atol=1e-3)


def test_logit_std_consumer_names_are_checked(teacher_dir):
    with pytest.raises(BadInput, match="did you mean 'kd'"):
        train(
            [*STUDENT, "teacher", "kd", "logit_std"],
            student_config(teacher_dir, logit_std={"consumers": ["kdd"]}),
            steps=1,
            threads=1,
        )


# --- the teacher ----------------------------------------------------------------------------------------


def test_teacher_is_frozen_outside_the_optimizer_and_the_checkpoint(teacher_dir):
    result = train([*STUDENT, "teacher", "kd"], student_config(teacher_dir), steps=3, threads=1)
    teacher = result.trainer.manager.plugins["teacher"].model
    saved = load_latest(RunDir(teacher_dir))["model"]
    assert not teacher.training
    for name, p in teacher.named_parameters():
        assert not p.requires_grad and p.grad is None
        assert torch.equal(p.detach().cpu(), saved[name])  # loaded, and untouched by training
    in_optimizer = {id(p) for g in result.state.optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    payload = load_latest(RunDir(result.run_dir))
    assert set(payload["model"]) == set(result.model.state_dict())  # the student only
    assert not payload["modules"]
    assert payload["plugins"]["teacher"] == {"source": teacher_dir, "step": 100}
    assert result.metrics[-1]["teacher/val_accuracy"] > 0.3


def test_missing_teacher_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="holds no recipe.toml"):
        train([*STUDENT, "teacher", "kd"], student_config(str(tmp_path / "nope")), steps=1)
    with pytest.raises(BadInput, match="plugins.teacher.run is empty"):
        train([*STUDENT, "teacher", "kd"], student_config(""), steps=1)
    with pytest.raises(BadInput, match="requires 'teacher'"):
        train([*STUDENT, "kd"], {"mnist1d": DATA}, steps=1)


def test_missing_teacher_exits_2_with_one_line(tmp_path, capsys):
    code = cli_main(
        [
            "train",
            "mnist1d-student-kd",
            f"plugins.teacher.run={json.dumps(str(tmp_path / 'nope'))}",
            "--out",
            str(tmp_path / "student"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "recipe.toml" in err
    assert not (tmp_path / "student").exists()


def test_incompatible_teacher_is_bad_input(teacher_dir):
    # the toy data has 3 classes of 8-D inputs; the teacher was trained on MNIST-1D (10 classes, length 40)
    with pytest.raises(BadInput, match="incompatible teacher.*num_classes=10"):
        train(
            ["toy_data", "toy_model", "toy_sgd", "toy_ce", "teacher", "kd"], {"teacher": {"run": teacher_dir}}, steps=1
        )


def test_teacher_checkpoint_url_and_changed_teacher_on_resume(teacher_dir, tmp_path):
    plugins = [*STUDENT, "teacher", "kd"]
    out = str(tmp_path / "student")
    train(plugins, student_config(teacher_dir), steps=4, out=out, stop_at=2, threads=1)
    older = f"{teacher_dir}/checkpoints/step-00000050.pt"
    with pytest.raises(BadInput, match="teacher changed"):
        train(plugins, student_config(older), steps=4, out=out, resume=True, threads=1)
    result = train(plugins, student_config(older), steps=1, threads=1)
    assert result.trainer.manager.plugins["teacher"].step == 50


# --- loss plugins end to end -----------------------------------------------------------------------------


def test_kd_ls_end_to_end_on_mnist1d(teacher_dir):
    config = student_config(teacher_dir, cross_entropy={"weight": 0.1}, kd={"temperature": 2.0, "weight": 9.0})
    result = train([*STUDENT, "teacher", "kd", "logit_std"], config, steps=20, eval_interval=10, threads=1)
    last = {k: v for m in result.metrics if m["step"] == 20 for k, v in m.items()}  # train and eval records
    assert {"train/loss/ce", "train/loss/kd", "val/accuracy", "teacher/val_accuracy"} <= set(last)
    losses = [m["train/loss"] for m in result.metrics if "train/loss" in m]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert last["val/accuracy"] > 0.15  # learns something in 20 steps (chance: 0.1)


def test_dkd_warms_up_per_step_and_nkd_terms(teacher_dir):
    config = student_config(teacher_dir, dkd={"warmup_steps": 4})
    result = train([*STUDENT, "teacher", "dkd", "nkd"], config, steps=2, threads=1)
    first, second = result.metrics[0], result.metrics[1]
    assert first["dkd/warmup"] == 0.25 and second["dkd/warmup"] == 0.5
    assert {"train/loss/tckd", "train/loss/nckd", "train/loss/nkd_target", "train/loss/nkd_non_target"} <= set(first)
    auto = setup_trainer([*STUDENT, "teacher", "dkd"], student_config(teacher_dir))
    assert auto.manager.plugins["dkd"].warmup(auto.state) == 1  # -1: 1/12 of run.steps=2, at least 1


def test_dkd_ls_resumes_exactly(teacher_dir):
    config = student_config(teacher_dir, dkd={"alpha": 9.0, "beta": 72.0, "temperature": 2.0, "warmup_steps": 4})
    assert_resumes_exactly([*STUDENT, "teacher", "dkd", "logit_std"], config, steps=6, eval_interval=2, threads=1)


def test_uskd_weak_head_is_trained_by_its_own_term_only_and_checkpointed():
    plugins = [*STUDENT, "uskd"]
    config = {"mnist1d": DATA, "mlp": {"hidden": [32]}, "uskd": {"alpha": 0.1, "beta": 0.1, "mu": 0.1}}
    trainer = setup_trainer(plugins, config)
    state, manager = trainer.state, trainer.manager
    head = state.modules["uskd_head"]
    assert head.fc.in_features == 32 and head.fc.out_features == 10
    in_optimizer = {id(p) for g in state.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in head.parameters()} <= in_optimizer
    batch = state.data.train_batch(torch.Generator().manual_seed(0))
    outputs = manager.aux_outputs(state.model, batch, manager.forward(state.model, batch, state), state)
    terms = manager.loss_terms(batch, outputs, state)
    params = list(head.parameters())
    others = sum(t for n, t in terms.items() if n != "uskd_weak")
    assert all(g is None for g in torch.autograd.grad(others, params, retain_graph=True, allow_unused=True))
    weak = torch.autograd.grad(terms["uskd_weak"], params, retain_graph=True)
    total = torch.autograd.grad(sum(terms.values()), params)
    assert all(torch.equal(a, b) and a.abs().sum() > 0 for a, b in zip(weak, total))

    result = train(plugins, config, steps=3, threads=1)
    saved = load_latest(RunDir(result.run_dir))["modules"]
    now = result.state.modules.state_dict()
    assert set(saved) == {"uskd_head.fc.weight", "uskd_head.fc.bias"}
    assert all(torch.equal(saved[k], now[k]) for k in saved)
    assert not torch.equal(now["uskd_head.fc.weight"], head.fc.weight.detach())  # it was trained


def test_uskd_unknown_feature_is_bad_input():
    with pytest.raises(BadInput, match="did you mean 'features'"):
        train([*STUDENT, "uskd"], {"mnist1d": DATA, "uskd": {"feature": "feature"}}, steps=1)


def test_language_model_distillation_flattens_logits_and_features(tmp_path):
    data = {"block_size": 16, "batch_size": 4, "eval_batches": 1}
    gpt = {"n_layer": 1, "n_head": 2, "n_embd": 16}
    teacher = str(tmp_path / "lm-teacher")
    train(
        ["tinyshakespeare", "gpt", "adamw", "cross_entropy"],
        {"tinyshakespeare": data, "gpt": gpt},
        steps=2,
        out=teacher,
        threads=1,
    )
    config = {"tinyshakespeare": data, "gpt": gpt, "teacher": {"run": teacher}, "uskd": {"feature": "ln_f"}}
    result = train(
        ["tinyshakespeare", "gpt", "adamw", "cross_entropy", "teacher", "kd", "nkd", "uskd", "logit_std"],
        config,
        steps=2,
        threads=1,
    )
    last = result.metrics[0]
    for name in ("kd", "nkd_target", "nkd_non_target", "uskd_target", "uskd_non_target", "uskd_weak"):
        assert torch.isfinite(torch.tensor(last[f"train/loss/{name}"]))
    assert result.state.modules["uskd_head"].fc.in_features == 16
    # a character-LM teacher cannot teach an MNIST-1D student
    with pytest.raises(BadInput, match="incompatible teacher"):
        train([*STUDENT, "teacher", "kd"], {"mnist1d": DATA, "teacher": {"run": teacher}}, steps=1)


# --- CIFAR-100 protocol plugins (synthetic archive) -------------------------------------------------------


def test_cifar100_resnet_sgd_train_on_a_synthetic_archive(tmp_path):
    from plugins.cifar.cifar100 import write_synthetic_cifar100

    archive = str(tmp_path / "cifar-100-python.tar.gz")
    write_synthetic_cifar100(archive, n_train=8, n_test=4)
    config = {
        "cifar100": {"path": archive, "batch_size": 4, "eval_batch_size": 4},
        "resnet": {"arch": "resnet8x4"},
        "sgd": {"lr": 0.05, "milestones": [1]},
    }
    result = train(["cifar100", "resnet", "sgd", "cross_entropy"], config, steps=2, threads=1)
    assert result.state.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert result.metrics[-1]["val/accuracy"] >= 0
    assert result.model.fc.out_features == 100
    with pytest.raises(BadInput, match="plugins.cifar100.path"):
        train(["cifar100", "resnet", "sgd", "cross_entropy"], {"cifar100": {"path": str(tmp_path / "none.tar.gz")}})
