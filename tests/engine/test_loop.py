"""The loop: non-finite losses, gradient accumulation, clipping, bf16, plugin metrics, scoped logits."""

from __future__ import annotations

import math

import attrs
import pytest
import torch

from engine import Plugin, TrainingFailure, field, hookimpl
from engine.cli.main import main
from engine.testing import TOY, nan_term_at, train

# --- non-finite loss --------------------------------------------------------------------------


NanAtStep2 = nan_term_at(2)  # a loss term 'blowup' that is NaN during step 2


def test_nan_loss_term_stops_the_run_naming_step_and_term():
    with pytest.raises(TrainingFailure) as exc:
        train([*TOY, NanAtStep2], steps=4)
    assert str(exc.value).startswith("step 2: loss term 'blowup' is not finite (nan)")


NAN_MODULE = """
    import torch
    from engine import Plugin, hookimpl

    class NanLoss(Plugin):
        \"\"\"Returns an infinite loss term during step 2.\"\"\"
        name = "nan_loss"

        @hookimpl
        def hookmix_loss_terms(self, batch, outputs, state):
            return {"explode": torch.tensor(float("inf") if state.step == 1 else 0.0)}
"""


def test_nan_loss_via_cli_exits_1_with_one_line(install_dist, capsys, one_error_line, tmp_path, tiny_gpt):
    install_dist("hookmix-nanloss", {"nan_loss": "hookmix_nanloss:NanLoss"}, {"hookmix_nanloss": NAN_MODULE})
    out = tmp_path / "run"
    code = main(
        ["train", "shakespeare-gpt", *tiny_gpt, "run.steps=4", "run.plugins+=nan_loss", "--quiet", "--out", str(out)]
    )
    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert line.startswith("hookmix: error: step 2: loss term 'explode' is not finite (inf)")
    assert not (out / "summary.json").exists()


# --- gradient accumulation, clipping, precision ----------------------------------------------


class FixedData:
    """16 fixed examples; a batch of 8 alternates between the halves, a batch of 16 is all of them."""

    def __init__(self, batch_size: int):
        g = torch.Generator().manual_seed(7)
        self.x, self.y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
        self.batch_size, self.calls = batch_size, 0
        self.info = {"task": "classification", "num_classes": 3, "input_dim": 8}

    def train_batch(self, generator):
        start = (self.calls * self.batch_size) % 16
        self.calls += 1
        return {"input": self.x[start : start + self.batch_size], "target": self.y[start : start + self.batch_size]}

    def val_batches(self):
        yield {"input": self.x, "target": self.y}


@attrs.define
class FixedConfig:
    batch_size: int = field(16, "examples per micro-batch")


class Fixed(Plugin):
    """Deterministic data for the accumulation test."""

    name = "fixed_data"
    Config = FixedConfig

    @hookimpl
    def hookmix_data(self, state):
        return FixedData(self.config.batch_size)


class Probe(Plugin):
    """Counts hook calls and records what it sees."""

    name = "probe"

    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}
        self.micro: list[int] = []
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.dtypes: set = set()

    def _count(self, hook):
        self.calls[hook] = self.calls.get(hook, 0) + 1

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        self.dtypes.add(outputs["logits"].dtype)
        self.micro.append(state.micro)

    @hookimpl
    def hookmix_before_backward(self, loss, state):
        self._count("before_backward")
        self.losses.append(loss.item())

    @hookimpl
    def hookmix_after_backward(self, model, state):
        self._count("after_backward")

    @hookimpl(wrapper=True)
    def hookmix_optimizer_step(self, optimizer, state):
        self._count("optimizer_step")
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.grad_norms.append(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
        )
        return (yield)

    @hookimpl
    def hookmix_after_optimizer_step(self, model, optimizer, state):
        self._count("after_optimizer_step")


