"""Checkpoints: written atomically through fsspec, loaded with ``weights_only=True``.

A checkpoint is written to a temporary name in the same directory and then moved over its
final name, so a crash mid-write leaves the previous checkpoints untouched and never a partial
``step-*.pt``. Only tensors, numbers, strings and containers are stored; a file that needs
arbitrary unpickling is refused.
"""

from __future__ import annotations

import io
import pickle
import random
import re
import sys
import warnings

import numpy as np
import torch

from engine.errors import BadInput
from engine.rundir.directory import RunDir

FORMAT = 1
_NAME = re.compile(r"^step-(\d{8})\.pt$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REFUSED = (
    "Unsupported global",
    "Trying to load unsupported GLOBAL",
    "Trying to call reduce",
    "Can only build Tensor",
)  # torch's weights_only refusals, each naming the object


def capture_rng(generator: torch.Generator) -> dict:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {
        "torch": torch.get_rng_state(),
        "data": generator.get_state(),
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["data"])
    version, mt, gauss = rng["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save(run_dir: RunDir, step: int, payload: dict, keep: int) -> str:
    """Write ``checkpoints/step-XXXXXXXX.pt`` atomically; prune all but the newest ``keep``."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "step": step, **payload}, buf)
    name = f"checkpoints/step-{step:08d}.pt"
    run_dir.write_bytes_atomic(name, buf.getvalue())
    for old in list_steps(run_dir)[:-keep]:
        run_dir.remove(f"checkpoints/step-{old:08d}.pt")
    return run_dir.url(name)


def list_steps(run_dir: RunDir) -> list[int]:
    return sorted(int(m.group(1)) for n in run_dir.list("checkpoints") if (m := _NAME.match(n)))


def load(run_dir: RunDir, name: str) -> dict:
    try:
        data = run_dir.read_bytes(name)
    except FileNotFoundError:
        raise BadInput(f"checkpoint {run_dir.url(name)} not found; check the run directory") from None
    return load_bytes(data, run_dir.url(name))


def load_bytes(data: bytes, origin: str) -> dict:
    try:
        with warnings.catch_warnings():  # torch warns on some refused files: the refusal must stay one line
            warnings.simplefilter("ignore")
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        what = refused_object(exc)
        if what is None:  # other unpickling errors (e.g. "Unsupported operand") mean damaged bytes
            raise Damaged(
                f"checkpoint {origin} is unreadable (UnpicklingError); it is damaged or not a hookmix checkpoint"
            ) from None
        raise BadInput(
            f"checkpoint {origin} needs unpickling arbitrary Python objects ({what}); "
            f"refusing to load it: only load checkpoints written by hookmix"
        ) from None
    except Exception as exc:
        raise Damaged(
            f"checkpoint {origin} is unreadable ({type(exc).__name__}); it is damaged or not a hookmix checkpoint"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BadInput(f"checkpoint {origin} is not a hookmix checkpoint (format {FORMAT}); pass a run directory")
    return payload


def refused_object(exc: BaseException) -> str | None:
    """What torch's ``weights_only`` unpickler refused (``Unsupported global: GLOBAL os.system``), or None
    when ``exc`` is not such a refusal. Also used for the tensors of sharded checkpoints, which DCP loads
    with ``weights_only=True``."""
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    # torch's message is many lines with ANSI codes; the refused object is on the line that names it
    lines = [_ANSI.sub("", line).strip().removeprefix("WeightsUnpickler error: ") for line in str(exc).splitlines()]
    refused = next((line for line in lines if line.startswith(_REFUSED)), None)
    return None if refused is None else refused.split(" was not an allowed", 1)[0].split(" whose module", 1)[0][:160]


class Damaged(BadInput):
    """The checkpoint's bytes are not a readable checkpoint (truncated, empty, garbage)."""


# What the trainer restores from, with the type each entry must have (the loop writes all of them).
REQUIRED = {
    "step": int,
    "model": dict,
    "modules": dict,
    "optimizer": dict,
    "rng": dict,
    "plugins": dict,
    "plugin_versions": dict,
    "pending_metrics": dict,
    "wall_seconds": (int, float),
}
RNG_KEYS = ("torch", "data", "python", "numpy")


def check_run_payload(payload: dict, origin: str, step: int | None = None) -> dict:
    """Bad input unless ``payload`` has every entry a resume needs, with the right types."""

    def bad(problem: str) -> BadInput:
        return BadInput(
            f"checkpoint {origin} {problem}; it was modified or not written by this hookmix "
            f"version: restore it, or delete it to resume from the previous one"
        )

    for key, kind in REQUIRED.items():
        if key not in payload:
            raise bad(f"has no {key!r} entry")
        value = payload[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise bad(f"has a {type(value).__name__} as {key!r}")
    if payload["step"] < 0 or (step is not None and payload["step"] != step):
        raise bad(f"says step {payload['step']}" + (f", but its name says {step}" if step is not None else ""))
    missing = [k for k in RNG_KEYS if k not in payload["rng"]]
    if missing:
        raise bad(f"has no {missing[0]!r} random state")
    if not all(torch.is_tensor(v) for v in payload["pending_metrics"].values()):
        raise bad("has pending metrics that are not tensors")
    return payload


def load_latest(run_dir: RunDir, check: bool = False, before: int | None = None) -> dict:
    """The newest readable checkpoint; a damaged newer one is skipped with a note (a crash can leave
    one on filesystems without atomic moves). ``check`` also validates what a resume needs.
    ``before``: the newest one before that step (a sharded checkpoint whose shards are damaged falls
    back through this: engine.distributed.sharded_checkpoint.load)."""
    steps = [s for s in list_steps(run_dir) if before is None or s < before]
    if not steps:
        raise BadInput(
            f"no checkpoint in {run_dir.url('checkpoints')}; "
            f"nothing to resume (set run.checkpoint_interval to write some)"
        )
    for step in reversed(steps[1:]):
        try:
            return _load_step(run_dir, step, check)
        except Damaged as exc:
            print(f"hookmix: note: {exc}; falling back to the previous checkpoint", file=sys.stderr)
    return _load_step(run_dir, steps[0], check)


def _load_step(run_dir: RunDir, step: int, check: bool) -> dict:
    name = f"checkpoints/step-{step:08d}.pt"
    payload = load(run_dir, name)
    return check_run_payload(payload, run_dir.url(name), step) if check else payload


def resume_changes(payload: dict, versions: dict[str, tuple[str, str]], recipe) -> list[str]:
    """What differs between a checkpoint's plugins (versions, configs) and the resuming run's, one line each."""
    out = []
    saved_versions = payload.get("plugin_versions", {})
    for name, (dist, version) in versions.items():
        before = saved_versions.get(name)
        if before is None:
            out.append(f"plugin {name} ({dist} {version}) was not enabled when the checkpoint was written")
        elif before.split()[-1] != version:  # older checkpoints stored the version alone
            out.append(f"plugin {name}: {before} when checkpointed, {dist} {version} now")
    saved = payload.get("plugin_configs")
    if isinstance(saved, dict):
        now = recipe.to_dict().get("plugins", {})
        for name in sorted(set(saved) | set(now)):
            old, new = saved.get(name, {}), now.get(name, {})
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    out.append(
                        f"plugins.{name}.{key}: {old.get(key, '(unset)')!r} when checkpointed, "
                        f"{new.get(key, '(unset)')!r} now"
                    )
    return out
