"""The run directory through fsspec: atomic writes, reads, listings on any filesystem.

Layout of a run directory::

    recipe.toml       resolved recipe (reproduces the run)
    metrics.jsonl     one JSON record per log/eval event: {"step": N, "train/loss": ..., ...}
    tensorboard/      TensorBoard event files (same scalars)
    checkpoints/      step-XXXXXXXX.pt, written atomically
    summary.json      {"steps", "wall_seconds", "plugins": {name: version}, "metrics": {...}}
"""

from __future__ import annotations

import errno
import os
import uuid

import fsspec

from engine.errors import BadInput


class RunDir:
    """A directory on any fsspec filesystem (local path, ``file://``, ``memory://``, ...)."""

    def __init__(self, url: str) -> None:
        self.base = url.rstrip("/")
        self.fs, self.path = fsspec.core.url_to_fs(self.base)
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def url(self, name: str = "") -> str:
        return f"{self.base}/{name}" if name else self.base

    def _p(self, name: str) -> str:
        return f"{self.path}/{name}" if name else self.path

    def exists(self, name: str = "") -> bool:
        return self.fs.exists(self._p(name))

    def isdir(self, name: str = "") -> bool:
        return self.fs.isdir(self._p(name))

    def is_nonempty(self) -> bool:
        return self.fs.isdir(self.path) and bool(self.fs.ls(self.path, detail=False))

    def makedirs(self, name: str = "") -> None:
        self.fs.makedirs(self._p(name), exist_ok=True)

    def list(self, name: str) -> list[str]:
        if not self.fs.isdir(self._p(name)):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self._p(name), detail=False))

    def read_bytes(self, name: str) -> bytes:
        try:
            with self.fs.open(self._p(name), "rb") as f:
                return f.read()
        except IsADirectoryError:  # a folder where a run file belongs: one line, not a traceback
            raise BadInput(f"{self.url(name)} is a directory where a file belongs; move it away") from None

    def read_head(self, name: str, limit: int) -> bytes:
        """At most ``limit`` bytes from the start of ``name`` (a small record, however large the file)."""
        with self.fs.open(self._p(name), "rb") as f:
            return f.read(limit)

    def read_text(self, name: str) -> str:
        try:
            return self.read_bytes(name).decode("utf-8")
        except UnicodeDecodeError as exc:  # hookmix writes UTF-8: other bytes mean the file was damaged
            raise BadInput(
                f"{self.url(name)} is not UTF-8 text (a bad byte at offset {exc.start}); it is damaged: "
                f"restore it from a copy"
            ) from None

    def write_bytes_atomic(self, name: str, data: bytes) -> None:
        """Write to a temporary sibling, then move it over ``name`` (atomic on local disks)."""
        final = self._p(name)
        parent = final.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
                if self.is_local:
                    f.flush()
                    os.fsync(f.fileno())
            self.fs.mv(tmp, final)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)

    def write_text_atomic(self, name: str, text: str) -> None:
        self.write_bytes_atomic(name, text.encode("utf-8"))

    def write_text_new(self, name: str, text: str) -> None:
        """Write ``name`` atomically, or raise FileExistsError if it exists: never overwrites.

        On a local disk the temporary file is hard-linked to ``name`` (link fails on an existing
        name, atomically); elsewhere existence is checked first, which the run directory's lock
        makes enough (its holder is the only writer).
        """
        final = self._p(name)
        parent = final.rsplit("/", 1)[0]
        if not self.is_local:
            if self.fs.exists(final):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), final)
            self.write_text_atomic(name, text)
            return
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "xb") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, final)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

    def move(self, name: str, dest: str) -> None:
        """Move ``name`` (a file or a folder) to ``dest``, both relative to the run directory."""
        self.fs.mv(self._p(name), self._p(dest), recursive=True)

    def remove(self, name: str) -> None:
        if self.fs.exists(self._p(name)):
            self.fs.rm(self._p(name))
