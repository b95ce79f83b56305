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

Loading runs no code named by the files: DCP's own reader unpickles ``.metadata`` with ``pickle.load``
and non-tensor entries with ``torch.load(weights_only=False)``. :class:`SafeReader` reads the metadata with
an unpickler that resolves exact (module, qualified name) pairs only (:data:`METADATA_GLOBALS`), refuses a
directory that holds any non-tensor entry (hookmix writes tensors only) or points outside itself, and its
tensors are loaded by DCP with ``weights_only=True``.

A damaged directory (a missing, empty, truncated or unreadable file) is skipped like a damaged one-file
checkpoint: a note names the file and the previous checkpoint is loaded (:func:`load`). Every rank takes
the same decision: the ranks exchange what they found before loading (:func:`_agree`), and DCP hands a
failed read on one rank to every rank. A refused (tampered) directory is never skipped over.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import pickle
import shutil
import sys
import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint import filesystem as dcp_files
from torch.distributed.checkpoint import metadata as dcp_meta
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.futures import Future

from engine.errors import BadInput
from engine.rundir import checkpoint
from engine.rundir.checkpoint import Damaged
from engine.rundir.directory import RunDir


def _metadata_globals() -> dict[tuple[str, str], Any]:
    """Every global the ``.metadata`` of a hookmix checkpoint names, as exact (module, qualified name) pairs:
    what torch 2.13's DCP pickles for FSDP2 shards and for plain tensors (tests/reliability/test_unpicklers.py
    disassembles real checkpoints). The objects are taken here: unpickling imports and looks up nothing."""
    classes = (
        "Metadata",
        "StorageMeta",  # Metadata.storage_meta
        "MetadataIndex",  # the keys of Metadata.storage_data
        "TensorStorageMetadata",  # one per tensor entry
        "TensorProperties",  # its dtype and layout
        "ChunkStorageMetadata",  # one per saved piece of a tensor (a rank's rows)
        "_MEM_FORMAT_ENCODING",  # TensorProperties' memory format, pickled as this enum
        "BytesStorageMetadata",  # a non-tensor entry: unpickled so that the refusal below can name it
    )
    found: dict[tuple[str, str], Any] = {
        ("torch.distributed.checkpoint.metadata", c): getattr(dcp_meta, c) for c in classes
    }
    found[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = dcp_files._StorageInfo  # file, offset, length
    found[("torch.serialization", "_get_layout")] = torch.serialization._get_layout  # torch.strided, by its name
    found[("torch", "Size")] = torch.Size  # shapes and offsets
    found.update({("torch", n): v for n, v in vars(torch).items() if isinstance(v, torch.dtype)})  # torch.float32
    # StorageMeta.checkpoint_id, the directory it was written to (Python 3.13 names the class in pathlib._local)
    found[("pathlib", "PosixPath")] = found[("pathlib._local", "PosixPath")] = pathlib.PosixPath
    return found


METADATA_GLOBALS = _metadata_globals()


class _Refused(pickle.UnpicklingError):
    """A global outside METADATA_GLOBALS (nothing was imported, looked up or called)."""


def _shown(text: Any) -> str:
    return ascii(str(text))[1:-1][:80]  # chosen by the file: printable, one line, bounded


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves exactly the pairs of METADATA_GLOBALS. A dotted name is refused before the lookup: under
    protocol 4 the default unpickler walks it through the module's imports (``metadata`` imports ``os``:
    ``os.system``), and any other name of an allowed module is as foreign as another module's."""

    def find_class(self, module: str, name: str) -> Any:
        if "." not in name and (module, name) in METADATA_GLOBALS:
            return METADATA_GLOBALS[(module, name)]
        raise _Refused(f"{_shown(module)}.{_shown(name)} is not allowed in a checkpoint's DCP metadata")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id is not allowed in a checkpoint's DCP metadata")


def _refusal(origin: str, problem: str) -> BadInput:
    return BadInput(
        f"sharded checkpoint {origin}: {problem}; refusing to load it: only load checkpoints written by hookmix"
    )


