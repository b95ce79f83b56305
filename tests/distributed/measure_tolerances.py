"""Print the 2-rank vs 1-rank differences behind the tolerances of test_ddp.py, and the control.

    HOOKMIX_CACHE=/tmp/hookmix-cache python tests/distributed/measure_tolerances.py
    HOOKMIX_CACHE=/tmp/hookmix-cache python tests/distributed/measure_tolerances.py --fsdp   # test_fsdp.py

Runs the MNIST-1D cases of test_ddp.py on 2 ranks (one launch) and in this process, and prints
engine.testing.distributed.max_difference for each; the control compares the 1-rank run with the 1-rank run on
half the batch (what a missing gradient all-reduce would give).
"""

import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT, HERE, os.path.join(ROOT, "contrib", "hookmix-ema")]

import torch  # noqa: E402

torch.set_num_threads(1)

import test_ddp as T  # noqa: E402

from engine.testing import train  # noqa: E402
from engine.testing.distributed import max_difference, run_distributed  # noqa: E402


def main() -> None:
    teacher = os.path.join(tempfile.mkdtemp(), "teacher")
    train(
        ["mnist1d", "cnn1d", "adamw", "cross_entropy"],
        steps=20,
        out=teacher,
        threads=1,
        config={"mnist1d": T.DATA, "cnn1d": {"channels": 8}, "adamw": {"lr": 1e-2}},
    )
    cases = {
        "mlp": T.MLP,
        "uskd": T.USKD,
        "lipschitz": T.LIP,
        "ema_constraints": T.ema_constraints(),
        "mix": T.mix(teacher),
    }
    results = run_distributed([dict(c, steps=T.STEPS, **T.RUN) for c in cases.values()])
    for (name, case), result in zip(cases.items(), results):
        one = T.single(dict(case, steps=T.STEPS, **T.RUN))
        diff, what = max_difference(result, one)
        half = dict(case, config={**case["config"], "mnist1d": {**T.DATA, "batch_size": T.DATA["batch_size"] // 2}})
        control, _ = max_difference(one, T.single(dict(half, steps=T.STEPS, **T.RUN)))
        print(
            f"{name:16} 2 ranks vs 1: {diff:.2e} ({what}); tolerance {T.TOL[name]:g}; half-batch control {control:.2e}"
        )


def main_fsdp() -> None:
    """The run.strategy='fsdp' cases of test_fsdp.py: 2 ranks vs 1 process (GRPO: vs DDP on 2 ranks)."""
    import test_fsdp as F

    teacher = os.path.join(tempfile.mkdtemp(), "teacher")
    train(
        ["mnist1d", "cnn1d", "adamw", "cross_entropy"],
        steps=20,
        out=teacher,
        threads=1,
        config={"mnist1d": F.DATA, "cnn1d": {"channels": 8}, "adamw": {"lr": 1e-2}},
    )
    cases = {
        "mlp": (F.MLP, F.STEPS, F.ADAMW),
        "lipschitz": (F.lip(), F.STEPS, F.MUON),
        "mix": (F.mix(teacher), F.STEPS, F.MUON),
        "gpt": (F.GPT, F.GPT_STEPS, F.ADAMW),
        "lipschitz_gpt": (F.LIP_GPT, F.GPT_STEPS, F.MUON),
    }
    work = tempfile.mkdtemp()
    d2f, f2d = os.path.join(work, "ddp_to_fsdp"), os.path.join(work, "fsdp_to_ddp")
    resumes = [
        dict(F.MLP, steps=F.STEPS, **F.RUN),
        dict(F.MLP, steps=F.STEPS, out=d2f, stop_at=3, **F.RUN),
        dict(F.MLP, steps=F.STEPS, out=d2f, resume=True, **F.RUN, **F.FSDP),
        dict(F.MLP, steps=F.STEPS, out=f2d, stop_at=3, **F.RUN, **F.FSDP),
        dict(F.MLP, steps=F.STEPS, out=f2d, resume=True, **F.RUN),
    ]
    results = run_distributed(
        [dict(c, steps=steps, **F.RUN, **F.FSDP) for c, steps, _ in cases.values()]
        + [dict(F.grpo(), **F.FSDP), F.grpo()]
        + resumes
    )
    for (name, (case, steps, tol)), result in zip(cases.items(), results):
        one = F.single(dict(case, steps=steps, **F.RUN))
        diff, what = max_difference(result, one)
        data = "tinyshakespeare" if "tinyshakespeare" in case["config"] else "mnist1d"
        table = case["config"][data]
        half = dict(case, config={**case["config"], data: {**table, "batch_size": table["batch_size"] // 2}})
        control, _ = max_difference(one, F.single(dict(half, steps=steps, **F.RUN)))
        print(f"fsdp {name:14} 2 ranks vs 1: {diff:.2e} ({what}); tolerance {tol:g}; half-batch control {control:.2e}")
    n = len(cases)
    diff, what = max_difference(results[n], results[n + 1])
    print(f"fsdp grpo           vs ddp 2 ranks: {diff:.2e} ({what}); tolerance {F.ADAMW:g}")
    for label, index in (("ddp -> fsdp resume", n + 4), ("fsdp -> ddp resume", n + 6)):
        diff, what = max_difference(results[index], results[n + 2])
        print(f"{label} vs uninterrupted ddp: {diff:.2e} ({what}); tolerance {F.ADAMW:g}")


if __name__ == "__main__":
    main_fsdp() if "--fsdp" in sys.argv else main()
