"""CTKD (plugin ``ctkd``): the gradient reversal, the cosine schedule of its factor, the learned temperature and
how kd / dkd / nkd read it, resume, and a short MNIST-1D run of the shipped recipe with logit_std.

The references are written from the official code's definitions (zhengli97/CTKD: ``GradientReversalFunction``,
``CosineDecay``, ``Global_T``, ``DistillKL``), with explicit sums in float64 where a value is compared.
"""

from __future__ import annotations

import math

import pytest
import torch

import engine
from engine import BadInput, Plugin, hookimpl
from engine.testing import TOY, assert_resumes_exactly, train
from plugins.ctkd.plugin import CTKD, CTKDConfig
from plugins.ctkd.temperature import GlobalTemperature, cosine_lambda, reverse_gradient
from plugins.kd.distill_inputs import TEMPERATURE, temperature_of
from plugins.kd.losses import dkd_loss, kd_loss
from plugins.logit_std.transform import standardize_logits
from plugins.nkd.losses import nkd_loss


def official_cosine(i: float, loops: float, max_value: float = 0.0, min_value: float = -1.0) -> float:
    """The official ``CosineDecay(max_value, min_value, num_loops).get_value(i)``, restated line by line."""
    i = min(max(i, 0), loops)
    value = (math.cos(i * math.pi / loops) + 1.0) * 0.5
    return value * (max_value - min_value) + min_value


def brute_force_kd(zs: torch.Tensor, zt: torch.Tensor, temperature: float) -> float:
    """``DistillKL``: KL(softmax(z_t/T) || softmax(z_s/T)), summed over classes, batch mean, times T^2."""

    def softmax(row: list[float]) -> list[float]:
        m = max(row)
        e = [math.exp((v - m) / temperature) for v in row]
        return [v / sum(e) for v in e]

    total = 0.0
    for s_row, t_row in zip(zs.tolist(), zt.tolist()):
        ps, pt = softmax(s_row), softmax(t_row)
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    return total / zs.shape[0] * temperature**2


# --- the pieces, pure PyTorch --------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, -1.0, -0.37, 2.5])
def test_the_reversal_is_the_identity_forward_and_scales_the_gradient_by_lambda(gen, lam):
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = reverse_gradient(x, lam)
    assert torch.equal(y, x) and y.dtype == torch.float64
    y.backward(upstream)
    assert torch.equal(x.grad, upstream * lam)  # exact: one multiplication, as the reference does it


def test_the_reversal_inside_a_chain_reverses_only_what_flows_through_it(gen):
    theta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    plain = torch.autograd.grad(1 + 20 * torch.sigmoid(theta), theta)[0]
    reversed_ = torch.autograd.grad(1 + 20 * torch.sigmoid(reverse_gradient(theta, -1.0)), theta)[0]
    assert torch.equal(reversed_, -plain)


def test_the_cosine_schedule_matches_the_official_decay():
    n = 10
    assert cosine_lambda(0, n) == 0.0  # start: no reversal
    assert cosine_lambda(n / 2, n) == pytest.approx(-0.5, abs=1e-15)  # middle: the mean of both ends
    assert cosine_lambda(n, n) == -1.0 and cosine_lambda(3 * n, n) == -1.0  # end, and held after it
    assert cosine_lambda(-4, n) == 0.0  # before the start: the start
    for i in range(0, 13):
        assert cosine_lambda(i, n) == official_cosine(i, n)
        assert cosine_lambda(i, n, 0.5, -2.0) == official_cosine(i, n, 0.5, -2.0)
    assert cosine_lambda(1, 10) == pytest.approx(-(1 - math.cos(math.pi / 10)) / 2, rel=1e-15)  # official epoch 1
    assert cosine_lambda(0, 0) == -1.0 and cosine_lambda(5, 0, 0.0, -0.25) == -0.25  # no ramp: the end at once


def test_the_plugin_counts_steps_from_one_and_defaults_to_a_24th_of_the_run():
    plugin = CTKD()
    run = type("Run", (), {"steps": 240})()
    state = type("State", (), {"step": 0, "run": run})()
    assert plugin.decay_steps(state) == 10  # the official 10 of 240 epochs
    assert plugin.lambda_at(state) == official_cosine(1, 10)  # the first step is step 1, as epoch 1
    state.step = 9
    assert plugin.lambda_at(state) == -1.0
    run.steps = 3
    assert plugin.decay_steps(state) == 1  # at least one step


def test_the_official_defaults_and_the_temperature_formula():
    c = CTKDConfig()
    assert (c.t_start, c.t_end, c.init, c.decay_steps, c.lambda_start, c.lambda_end) == (1.0, 20.0, 1.0, -1, 0.0, -1.0)
    module = GlobalTemperature(c.t_start, c.t_end, c.init).double()
    temperature = module(-1.0)
    assert temperature.dim() == 0
    assert temperature.item() == pytest.approx(1 + 20 / (1 + math.exp(-1.0)), rel=1e-15)  # 15.62
    assert [n for n, _ in module.named_parameters()] == ["theta"]