def test_grad_accumulation_matches_the_big_batch_and_fires_hooks_per_step_or_micro_batch():
    big = train([Fixed, "toy_model", "toy_sgd", "toy_ce", Probe], steps=3, config={"fixed_data": {"batch_size": 16}})
    acc = train(
        [Fixed, "toy_model", "toy_sgd", "toy_ce", Probe],
        steps=3,
        grad_accum=2,
        config={"fixed_data": {"batch_size": 8}},
    )
    for key, value in big.model.state_dict().items():
        torch.testing.assert_close(acc.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in acc.metrics] == [r["step"] for r in big.metrics] == [1, 2, 3, 3]
    for a, b in zip(acc.metrics, big.metrics):
        for key in ("train/loss", "val/loss"):  # train/loss: the mean of the micro-batch losses
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5), key

    probe = acc.trainer.manager.plugins["probe"]
    assert probe.calls == {"before_backward": 6, "after_backward": 6, "optimizer_step": 3, "after_optimizer_step": 3}
    assert probe.micro == [0, 1] * 3
    terms = [r["train/loss"] for r in acc.metrics if "train/loss" in r]
    # the loss handed to backward is divided by the accumulation factor
    assert probe.losses[0] + probe.losses[1] == pytest.approx(terms[0], rel=1e-5)
    assert big.trainer.manager.plugins["probe"].calls["before_backward"] == 3


def test_grad_clipping_logs_the_norm_and_clips():
    result = train([*TOY, Probe], steps=3, grad_clip=0.05)
    norms = [r["train/grad_norm"] for r in result.metrics if "train/grad_norm" in r]
    assert len(norms) == 3 and all(n > 0.05 for n in norms)  # the norm before clipping is logged
    assert all(n <= 0.05 * (1 + 1e-4) for n in result.trainer.manager.plugins["probe"].grad_norms)
    assert "train/grad_norm" not in train(TOY, steps=1).metrics[0]


def test_bf16_runs_on_cpu_under_autocast():
    result = train([*TOY, Probe], steps=2, precision="bf16", eval_interval=1)
    assert result.trainer.manager.plugins["probe"].dtypes == {torch.bfloat16}
    assert result.model[1].weight.dtype == torch.float32  # weights stay fp32
    assert all(math.isfinite(r["train/loss"]) for r in result.metrics if "train/loss" in r)
    assert 0.0 <= result.metrics[-1]["val/accuracy"] <= 1.0


# --- plugin metrics and evaluation metrics ----------------------------------------------------


class Meter(Plugin):
    """Logs the step number and an evaluation metric."""

    name = "meter"

    @hookimpl
    def hookmix_after_optimizer_step(self, model, state):
        state.log("meter/step", state.step)
        state.log("meter/tensor", torch.tensor(2.0 * state.step))

    @hookimpl
    def hookmix_eval_metrics(self, model, state):
        return {"meter/weight_norm": model[1].weight.norm().item(), "meter/at_step": float(state.step)}


def test_state_log_is_averaged_per_interval_and_eval_metrics_join_eval_records():
    result = train([*TOY, Meter], steps=6, log_interval=3, eval_interval=2)
    train_records = [r for r in result.metrics if "train/loss" in r]
    assert [(r["step"], r["meter/step"], r["meter/tensor"]) for r in train_records] == [(3, 2.0, 4.0), (6, 5.0, 10.0)]
    evals = [r for r in result.metrics if "val/loss" in r]
    assert [(r["step"], r["meter/at_step"]) for r in evals] == [(2, 2.0), (4, 4.0), (6, 6.0)]
    assert evals[-1]["meter/weight_norm"] == pytest.approx(result.model[1].weight.norm().item())
    assert result.summary["metrics"]["meter/at_step"] == 6.0


# --- hookmix_transform_logits is scoped per consumer -----------------------------------------


class ZeroDistillLogits(Plugin):
    """Replaces the logits seen by distillation consumers with zeros (a drastic transform)."""

    name = "zero_distill"

    @hookimpl
    def hookmix_transform_logits(self, logits, kind):
        return torch.zeros_like(logits) if kind == "distillation" else None