def parse_metadata(data: bytes, origin: str) -> Any:
    """The bytes of a ``.metadata`` file as DCP metadata of tensors in files of its own directory.

    Bad input when they name anything else (tampered: never skipped over); :class:`Damaged` when they are
    not a whole pickle (truncated, empty, garbage)."""
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        raise _refusal(origin, str(exc)) from None
    except Exception as exc:  # damaged bytes make the parser raise many types (EOFError, KeyError, ...)
        raise Damaged(f"sharded checkpoint {origin} is unreadable ({type(exc).__name__}); it is damaged") from None
    if not isinstance(metadata, dcp_meta.Metadata) or not all(
        isinstance(getattr(metadata, f, None), dict) for f in ("state_dict_metadata", "storage_data")
    ):
        raise _refusal(origin, f"it holds a {type(metadata).__name__}, not DCP metadata")
    bad = [k for k, v in metadata.state_dict_metadata.items() if not isinstance(v, dcp_meta.TensorStorageMetadata)]
    if bad:
        raise _refusal(origin, f"it holds a non-tensor entry {_shown(bad[0])!r} (it would need arbitrary unpickling)")
    bad = [k for k, v in metadata.state_dict_metadata.items() if not _well_formed(v)]
    if bad:
        raise _refusal(origin, f"its entry {_shown(bad[0])!r} is malformed")
    for info in metadata.storage_data.values():
        name, offset, length = (getattr(info, f, None) for f in ("relative_path", "offset", "length"))
        if not (
            isinstance(info, dcp_files._StorageInfo)
            and isinstance(name, str)
            and os.path.basename(name) == name
            and name not in ("", ".", "..")
            and all(isinstance(n, int) and n >= 0 for n in (offset, length))
            and not getattr(info, "transform_descriptors", None)  # hookmix writes plain torch.save pieces
        ):
            raise _refusal(origin, f"a piece lies outside its directory or is transformed ({_shown(name)})")
    return metadata


def _shape(value: Any) -> bool:
    return isinstance(value, torch.Size) and all(n >= 0 for n in value)


def _well_formed(entry: Any) -> bool:
    """A tensor entry whose fields have the types DCP writes (an edited file could put anything there)."""
    properties, chunks = getattr(entry, "properties", None), getattr(entry, "chunks", None)
    return (
        isinstance(getattr(properties, "dtype", None), torch.dtype)
        and _shape(getattr(entry, "size", None))
        and isinstance(chunks, list)
        and all(
            isinstance(c, dcp_meta.ChunkStorageMetadata)
            and _shape(getattr(c, "offsets", None))
            and _shape(getattr(c, "sizes", None))
            for c in chunks
        )
    )


def _check_files(path: str, metadata: Any) -> None:
    """Damaged when a file the metadata names is missing or shorter than the pieces it should hold."""
    ends: dict[str, int] = {}
    for info in metadata.storage_data.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise Damaged(f"sharded checkpoint file {file} is missing; it is damaged")
        size = os.path.getsize(file)
        if size < end:
            raise Damaged(f"sharded checkpoint file {file} is truncated ({size} of {end} bytes); it is damaged")


class SafeReader(FileSystemReader):
    """DCP's file reader with a restricted unpickler for ``.metadata``, tensors only, and errors that name
    the file. The metadata is read and checked once (DCP asks again inside ``dcp.load``)."""

    _metadata: Any = None

    def read_metadata(self, *args: Any, **kwargs: Any):
        path = str(self.path)
        if self._metadata is None:
            if not os.path.isdir(path):
                raise Damaged(f"sharded checkpoint directory {path} is missing; it is damaged")
            try:
                with open(os.path.join(path, ".metadata"), "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise Damaged(
                    f"sharded checkpoint {path} has no readable .metadata ({exc.strerror}); it is damaged"
                ) from None
            metadata = parse_metadata(data, os.path.join(path, ".metadata"))
            _check_files(path, metadata)
            self._metadata = metadata
        if getattr(self._metadata, "storage_meta", None) is None:
            self._metadata.storage_meta = dcp_meta.StorageMeta()
        self._metadata.storage_meta.load_id = self.load_id
        return self._metadata

    def read_data(self, plan: Any, planner: Any) -> Future:
        """DCP's reading, file by file, so that a failure names its file."""
        files: dict[str, list] = {}
        for item in plan.items:
            files.setdefault(self.storage_data[item.storage_index].relative_path, []).append(item)
        for name, items in files.items():
            try:
                super().read_data(dataclasses.replace(plan, items=items), planner).wait()
            except Exception as exc:
                file = os.path.join(str(self.path), name)
                refused = checkpoint.refused_object(exc)
                if refused is not None:  # torch's weights_only unpickler refused a piece: tampered
                    raise _refusal(file, f"it needs unpickling arbitrary Python objects ({refused})") from None
                raise Damaged(
                    f"sharded checkpoint file {file} is unreadable ({type(exc).__name__}); it is damaged"
                ) from None
        done: Future = Future()
        done.set_result(None)
        return done


