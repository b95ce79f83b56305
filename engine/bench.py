"""``hookmix bench overhead``: the engine against a plain PyTorch loop, side by side.

Both loops train the same model (a copy of the engine's freshly built one) on the same batches
(same data object, same generator seed) with the same AdamW, interleaved step by step in one
process so that machine noise hits both alike. Reports the median step-time ratio
engine / plain and checks that the losses agree to 1e-6 at every step. The second comparison
adds N no-op plugins that implement every per-step hook.
"""

from __future__ import annotations

import copy
import statistics
import time
import uuid

import torch
import torch.nn.functional as F

from engine.loop import Trainer
from engine.plugin import Plugin, hookimpl
from engine.recipe import resolve
from engine.registry import Registry


def _noop_plugin(i: int) -> type[Plugin]:
    class NoOp(Plugin):
        """Implements every per-step hook and does nothing (overhead benchmark)."""

        name = f"noop{i}"

        @hookimpl
        def hookmix_aux_outputs(self, outputs):
            return None

        @hookimpl
        def hookmix_loss_terms(self, outputs):
            return None

        @hookimpl
        def hookmix_before_backward(self, loss):
            return None

        @hookimpl
        def hookmix_after_backward(self, model):
            return None

        @hookimpl
        def hookmix_after_optimizer_step(self, model):
            return None

        @hookimpl
        def hookmix_on_log(self, metrics):
            return None

    return NoOp


class LossProbe(Plugin):
    """Keeps the last micro-batch loss so the benchmark can compare it with the plain loop's."""

    name = "loss_probe"

    @hookimpl
    def hookmix_before_backward(self, loss):
        self.loss = loss.detach()


WORKLOADS = {
    # the tiny GPT of the shakespeare-gpt recipe
    "gpt": (["tinyshakespeare", "gpt"], {"tinyshakespeare": {"block_size": 64, "batch_size": 32},
                                         "gpt": {"n_layer": 3, "n_head": 4, "n_embd": 96}}),
    # an MLP on MNIST-1D: a sub-millisecond step, where per-step framework cost shows
    "mlp": (["mnist1d", "mlp"], {"mnist1d": {"batch_size": 100}, "mlp": {"hidden": [256, 256]}}),
}
ADAMW = {"lr": 1e-3, "schedule": "constant", "weight_decay": 0.0}


def compare(workload: str, steps: int, noop: int, warmup: int = 5) -> dict:
    base, configs = WORKLOADS[workload]
    noops = {cls.name: cls for cls in (_noop_plugin(i) for i in range(noop))}
    registry = Registry({**noops, "loss_probe": LossProbe})
    raw = {"run": {"plugins": [*base, "adamw", "cross_entropy", "loss_probe", *noops], "steps": 10**6,
                   "log_interval": 10, "out": f"memory://hookmix-bench-{uuid.uuid4().hex}"},
           "plugins": {**configs, "adamw": ADAMW}}
    trainer = Trainer(resolve("bench", raw, registry), registry, quiet=True)
    state = trainer.setup()
    model = copy.deepcopy(state.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=ADAMW["lr"], betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    generator = torch.Generator().manual_seed(state.run.seed + 1)  # the engine seeds its data RNG so
    data = state.data

    def plain_step() -> float:
        batch = data.train_batch(generator)
        logits = model(batch["input"])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["target"].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    plain_t, engine_t, max_diff = [], [], 0.0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        plain_loss = plain_step()
        t1 = time.perf_counter()
        trainer.advance()
        t2 = time.perf_counter()
        engine_loss = trainer.manager.plugins["loss_probe"].loss.item()
        max_diff = max(max_diff, abs(plain_loss - engine_loss))
        if i >= warmup:
            plain_t.append(t1 - t0)
            engine_t.append(t2 - t1)
    ratios = [e / p for e, p in zip(engine_t, plain_t)]
    return {"workload": workload, "noop_plugins": noop, "plain_ms": 1e3 * statistics.median(plain_t),
            "engine_ms": 1e3 * statistics.median(engine_t), "ratio": statistics.median(ratios),
            "max_loss_diff": max_diff}


def overhead(steps: int = 30, noop: int = 8, workload: str = "both") -> int:
    rows = []
    for name in (["gpt", "mlp"] if workload == "both" else [workload]):
        for n in (0, noop):
            rows.append(compare(name, steps, n))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {steps} timed steps per loop")
    print("| workload | extra no-op plugins | plain step (ms) | engine step (ms) | median ratio | max loss diff |")
    print("|---|---|---|---|---|---|")
    ok = True
    for r in rows:
        print(f"| {r['workload']} | {r['noop_plugins']} | {r['plain_ms']:.2f} | {r['engine_ms']:.2f} | "
              f"{r['ratio']:.3f} | {r['max_loss_diff']:.1e} |")
        ok &= r["max_loss_diff"] <= 1e-6
    if not ok:
        print("FAIL: the engine's losses differ from the plain loop's by more than 1e-6")
    return 0 if ok else 1
