"""What N empty Python calls per step cost a plain PyTorch loop (a script, not a test).

    OMP_NUM_THREADS=1 python tests/perf/call_floor.py --calls 40 --repeats 5

The floor under the engine's per-step overhead on a given machine: two copies of one plain loop
on the MLP workload of ``hookmix bench overhead`` (same model copy, batches, AdamW), interleaved
step by step as the benchmark does, one of them also making ``--calls`` calls of an empty
method per step (spread over the step like hooks: after the forward, around the backward, after
the optimizer step) — what 8 no-op plugins implementing 5 per-step hooks amount to, with no dispatch at all.
Prints the median over repeats of the median per-step time ratio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from engine.bench.overhead import _discard, _engine


class Empty:
    def hook(self, x):
        return None


def _step(model, adamw, data, generator, calls: int):
    optimizer = torch.optim.AdamW(model.parameters(), **adamw)
    fns = [Empty().hook for _ in range(calls)]
    quarter = [fns[i::4] for i in range(4)]

    def step():
        batch = data.train_batch(generator)
        logits = model(batch["input"])
        for f in quarter[0]:
            f(logits)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["target"].reshape(-1))
        for f in quarter[1]:
            f(loss)
        loss.backward()
        for f in quarter[2]:
            f(model)
        optimizer.step()
        for f in quarter[3]:
            f(model)
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ratios = []
    for _ in range(args.repeats):
        trainer = _engine("mlp", 0)
        state = trainer.state
        adamw = {k: state.optimizer.defaults[k] for k in ("lr", "betas", "eps", "weight_decay", "fused")}
        # the same loop code for both (only the calls differ): engine.bench's plain step differs in detail
        steps = {
            n: _step(copy.deepcopy(state.model), adamw, state.data, torch.Generator().manual_seed(0), c)
            for n, c in (("plain", 0), ("calls", args.calls))
        }
        times = {n: [] for n in steps}
        for i in range(5 + args.steps):
            for name, step in list(steps.items()) if i % 2 else list(steps.items())[::-1]:
                t0 = time.perf_counter()
                step()
                if i >= 5:
                    times[name].append(time.perf_counter() - t0)
        ratios.append(statistics.median(a / b for a, b in zip(times["calls"], times["plain"])))
        _discard(trainer)
    print(
        f"{args.calls} empty calls per step: {statistics.median(ratios):.3f}x the plain step "
        f"(repeats {' '.join(f'{r:.3f}' for r in ratios)}; plain {1e3 * statistics.median(times['plain']):.2f} ms)"
    )


if __name__ == "__main__":
    main()