def test_a_float_temperature_passes_through_untouched():
    assert temperature_of({}, 4.0) == 4.0 and type(temperature_of({}, 4.0)) is float
    learned = torch.tensor(3.0)
    assert temperature_of({TEMPERATURE: learned}, 4.0) is learned


# --- through the engine: a toy teacher ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ctkd_teacher") / "run")
    train(TOY, steps=10, out=out, threads=1)
    return out


def student(teacher: str, **extra) -> dict:
    return {"teacher": {"run": teacher}, **extra}


class Recorder(Plugin):
    """Keeps what the step's losses saw and the gradient theta received (the reversed one)."""

    name = "ctkd_recorder"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    @hookimpl
    def hookmix_on_train_batch(self, batch, outputs, state):
        self.seen.append({k: outputs[k].detach().clone() for k in ("logits", "teacher_logits", TEMPERATURE)})

    @hookimpl
    def hookmix_after_backward(self, state):
        self.seen[-1]["grad"] = state.modules["ctkd"].theta.grad.detach().clone()


def test_ctkd_alone_is_refused_naming_the_readers():
    with pytest.raises(BadInput, match=r"no enabled loss reads the learned temperature.*run.plugins\+=kd"):
        train([*TOY, "ctkd"], steps=1, threads=1)


def test_lambda_follows_the_schedule_step_by_step(teacher):
    config = student(teacher, ctkd={"decay_steps": 4})
    result = train([*TOY, "teacher", "kd", "ctkd"], config, steps=5, threads=1)
    lams = [m["ctkd/lambda"] for m in result.metrics if "ctkd/lambda" in m]
    assert lams == [official_cosine(k, 4) for k in range(1, 6)]  # steps 1..5: the middle (-0.5) at 2, -1 from 4
    assert lams[1] == pytest.approx(-0.5, abs=1e-15) and lams[3:] == [-1.0, -1.0]


def test_the_temperature_is_trained_and_climbs_the_kd_loss(teacher):
    """theta is in the optimizer, its gradient is lambda x d(KD)/d(theta), and SGD's step raises the KD term."""
    config = student(teacher, ctkd={"decay_steps": 0}, kd={"weight": 0.9})  # lambda = -1 from the first step
    result = train([*TOY, "teacher", "kd", "ctkd", Recorder], config, steps=1, threads=1)
    theta = result.state.modules["ctkd"].theta
    assert any(p is theta for g in result.state.optimizer.param_groups for p in g["params"])
    seen = result.plugins["ctkd_recorder"].seen[0]

    def kd_at(th: torch.Tensor) -> torch.Tensor:
        temperature = 1 + 20 * torch.sigmoid(th)
        return 0.9 * kd_loss(seen["logits"].double(), seen["teacher_logits"].double(), temperature)

    theta0 = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    ascent = torch.autograd.grad(kd_at(theta0), theta0)[0]  # d(kd)/d(theta), not reversed
    assert seen[TEMPERATURE].item() == pytest.approx(1 + 20 / (1 + math.exp(-1.0)), rel=1e-6)
    assert seen["grad"].item() == pytest.approx(-ascent.item(), rel=1e-4)  # reversed: lambda = -1
    assert ascent.item() != 0
    # toy SGD, first step: theta1 = theta0 - lr x grad = theta0 + lr x d(kd)/d(theta): up the KD loss
    assert theta.item() == pytest.approx(1.0 - 0.1 * seen["grad"].item(), rel=1e-6)
    with torch.no_grad():
        assert kd_at(theta.detach().double()).item() > kd_at(theta0.detach()).item()
    assert result.metrics[0]["ctkd/temperature"] == pytest.approx(seen[TEMPERATURE].item(), rel=1e-6)