def _agree(step: int, error: BadInput | None) -> None:
    """Raise on every rank when any rank could not read the directory of ``step``, so that all of them fall
    back (Damaged) or stop (bad input, which outranks damage) together: a rank alone in another branch would
    wait forever in the next collective. Ranks that chose different checkpoints stop too."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        if error is not None:
            raise error
        return
    mine = (step, None if error is None else (isinstance(error, Damaged), str(error)))
    reports: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, mine)
    steps = sorted({s for s, _ in reports})
    if len(steps) > 1:
        raise BadInput(
            f"the ranks chose different checkpoints (steps {steps}); every rank must read the same run directory"
        )
    failed = sorted(report for _, report in reports if report is not None)  # refusals (False) first
    if failed and error is not None and mine[1] == failed[0]:
        raise error
    if failed:
        damaged, text = failed[0]
        raise (Damaged if damaged else BadInput)(text)


def _failure(exc: CheckpointException, path: str) -> BadInput:
    """DCP's failure (the same on every rank: it carries each failed rank's exception) as one line."""
    errors = [error for _, (error, _) in sorted(exc.failures.items())]
    refused = [e for e in errors if isinstance(e, BadInput) and not isinstance(e, Damaged)]
    damaged = [e for e in errors if isinstance(e, Damaged)]
    if refused or damaged:  # a refusal outranks damage
        first = (refused or damaged)[0]
        return type(first)(str(first))
    cause = str(errors[0]).splitlines()[0][:200] if errors and str(errors[0]) else type(exc).__name__
    return BadInput(
        f"sharded checkpoint {path} does not match this recipe's model/optimizer ({cause}); "
        f"resume with the run's own recipe"
    )


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


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
    (FSDP, any world size) or plain (one process, DDP). The model and modules are loaded in place.

    A damaged directory is skipped as :func:`engine.rundir.checkpoint.load_latest` skips a damaged file: a
    note names the file, and ``payload`` is replaced, in place, by the previous checkpoint, which is loaded
    instead (its tensors too: a failed read may have filled some of them). Bad input when none is left."""
    while True:
        try:
            return _load_dir(run_dir, payload, model, modules, sharded)
        except Damaged as exc:
            damaged = exc
        step = int(payload["step"])
        if not [s for s in checkpoint.list_steps(run_dir) if s < step]:
            raise Damaged(f"{damaged}; no earlier checkpoint to fall back to: restore the file from a copy")
        if _rank() == 0:  # every rank falls back (the decision is shared); one note says so
            print(f"hookmix: note: {damaged}; falling back to the previous checkpoint", file=sys.stderr)
        payload.clear()
        payload.update(checkpoint.load_latest(run_dir, check=True, before=step))
        if "sharded" not in payload:
            if sharded is None:
                return  # a one-file checkpoint: its full tensors are what this run loads
            raise BadInput(
                f"the checkpoint before the damaged one (step {payload['step']}) is a one-file checkpoint, which "
                f"run.strategy='fsdp' resumes only as the newest: move the newer checkpoints out of checkpoints/"
            )


def _load_dir(run_dir: RunDir, payload: dict, model, modules, sharded) -> None:
    step = int(payload["step"])
    if payload["sharded"] != dir_name(step):  # hookmix names it after the step: anything else was edited
        raise BadInput(
            f"checkpoint step {step} names the sharded directory {_shown(payload['sharded'])!r}, not "
            f"{dir_name(step)!r}; it was modified: only load checkpoints written by hookmix"
        )
    path = os.path.join(run_dir.path, "checkpoints", dir_name(step))
    reader = SafeReader(path)
    error = None
    try:
        saved = reader.read_metadata().state_dict_metadata
    except BadInput as exc:
        error = exc
    _agree(step, error)
    mesh = next((p.device_mesh for p in model.parameters() if isinstance(p, DTensor)), None)
    targets: dict[str, torch.Tensor] = {}
    for holder in _placeholders(payload["optimizer"]):
        meta = saved.get(f"optimizer.{holder['__dcp__']}")  # DCP names nested entries by their dotted path
        if meta is None:
            raise Damaged(f"sharded checkpoint {path} lacks {_shown(holder['__dcp__'])}; it is damaged")
        try:
            empty = torch.empty(meta.size, dtype=meta.properties.dtype)
        except RuntimeError:  # a shape too large to allocate: the file was edited
            raise _refusal(path, f"optimizer entry {_shown(holder['__dcp__'])} has an impossible shape") from None
        targets[holder["__dcp__"]] = (
            distribute_tensor(empty, mesh, [Shard(0)]) if holder["sharded"] and mesh is not None else empty
        )
    if sharded is not None:
        sharded.reshard()
    state = {"model": model.state_dict(), "modules": modules.state_dict(), "optimizer": targets}
    try:
        with warnings.catch_warnings():  # one process: DCP warns that it loads without a process group
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=reader)
    except CheckpointException as exc:  # a BaseException: every rank gets it when any rank failed
        raise _failure(exc, path) from None
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
