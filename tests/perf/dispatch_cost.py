"""Per-step cost of the manager's hook dispatch with N no-op plugins (a script, not a test).

    python tests/perf/dispatch_cost.py --noop 8

Calls the four per-step hooks a no-op plugin implements around a step (aux outputs, before and after
backward, after the optimizer step) through the engine's manager, on the MLP benchmark's trainer, and prints
the median microseconds per step over 3 rounds of 20,000 calls each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine.bench.overhead import _discard, _engine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--noop", type=int, default=8, help="no-op plugins (default 8)")
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    trainer = _engine("mlp", args.noop)
    manager, state, model = trainer.manager, trainer.state, trainer.state.model
    batch = state.data.train_batch(torch.Generator().manual_seed(0))
    outputs = {"logits": model(batch["input"])}
    loss = torch.tensor(1.0)

    def rounds() -> float:
        t0 = time.perf_counter()
        for _ in range(args.calls):
            manager.aux_outputs(model, batch, outputs, state)
            manager.before_backward(loss, state)
            manager.after_backward(model, state)
            manager.after_optimizer_step(model, state.optimizer, state)
        return (time.perf_counter() - t0) / args.calls * 1e6

    print(f"hook dispatch, {args.noop} no-op plugins: {statistics.median(rounds() for _ in range(3)):.1f} us per step")
    _discard(trainer)


if __name__ == "__main__":
    main()
