"""Python bytecode instructions per training step: plain loop vs the engine (a script, not a test).

    python tests/perf/step_opcodes.py [--workload mlp] [--noop 8] [--top 25]

A count, not a time: the interpreter work each contestant of ``hookmix bench overhead`` does per
step (torch's own Python included), counted with ``sys.settrace`` opcode events over 30 steps
after 5 warm-up steps, log records included (one every 10 steps, so each step carries a tenth of
one). The metrics files' once-a-wall-clock-second flush is held off while counting (whether it
fell into the counted steps varied between runs); the records' formatting, done at that flush, is
left out. So the count does not depend on the machine's speed or load, and it shows what a change
to the hot path removes even where the timed benchmark's noise (±1 %) hides it. Prints the totals and the
functions where the engine's count differs most from the plain loop's.
"""

from __future__ import annotations

import argparse
import collections
import copy
import math
import sys

import torch

from engine.bench.overhead import _discard, _engine, _engine_step, _plain_step
from engine.rundir.metrics_log import MetricsLog


def opcodes_per_step(step, steps: int = 30) -> dict[str, float]:
    counts: collections.Counter = collections.Counter()

    def tracer(frame, event, arg):
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            counts[f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}"] += 1
        return tracer

    for _ in range(5):
        step()
    sys.settrace(tracer)
    try:
        for _ in range(steps):
            step()
    finally:
        sys.settrace(None)
    return {k: v / steps for k, v in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", default="mlp", choices=["mlp", "gpt", "tiny"])
    parser.add_argument("--noop", type=int, default=8, help="no-op plugins of the hookmix+N contestant")
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    args = parser.parse_args()
    torch.set_num_threads(1)
    MetricsLog.FLUSH_SECONDS = math.inf  # flushed at the end only: what is counted does not depend on time
    engine, engine_n = _engine(args.workload, 0), _engine(args.workload, args.noop)
    state = engine.state
    adamw = {k: state.optimizer.defaults[k] for k in ("lr", "betas", "eps", "weight_decay", "fused")}
    plain = opcodes_per_step(_plain_step(copy.deepcopy(state.model), adamw, state.data, torch.Generator()))
    hookmix = opcodes_per_step(_engine_step(engine))
    hookmix_n = opcodes_per_step(_engine_step(engine_n))
    total = {
        name: sum(c.values())
        for name, c in (("plain", plain), ("hookmix", hookmix), (f"hookmix+{args.noop}", hookmix_n))
    }
    print(
        f"bytecode instructions per step ({args.workload}): "
        + ", ".join(
            f"{name} {n:.0f}" + (f" (+{n - total['plain']:.0f})" if name != "plain" else "")
            for name, n in total.items()
        )
    )
    print("functions where hookmix differs most from plain (per step):")
    for key in sorted(set(plain) | set(hookmix), key=lambda k: -abs(hookmix.get(k, 0) - plain.get(k, 0)))[: args.top]:
        print(f"  {hookmix.get(key, 0) - plain.get(key, 0):+8.1f}  {key}")
    _discard(engine)
    _discard(engine_n)


if __name__ == "__main__":
    main()