class ScaleSupervised(Plugin):
    """Halves the logits seen by supervised consumers."""

    name = "scale_supervised"

    @hookimpl
    def hookmix_transform_logits(self, logits, kind):
        return logits * 0.5 if kind == "supervised" else None


class Distiller(Plugin):
    """A distillation consumer: records the logits it is given; its term carries no gradient."""

    name = "distiller"
    seen: list

    def __init__(self):
        super().__init__()
        self.seen = []

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        logits = state.logits(outputs["logits"], role="student", consumer=self.name, kind="distillation")
        self.seen.append((logits.detach().abs().sum().item(), outputs["logits"].detach().abs().sum().item()))
        return {"distill": 0.0 * logits.sum()}


def test_transform_logits_acts_only_on_its_kind():
    plain = train([*TOY, Distiller], steps=3)
    scoped = train([*TOY, Distiller, ZeroDistillLogits], steps=3)
    # cross-entropy (kind "supervised") saw the raw logits: identical training
    ce = lambda result: [r["train/loss/toy_ce"] for r in result.metrics if "train/loss/toy_ce" in r]  # noqa: E731
    assert len(ce(plain)) == 3 and ce(scoped) == ce(plain)
    assert [r["val/loss"] for r in scoped.metrics if "val/loss" in r] == [
        r["val/loss"] for r in plain.metrics if "val/loss" in r
    ]
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, scoped.model.state_dict()[key])
    # ... while the distillation consumer saw the transformed ones
    assert all(seen == 0.0 and raw > 0 for seen, raw in scoped.trainer.manager.plugins["distiller"].seen)
    assert all(seen == raw for seen, raw in plain.trainer.manager.plugins["distiller"].seen)
    # control: a transform on "supervised" does change what cross-entropy sees
    scaled = train([*TOY, ScaleSupervised], steps=3)
    assert ce(scaled)[0] != ce(plain)[0]


def test_transform_logits_is_an_ordered_fold():
    class AddOne(Plugin):
        """+1 for distillation consumers."""

        name = "add_one"

        @hookimpl
        def hookmix_transform_logits(self, logits, kind):
            return logits + 1 if kind == "distillation" else None

    result = train([*TOY, Distiller, ZeroDistillLogits, AddOne], steps=1)  # zero, then +1
    seen, _ = result.trainer.manager.plugins["distiller"].seen[0]
    assert seen == result.trainer.state.data.batch_size * 3  # a 16x3 matrix of ones


# --- frozen modules (state.add_frozen_module) -------------------------------------------------


class FrozenCopy(Plugin):
    """Registers a frozen copy of the starting model and calls it every step."""

    name = "frozen_copy"

    @hookimpl
    def hookmix_setup_model(self, model, state):
        import copy

        self.copy = state.add_frozen_module("copy", copy.deepcopy(model))
        with pytest.raises(ValueError, match="a frozen module named 'copy' already exists"):
            state.add_frozen_module("copy", torch.nn.Linear(2, 2))
        with pytest.raises(ValueError, match="shares parameters with the trained model"):
            state.add_frozen_module("student", model)

    @hookimpl
    def hookmix_aux_outputs(self, batch, state):
        with torch.no_grad():
            return {"frozen_logits": self.copy(batch["input"])}


def test_a_frozen_module_is_returned_in_eval_mode_without_gradients_optimizer_state_or_checkpoint():
    result = train([*TOY, FrozenCopy], steps=2)
    frozen = result.state.frozen_modules["copy"]
    assert frozen is result.plugins["frozen_copy"].copy and not frozen.training
    assert not any(p.requires_grad for p in frozen.parameters())
    in_optimizer = {id(p) for g in result.state.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in frozen.parameters())
    assert not result.state.modules and len(result.state.frozen_modules) == 1  # never a trained plugin module
    assert not torch.equal(frozen[1].weight, result.model[1].weight)  # the student trained, the copy did not
