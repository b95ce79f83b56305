"""Where the engine's overhead on the MLP goes: the plain loop with one engine feature added at a time
(a script, not a test).

    OMP_NUM_THREADS=1 python tests/perf/overhead_parts.py [--repeats 8] [--steps 300] [--interleave block]

Contestants, interleaved in one process like ``hookmix bench overhead`` (turns of one step, or of
10 consecutive steps with ``--interleave block``, in a new order every round; ratios over blocks of
10 steps; fresh contestants every repeat; engine/bench/overhead.py):

- ``plain``, ``plain copy``: the benchmark's plain loop, twice (the second shows the noise floor);
- ``+ce plugin``: the plain loop computing its loss through the ``cross_entropy`` plugin's hook
  (``state.logits`` included) instead of calling ``F.cross_entropy`` itself;
- ``+records``: the plain loop recording each step's detached loss as the engine does, and reading
  the records every 10 steps as the engine does (``engine.train_log.to_host``);
- ``+log records``: the plain loop writing the engine's metrics record every 10 steps
  (``Trainer.log_train``: the read, throughput, metrics.jsonl and TensorBoard queue, ``on_log``);
- ``+all three``; ``hookmix``: ``Trainer.advance()``, everything the engine does;
- ``written out``: the engine's step specialised to exactly this run, by hand, as one function
  (counting, the loss through the hook caller and the plugin, the record, the probe's hook,
  backward, optimizer step, the engine's metrics record every 10 steps; no ``advance``, no branch
  on a setting, no check of values): what the general step (engine/step.py), which branches on
  the run's settings and calls the default forward and the throughput count, costs beyond it.

Prints the median over repeats of each contestant's ratio to ``plain``; the difference between
``hookmix`` and ``+all three`` is the engine's own machinery (hook callers, the step, counting).
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics

import torch
import torch.nn.functional as F

from engine.bench.overhead import BLOCK, _discard, _engine, _engine_step, _plain_step, block_ratios, run_round
from engine.train_log import to_host


def plain_plus(trainer, model, adamw: dict, generator, ce_plugin=False, records=False, log=False):
    """The plain loop with some of the engine's work added (``trainer``: a set-up engine it borrows from)."""
    optimizer = torch.optim.AdamW(model.parameters(), **adamw)
    state, data = trainer.state, trainer.state.data
    ce = trainer.manager.plugins["cross_entropy"]
    kept: list[torch.Tensor] = []
    steps = [0]

    def step() -> torch.Tensor:
        batch = data.train_batch(generator)
        logits = model(batch["input"])
        if ce_plugin:
            loss = ce.hookmix_loss_terms(batch, {"logits": logits}, state)["ce"]
        else:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["target"].reshape(-1))
        if records:
            kept.append(loss.detach())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps[0] += 1
        if steps[0] % BLOCK == 0:  # the engine's log interval in the benchmark
            if log:  # the engine's record, fed this interval's losses
                state._train_log.terms.extend((steps[0], ("ce",), (t,)) for t in kept or [loss.detach()])
                trainer.log_train()
            elif records:
                to_host(kept)
            kept.clear()
        return loss.detach()

    return step


def written_out(trainer):
    """The engine's step specialised to this run (MLP, one process, fp32, one loss plugin, the probe's hook)."""
    state, manager = trainer.state, trainer.manager
    model, optimizer, train_batch, generator = state.model, state.optimizer, state.data.train_batch, state.generator
    loss_terms, before_backward = manager.loss_terms, manager.before_backward
    records, shapes = state._train_log.terms, trainer.throughput.shapes
    probe = manager.plugins["loss_probe"]

    def step() -> torch.Tensor:
        number = state.step + 1
        batch = train_batch(generator)
        shapes.append(getattr(batch.get("input"), "shape", None))
        terms = loss_terms(batch, {"logits": model(batch["input"])}, state)
        ((name, loss),) = terms.items()
        records.append((number, (name,), (loss.detach(),)))
        before_backward(loss, state)
        loss.backward()
        optimizer.step()
        state.step = number
        optimizer.zero_grad(set_to_none=True)
        if number % BLOCK == 0:
            trainer.log_train()
        return probe.loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--interleave",
        choices=["step", "block"],
        default="step",
        help="turns of 10 consecutive steps (block) or of one step, as in hookmix bench overhead",
    )
    args = parser.parse_args()
    turn = BLOCK if args.interleave == "block" else 1
    torch.set_num_threads(1)
    variants = {
        "+ce plugin": dict(ce_plugin=True),
        "+records": dict(records=True),
        "+log records": dict(log=True),
        "+all three": dict(ce_plugin=True, records=True, log=True),
    }
    ratios: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        engine, donor, written = _engine("mlp", 0), _engine("mlp", 0), _engine("mlp", 0)
        state = engine.state
        adamw = {k: state.optimizer.defaults[k] for k in ("lr", "betas", "eps", "weight_decay", "fused")}

        def generator() -> torch.Generator:
            return torch.Generator().manual_seed(state.run.seed + 1)

        contestants = {
            "plain": _plain_step(copy.deepcopy(state.model), adamw, state.data, generator()),
            "plain copy": _plain_step(copy.deepcopy(state.model), adamw, state.data, generator()),
        }
        for name, features in variants.items():
            contestants[name] = plain_plus(donor, copy.deepcopy(state.model), adamw, generator(), **features)
        contestants["hookmix"] = _engine_step(engine)
        contestants["written out"] = written_out(written)
        times: dict[str, list[float]] = {name: [] for name in contestants}
        shuffle = random.Random(repeat)
        warm = -(-5 // turn)
        for i in range(warm + -(-args.steps // turn)):
            took, losses = run_round(contestants, i, shuffle, turn=turn)
            worst = max(abs(a - b) for values in losses.values() for a, b in zip(values, losses["plain"]))
            assert worst <= 1e-6, f"round {i}: a contestant's loss differs from the plain loop's by {worst}"
            if i >= warm:
                for name, seconds in took.items():
                    times[name].append(seconds)
        for name, t in times.items():
            ratios.setdefault(name, []).append(statistics.median(block_ratios(t, times["plain"], BLOCK // turn)))
        for trainer in (engine, donor, written):
            _discard(trainer)
    print(
        f"MLP, {args.repeats} repeats of {args.steps} steps in turns of {turn}; median over repeats of the "
        f"ratio to plain (median over blocks of {BLOCK} steps):"
    )
    for name, values in ratios.items():
        print(f"  {name:<14} {statistics.median(values):.4f}   (repeats: {' '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