@pytest.mark.parametrize("with_ls", [False, True], ids=["raw", "logit_std"])
def test_kd_dkd_nkd_read_the_learned_temperature(teacher, gen, with_ls):
    plugins = [*TOY, "teacher", "kd", "dkd", "nkd", "ctkd", *(["logit_std"] if with_ls else [])]
    # a small lr: at toy_sgd's 0.1 the climb of dkd's 8 T^2 NCKD saturates the sigmoid (T -> 21) in 2 steps
    config = student(teacher, kd={"weight": 2.0}, ctkd={"init": -0.5}, toy_sgd={"lr": 1e-3})
    result = train(plugins, config, steps=2, threads=1)
    assert result.state.modules["ctkd"].theta.item() != -0.5  # trained, and away from the sigmoid's flat ends
    assert abs(result.state.modules["ctkd"].theta.item()) < 3
    temperature = result.state.modules["ctkd"](-1.0)  # what aux_outputs hands over at the current theta
    value = temperature.item()
    assert value == pytest.approx(1 + 20 * torch.sigmoid(result.state.modules["ctkd"].theta).item(), rel=1e-6)
    assert value not in (4.0, 1.0)  # neither kd's / dkd's nor nkd's configured temperature
    zs, zt = torch.randn(16, 3, generator=gen) * 3, torch.randn(16, 3, generator=gen) * 3
    target = torch.randint(0, 3, (16,), generator=gen)
    outputs = {"logits": zs, "teacher_logits": zt, TEMPERATURE: temperature}
    terms = result.trainer.manager.loss_terms({"target": target}, outputs, result.state)
    s, t = (standardize_logits(zs), standardize_logits(zt)) if with_ls else (zs, zt)
    assert terms["kd"].item() == pytest.approx(2.0 * brute_force_kd(s.double(), t.double(), value), rel=1e-5)
    _, dkd = dkd_loss(s, t, target, 1.0, 8.0, value)  # warm-up: -1 = 1/12 of 2 steps = 1 step, so factor 1
    _, nkd = nkd_loss(s, t, target, value, 1.5)
    for name, want in [("tckd", dkd["tckd"]), ("nckd", dkd["nckd"]), *nkd.items()]:
        assert terms[name].item() == pytest.approx(want.item(), rel=1e-5), name
    sum(terms[k] for k in ("kd", "tckd", "nckd", "nkd_non_target")).backward()
    assert result.state.modules["ctkd"].theta.grad.item() != 0  # every reader's term reaches theta


def test_without_ctkd_the_configured_temperature_is_used_bit_for_bit(teacher, gen):
    result = train([*TOY, "teacher", "kd"], student(teacher), steps=1, threads=1)
    zs, zt = torch.randn(16, 3, generator=gen) * 3, torch.randn(16, 3, generator=gen) * 3
    batch = {"target": torch.randint(0, 3, (16,), generator=gen)}
    terms = result.trainer.manager.loss_terms(batch, {"logits": zs, "teacher_logits": zt}, result.state)
    assert torch.equal(terms["kd"], 0.9 * kd_loss(zs, zt, 4.0))


def test_ctkd_resumes_bit_exactly(teacher):
    config = student(teacher, ctkd={"decay_steps": 3})  # the resumed half starts inside the ramp
    assert_resumes_exactly([*TOY, "teacher", "kd", "ctkd"], config, steps=4, split=2, threads=1)


# --- the shipped recipe, shortened, on tiny MNIST-1D ----------------------------------------------------------

DATA = {"num_train": 400, "num_test": 100, "batch_size": 50}


@pytest.fixture(scope="module")
def mnist1d_teacher(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOOKMIX_CACHE", str(tmp_path_factory.mktemp("hookmix_cache")))
        out = str(tmp_path_factory.mktemp("mnist1d_teacher") / "run")
        config = {"mnist1d": DATA, "mlp": {"hidden": [32]}, "adamw": {"lr": 1e-2}}
        train(["mnist1d", "mlp", "adamw", "cross_entropy"], config, steps=40, out=out, threads=1)
        yield out  # the cache variable stays set for the tests of this module that use the teacher


def test_the_shipped_recipe_trains_ctkd_with_kd_and_logit_std(mnist1d_teacher, tmp_path):
    teacher_run = mnist1d_teacher
    recipe = engine.load_recipe("mnist1d-student-ctkd-ls")
    assert {"kd", "logit_std", "ctkd"} <= set(recipe.run.plugins)
    overrides = [f"plugins.mnist1d.{k}={v}" for k, v in DATA.items()]
    overrides += [f"plugins.teacher.run={teacher_run}", "plugins.mlp.hidden=[32]"]
    overrides += ["run.steps=24", "run.eval_interval=12", "run.log_interval=1", "run.threads=1"]
    result = engine.train("mnist1d-student-ctkd-ls", *overrides, out=str(tmp_path / "run"), quiet=True)
    train_records = [m for m in result.metrics if "train/loss" in m]
    assert len(train_records) == 24
    assert all(math.isfinite(m["train/loss"]) and math.isfinite(m["train/loss/kd"]) for m in train_records)
    assert {"logit_std/std_student", "ctkd/temperature", "ctkd/lambda"} <= set(train_records[0])
    ce = [m["train/loss/ce"] for m in train_records]
    assert sum(ce[-4:]) < sum(ce[:4])  # the student learns (means of 4 steps: one batch of 50 is noisy)
    assert train_records[-1]["ctkd/lambda"] == -1.0  # decay_steps -1: 1 step of 24
    temperatures = [m["ctkd/temperature"] for m in train_records]
    assert temperatures[-1] != temperatures[0]  # theta moved
    assert result.state.modules["ctkd"].theta.item() != 1.0
    assert any("val/accuracy" in m for m in result.metrics)
