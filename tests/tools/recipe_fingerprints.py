"""Every shipped recipe, shortened, trained through the CLI; its deterministic metrics as JSON.

Used to show that a change of the engine's code changes no result: run it before and after,
then compare the two files (they must be equal byte for byte)::

    python tests/tools/recipe_fingerprints.py /tmp/before.json    # on the old commit
    python tests/tools/recipe_fingerprints.py /tmp/after.json     # on the new one
    cmp /tmp/before.json /tmp/after.json

Each recipe runs ``STEPS`` steps on the CPU in one thread with an evaluation at the end (so the
certified Lipschitz bounds are in it); the teachers and starting checkpoints the recipes name are
trained first, the same way, CIFAR-100 is a small synthetic archive in the official layout and pass@k is measured on 8 problems.
Kept: every train and eval metric of ``metrics.jsonl`` (floats written as ``repr``, so bit for
bit); dropped: wall-clock values (``perf/``, timings), which differ from run to run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

STEPS = 4
# the runs that recipes name (teachers, starting points), trained first under these names
PREREQUISITES = {
    "runs/mnist1d-teacher-cnn": "mnist1d-teacher-cnn",
    "runs/mnist1d-teacher-mlp": "mnist1d-teacher-mlp",
    "runs/shakespeare-gpt": "shakespeare-gpt",
    "runs/countdown-sft": "countdown-sft",
    "runs/countdown-sft-gpu": "countdown-sft-gpu",
    "runs/cifar100-r32x4": "cifar100-r32x4",
}
TIMING = ("perf/", "time", "seconds")


def shipped() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "engine.cli", "recipes"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def train(name: str, out: str, cifar: str) -> list[dict]:
    overrides = [
        f"run.steps={STEPS}",
        "run.device=cpu",
        "run.threads=1",
        "run.eval_interval=0",
        "run.checkpoint_interval=0",
        "run.log_interval=2",
    ]
    if name.startswith("cifar100"):
        overrides.append(f"plugins.cifar100.path={cifar}")
    if name.startswith("countdown"):  # pass@k on 8 problems x 4 samples instead of thousands of generations
        overrides += ["plugins.passk.problems=8", "plugins.passk.samples=4", "plugins.passk.ks=[1,4]"]
    cmd = [sys.executable, "-m", "engine.cli", "train", name, *overrides, "--out", out, "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return [{"exit": done.returncode, "error": done.stderr.strip().splitlines()[-1:]}]
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [{k: repr(v) for k, v in r.items() if not any(t in k for t in TIMING)} for r in records]


def main(path: str) -> None:
    work = tempfile.mkdtemp(prefix="hookmix-fingerprints-")
    cifar = os.path.join(work, "cifar-100-python.tar.gz")
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from plugins.cifar.cifar100 import write_synthetic_cifar100 as w; "
            "w(sys.argv[1], n_train=256, n_test=64, seed=0)",
            cifar,
        ],
        check=True,
    )
    os.chdir(work)  # the recipes name their teachers as runs/NAME, relative to the working directory
    results = {}
    for out, name in PREREQUISITES.items():
        results[f"prerequisite {name}"] = train(name, out, cifar)
    for name in shipped():
        results[name] = train(name, os.path.join(work, "out", name), cifar)
        print(f"{name}: {len(results[name])} records", file=sys.stderr)
    with open(path, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]))
