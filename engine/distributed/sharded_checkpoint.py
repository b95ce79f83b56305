"""FSDP checkpoints: the sharded tensors in a ``torch.distributed.checkpoint`` (DCP) directory.

A checkpoint of an FSDP run is two things in ``checkpoints/``:

- ``step-XXXXXXXX.dcp/``: the model, plugin-module and optimizer tensors, each rank writing its own
  rows (DCP's ``FileSystemWriter``). DCP loads them at any world size, and into a plain
  (1-process or DDP) model, because it records every tensor's global shape.
- ``step-XXXXXXXX.pt``: everything else (optimizer skeleton without tensors, scheduler, RNG, plugin
  states, per-rank parts), written by :func:`engine.rundir.checkpoint.save` *after* the directory. Its
  presence is what makes the checkpoint exist (``checkpoint.list_steps``), so the save is atomic:
  the directory is written under a temporary name and renamed, and an interrupted save leaves
  either no ``.pt`` (the previous checkpoint is loaded) or a complete pair.

An FSDP run also resumes a one-file checkpoint (``step-XXXXXXXX.pt`` of a 1-process or DDP run, full
tensors, loaded ``weights_only``): :func:`shard_full` turns each full tensor into this rank's rows of the
matching sharded parameter (``distribute_tensor`` without communication: every rank holds the full tensor),
and each optimizer state tensor shaped like its parameter likewise.

Loading is ``weights_only``-safe: DCP's own reader unpickles ``.metadata`` with ``pickle.load`` and
non-tensor entries with ``torch.load(weights_only=False)``. :class:`SafeReader` reads the metadata with
an unpickler that admits only DCP's metadata classes, torch sizes and dtypes, and refuses a directory
that holds any non-tensor entry (hookmix writes tensors only).
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from engine.errors import BadInput
from engine.rundir import checkpoint
from engine.rundir.directory import RunDir

_ALLOWED = {
    "torch.distributed.checkpoint.metadata": None,  # None: any class of the module (DCP's dataclasses)
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        allowed = _ALLOWED.get(module, set())
        if allowed is None or name in allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's DCP metadata")


class SafeReader(FileSystemReader):
    """DCP's file reader with a restricted unpickler for ``.metadata`` and tensors only."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        path = os.path.join(str(self.path), ".metadata")
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(io.BytesIO(f.read())).load()
        except FileNotFoundError:
            raise BadInput(
                f"sharded checkpoint {self.path} has no .metadata; it is incomplete: "
                f"delete it to resume from the previous checkpoint"
            ) from None
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as exc:
            raise BadInput(
                f"sharded checkpoint {self.path}: {str(exc).splitlines()[0][:160]}; refusing to load it: "
                f"only load checkpoints written by hookmix"
            ) from None
        bad = [k for k, v in metadata.state_dict_metadata.items() if not isinstance(v, TensorStorageMetadata)]
        if bad:
            raise BadInput(
                f"sharded checkpoint {self.path} holds a non-tensor entry {bad[0]!r} (it would need "
                f"arbitrary unpickling); refusing to load it: only load checkpoints written by hookmix"
            )
        from torch.distributed.checkpoint.metadata import StorageMeta

        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _split(tree: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``tree`` with every tensor replaced by a placeholder naming its DCP key (collected in ``tensors``)."""
    if torch.is_tensor(tree):
        tensors[path] = tree
        return {"__dcp__": path, "sharded": isinstance(tree, DTensor)}
    if isinstance(tree, dict):
        return {k: _split(v, f"{path}.{k}", tensors) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_split(v, f"{path}.{i}", tensors) for i, v in enumerate(tree))
    return tree


def _fill(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict) and "__dcp__" in tree:
        return tensors[tree["__dcp__"]]
    if isinstance(tree, dict):
        return {k: _fill(v, tensors) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_fill(v, tensors) for v in tree)
    return tree


def _placeholders(tree: Any) -> list[dict]:
    if isinstance(tree, dict) and "__dcp__" in tree:
        return [tree]
    if isinstance(tree, dict):
        return [p for v in tree.values() for p in _placeholders(v)]
    if isinstance(tree, (list, tuple)):
        return [p for v in tree for p in _placeholders(v)]
    return []


def dir_name(step: int) -> str:
    return f"step-{step:08d}.dcp"


def check_location(run_dir: RunDir) -> None:
    if not run_dir.is_local:
        raise BadInput(
            f"run.strategy='fsdp' writes DCP checkpoint directories on a local or shared file system; "
            f"{run_dir.url()} is not one: pass a path for --out"
        )


def save(run_dir: RunDir, step: int, payload: dict | None, keep: int, model, modules, optimizer, sharded) -> None:
    """Every rank: write its rows into the DCP directory; rank 0 (``payload`` not None) then renames it and
    writes the ``.pt`` that commits the checkpoint. A collective."""
    final = os.path.join(run_dir.path, "checkpoints", dir_name(step))
    tmp = os.path.join(run_dir.path, "checkpoints", f".{dir_name(step)}.tmp")
    if payload is not None:
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted save
        os.makedirs(tmp)
    dist.barrier()
    sharded.reshard()  # evaluation leaves the root gathered
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(optimizer.state_dict(), "optimizer", tensors)
    dcp.save(
        {"model": model.state_dict(), "modules": modules.state_dict(), "optimizer": tensors},
        storage_writer=FileSystemWriter(tmp),
    )
    dist.barrier()
    if payload is None:
        return
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    checkpoint.save(
        run_dir, step, {**payload, "model": {}, "modules": {}, "optimizer": skeleton, "sharded": dir_name(step)}, keep
    )
    kept = {dir_name(s) for s in checkpoint.list_steps(run_dir)}
    for name in run_dir.list("checkpoints"):
        if (name.endswith(".dcp") and name not in kept) or name.endswith(".dcp.tmp"):  # .tmp: interrupted saves
            shutil.rmtree(os.path.join(run_dir.path, "checkpoints", name), ignore_errors=True)


def load(run_dir: RunDir, payload: dict, model, modules, sharded) -> None:
    """Fill ``payload``'s model/modules/optimizer from its DCP directory, for this run's layout: sharded
    (FSDP, any world size) or plain (one process, DDP). The model and modules are loaded in place."""
    path = os.path.join(run_dir.path, "checkpoints", str(payload["sharded"]))
    if not os.path.isdir(path) or "/" in str(payload["sharded"]):
        raise BadInput(
            f"checkpoint step {payload['step']} names the sharded directory {payload['sharded']!r}, "
            f"which is missing; delete the newest checkpoint to resume from the previous one"
        )
    reader = SafeReader(path)
    saved = reader.read_metadata().state_dict_metadata
    mesh = next((p.device_mesh for p in model.parameters() if isinstance(p, DTensor)), None)
    targets: dict[str, torch.Tensor] = {}
    for holder in _placeholders(payload["optimizer"]):
        meta = saved.get(f"optimizer.{holder['__dcp__']}")  # DCP names nested entries by their dotted path
        if meta is None:
            raise BadInput(f"sharded checkpoint {path} lacks {holder['__dcp__']}; it is damaged: delete it")
        empty = torch.empty(meta.size, dtype=meta.properties.dtype)
        targets[holder["__dcp__"]] = (
            distribute_tensor(empty, mesh, [Shard(0)]) if holder["sharded"] and mesh is not None else empty
        )
    if sharded is not None:
        sharded.reshard()
    state = {"model": model.state_dict(), "modules": modules.state_dict(), "optimizer": targets}
    try:
        dcp.load(state, storage_reader=reader)
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(
            f"sharded checkpoint {path} does not match this recipe's model/optimizer "
            f"({str(exc).splitlines()[0][:200]}); resume with the run's own recipe"
        ) from None
    payload["model"], payload["modules"] = state["model"], state["modules"]
    payload["optimizer"] = _fill(payload["optimizer"], targets)


def _rows_like(full: Any, param: torch.Tensor, what: str) -> Any:
    """``full`` as a DTensor laid out like the sharded ``param`` (this rank's rows; no communication)."""
    if not isinstance(param, DTensor) or not torch.is_tensor(full) or isinstance(full, DTensor):
        return full
    if tuple(full.shape) != tuple(param.shape):
        raise BadInput(
            f"checkpoint does not match the model/optimizer of this recipe ({what} has shape "
            f"{tuple(full.shape)}, this run's {tuple(param.shape)}); resume with the run's own recipe"
        )
    return distribute_tensor(full.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def shard_full(payload: dict, model, modules, optimizer) -> None:
    """A one-file checkpoint (full tensors) for this FSDP run, in place: the ``model``/``modules`` entries of
    sharded parameters, and the optimizer state tensors shaped like their sharded parameter, become this
    rank's rows, so the usual ``load_state_dict`` calls fill the shards. Every rank reads the whole file.
    An optimizer state of another shape (e.g. a factored second moment) has no row layout to follow: refused."""
    for key, part in (("model", model), ("modules", modules)):
        current = part.state_dict()
        payload[key] = {
            name: _rows_like(value, current[name], f"{key} {name}") if name in current else value
            for name, value in payload[key].items()
        }
    saved = payload["optimizer"]
    groups = optimizer.param_groups
    if len(saved.get("param_groups", [])) != len(groups):
        return  # a different optimizer: load_state_dict names the mismatch
    params = {i: p for g, sg in zip(groups, saved["param_groups"]) for i, p in zip(sg["params"], g["params"])}
    for index, entry in saved.get("state", {}).items():
        param = params.get(index)
        if not isinstance(param, DTensor):
            continue
        for name, value in entry.items():
            if not torch.is_tensor(value) or value.dim() == 0:  # a step counter: the same on every rank
                continue
            if tuple(value.shape) != tuple(param.shape):
                raise BadInput(
                    f"the checkpoint's optimizer state {name!r} of shape {tuple(value.shape)} has no row "
                    f"layout on the shards of a {tuple(param.shape)} parameter under run.strategy='fsdp'; "
                    f"resume this checkpoint with run.strategy=ddp"
                )
            entry[name] = _rows_like(value, param, f"optimizer state {name!r}")
