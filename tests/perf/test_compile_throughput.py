"""run.compile (compiled and eager losses agree) and the perf/ throughput metrics."""

from __future__ import annotations

import io
import math

import pytest
import torch

from engine import Plugin, hookimpl
from engine.loop import Trainer
from engine.perf.throughput import model_flops
from engine.rundir.directory import RunDir
from engine.testing import TOY, make_recipe, train

torch.set_num_threads(1)


def _losses(compile: bool, steps: int = 4) -> tuple[list[float], str]:
    recipe, registry = make_recipe(TOY, steps=steps, compile=compile)
    stream = io.StringIO()
    Trainer(recipe, registry, stream=stream).run()
    import json

    records = [json.loads(line) for line in RunDir(recipe.run.out).read_text("metrics.jsonl").splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r], stream.getvalue()


def _agree() -> None:
    # Tolerance 1e-5 relative: inductor fuses and reorders fp32 elementwise ops and reductions, so
    # each step's result differs from eager by a few fp32 roundings (~1e-7 relative each); four SGD
    # steps of the toy MLP (momentum 0.9, lr 0.1) amplify that by well under 100x.
    eager, _ = _losses(False)
    compiled, printed = _losses(True)
    assert "compile: model compiled in place with torch.compile" in printed
    assert len(eager) == len(compiled) == 4
    for a, b in zip(eager, compiled):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7), (eager, compiled)


@pytest.mark.slow  # inductor compiles C++ kernels: ~30 s on the 2-core machine
def test_compiled_and_eager_losses_agree_with_inductor():
    _agree()


def test_compiled_and_eager_losses_agree_traced(monkeypatch):
    """The default-suite version: dynamo traces the model as run.compile does and runs the captured
    graphs eagerly (no C++ compilation): 19 s on the loaded 2-core machine, mostly dynamo's start."""
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self: compile_module(self, backend="eager"))
    _agree()


class ForwardHook(Plugin):
    """Registers a torch forward hook on a submodule (a feature capture, like uskd's)."""

    name = "forward_hook"

    @hookimpl
    def hookmix_setup_model(self, model, state):
        model[0].register_forward_hook(lambda module, args, output: None)


def test_compile_plan_names_forward_hooks_that_break_the_graph():
    recipe, registry = make_recipe([*TOY, ForwardHook], steps=1, compile=True)
    stream = io.StringIO()
    trainer = Trainer(recipe, registry, stream=stream)
    trainer.setup()  # the plan is printed at setup; no need to compile a step
    assert "compile: warning: forward hooks on 0 (registered by plugins) break the graph" in stream.getvalue()


# --- throughput metrics -----------------------------------------------------------------------


def _perf_records(run_dir: str) -> list[dict]:
    import json

    records = [json.loads(line) for line in RunDir(run_dir).read_text("metrics.jsonl").splitlines()]
    return [r for r in records if "perf/samples_per_second" in r]


def test_samples_per_second_and_mfu_with_a_given_peak():
    result = train(TOY, steps=4, peak_flops=1e12)
    records = _perf_records(result.run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # every log record (log_interval 1)
    per_sample, _, _ = model_flops(result.state.model, token_model=False)
    n = sum(p.numel() for p in result.state.model.parameters())
    assert per_sample == 6 * n  # the 6·N estimate for a non-token model
    for r in records:
        assert r["perf/samples_per_second"] > 0 and "perf/tokens_per_second" not in r
        # MFU is the samples rate times FLOPs per sample over the peak, exactly as computed
        assert math.isclose(r["perf/mfu"], r["perf/samples_per_second"] * per_sample / 1e12, rel_tol=1e-9)


def test_no_mfu_without_a_known_peak_and_model_flops_attribute_wins():
    class Counted(Plugin):
        name = "counted"

        @hookimpl
        def hookmix_setup_model(self, model, state):
            model.flops_per_sample = 1234.0

    result = train([*TOY, Counted], steps=2)
    assert all("perf/mfu" not in r for r in _perf_records(result.run_dir))  # a CPU: peak unknown
    assert model_flops(result.state.model, token_model=False)[:1] == (1234.0,)


@pytest.mark.parametrize("name", ["tokens"])
def test_token_models_report_tokens_per_second(name, tmp_path, tiny_gpt_overrides):
    from engine.cli.main import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "shakespeare-gpt",
                *tiny_gpt_overrides,
                "run.steps=2",
                "run.log_interval=1",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    records = _perf_records(str(out))
    assert records
    for r in records:  # 4 windows of 16 characters per step: every position is a token
        assert math.isclose(r["perf/tokens_per_second"], 16 * r["perf/samples_per_second"], rel_tol=1e-9)


@pytest.fixture
def tiny_gpt_overrides() -> list[str]:
    return [
        "plugins.gpt.n_layer=1",
        "plugins.gpt.n_head=2",
        "plugins.gpt.n_embd=32",
        "plugins.tinyshakespeare.block_size=16",
        "plugins.tinyshakespeare.batch_size=4",
        "plugins.tinyshakespeare.eval_batches=1",
        "run.threads=1",
    ]


def test_bench_against_lightning_without_lightning_says_how_to_install(monkeypatch, capsys):
    import sys

    from engine.cli.main import main

    monkeypatch.setitem(sys.modules, "lightning", None)  # import lightning -> ImportError
    assert main(["bench", "overhead", "--against", "lightning", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[bench]"' in err[0]
