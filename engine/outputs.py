"""Run outputs through fsspec: the run directory, metrics.jsonl, TensorBoard, progress.

Layout of a run directory::

    recipe.toml       resolved recipe (reproduces the run)
    metrics.jsonl     one JSON record per log/eval event: {"step": N, "train/loss": ..., ...}
    tensorboard/      TensorBoard event files (same scalars)
    checkpoints/      step-XXXXXXXX.pt, written atomically
    summary.json      {"steps", "wall_seconds", "plugins": {name: version}, "metrics": {...}}
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import IO

import fsspec


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

    def is_nonempty(self) -> bool:
        return self.fs.isdir(self.path) and bool(self.fs.ls(self.path, detail=False))

    def makedirs(self, name: str = "") -> None:
        self.fs.makedirs(self._p(name), exist_ok=True)

    def list(self, name: str) -> list[str]:
        if not self.fs.isdir(self._p(name)):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self._p(name), detail=False))

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open(self._p(name), "rb") as f:
            return f.read()

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

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

    def move(self, name: str, dest: str) -> None:
        """Move ``name`` (a file or a folder) to ``dest``, both relative to the run directory."""
        self.fs.mv(self._p(name), self._p(dest), recursive=True)

    def remove(self, name: str) -> None:
        if self.fs.exists(self._p(name)):
            self.fs.rm(self._p(name))


def metrics_to_keep(run_dir: RunDir, resume_step: int) -> list[str]:
    """The lines of ``metrics.jsonl`` up to the checkpoint we resume from (later ones are replayed).

    A last line without its newline is what a crash mid-write leaves: it is dropped with a note.
    Any other line that is not a record ``{"step": N, ...}`` means the file was edited or damaged:
    bad input, before anything is rewritten.
    """
    from engine.errors import BadInput

    if not run_dir.exists("metrics.jsonl"):
        return []
    text = run_dir.read_bytes("metrics.jsonl").decode("utf-8", errors="replace")
    lines = text.split("\n")
    partial = lines.pop()  # "" when the file ends with a newline
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = record["step"]
            if type(step) is not int:
                raise TypeError
        except (ValueError, TypeError, KeyError):
            raise BadInput(f"{run_dir.url('metrics.jsonl')} line {number} is not a metrics record ({line[:40]!r}); "
                           f"restore the file, or delete that line to resume") from None
        if step <= resume_step:
            kept.append(line)
    if partial.strip():
        print(f"hookmix: note: dropped an incomplete last line of {run_dir.url('metrics.jsonl')} "
              f"(left by a crash); its step is replayed", file=sys.stderr)
    return kept


class MetricsLog:
    """Appends records to ``metrics.jsonl`` and mirrors every scalar to TensorBoard.

    Per-record cost is what a small model's step pays for logging, so :meth:`write` only queues
    the record; :meth:`flush` formats the queued records as lines of the open file and as TensorBoard
    events (one per record, holding all its scalars; engine/event_file.py, written in this thread)
    and flushes both files. It runs with a record that comes ``FLUSH_SECONDS`` or more after the
    last flush, before every checkpoint and at the end: a killed run keeps every record up to its
    last checkpoint (a resume replays the steps after it), and a run that logs less than once a
    second flushes every record. A
    remote (fsspec) run directory has no append: there a flush rewrites the file, and
    TensorBoard's files are staged locally and copied at the end.
    """

    FLUSH_SECONDS = 1.0

    def __init__(self, run_dir: RunDir, resume_step: int | None = None, kept: list[str] | None = None) -> None:
        from engine.event_file import EventFile  # TensorBoard's protos: a heavy import, only when a run starts

        self.run_dir = run_dir
        if kept is None and resume_step is not None:
            kept = metrics_to_keep(run_dir, resume_step)
        self.lines: list[str] = [line + "\n" for line in kept or []]  # the file's lines (remote directories)
        self.queued: list[tuple[float, dict]] = []  # (wall time, record) not yet written
        run_dir.write_text_atomic("metrics.jsonl", "".join(self.lines))
        self.file = run_dir.fs.open(run_dir._p("metrics.jsonl"), "a") if run_dir.is_local else None
        self._stage = None if run_dir.is_local else tempfile.mkdtemp(prefix="hookmix-tb-")
        tb_dir = os.path.join(run_dir.path, "tensorboard") if run_dir.is_local else self._stage
        self.tb = EventFile(tb_dir, purge_step=resume_step + 1 if resume_step else None)
        self.flushed = time.monotonic()

    def write(self, record: dict) -> None:
        """Queue a copy of ``record``; it is written at the next flush. Formatting a batch of records
        together costs a small model's step less than one at a time between training steps."""
        self.queued.append((time.time(), dict(record)))
        if time.monotonic() - self.flushed >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Everything written so far onto the disk (the OS's buffers) or the remote filesystem."""
        queued, self.queued = self.queued, []
        lines = []
        for wall_time, record in queued:
            record = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
            lines.append(json.dumps(record) + "\n")
            scalars = {k: v for k, v in record.items()
                       if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
            if scalars:
                self.tb.scalars(record["step"], scalars, wall_time)
        if self.file is not None:
            self.file.write("".join(lines))
            self.file.flush()
        else:
            self.lines += lines
            with self.run_dir.fs.open(self.run_dir._p("metrics.jsonl"), "w") as f:
                f.write("".join(self.lines))
        self.tb.flush()
        self.flushed = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self.file is not None:
            self.file.close()
            self.file = None
        self.tb.close()
        if self._stage is not None:  # copy staged event files to the remote run directory
            for name in os.listdir(self._stage):
                with open(os.path.join(self._stage, name), "rb") as f:
                    self.run_dir.write_bytes_atomic(f"tensorboard/{name}", f.read())
            shutil.rmtree(self._stage, ignore_errors=True)


class Progress:
    """A one-line progress bar on a terminal; periodic plain lines otherwise (logs, CI, pipes)."""

    def __init__(self, total: int, start: int = 0, stream: IO[str] | None = None, quiet: bool = False) -> None:
        self.total, self.start = total, start
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.last_draw = 0.0
        self.shown: dict[str, float] = {}

    def _eta(self, step: int) -> str:
        done = step - self.start
        if done <= 0:
            return "?"
        left = (time.perf_counter() - self.t0) / done * (self.total - step)
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def _text(self, step: int) -> str:
        pct = 100.0 * step / self.total
        keys = [k for k in ("train/loss", "val/loss", "val/accuracy") if k in self.shown]
        keys += [k for k in self.shown if k not in keys and "/" in k and not k.startswith(("train/loss/", "train/reward/"))][:2]
        vals = " | ".join(f"{k} {self.shown[k]:.4g}" for k in keys)
        return f"step {step}/{self.total} ({pct:.0f}%) | ETA {self._eta(step)} | {vals}"

    def update(self, step: int, metrics: dict | None = None, force: bool = False) -> None:
        """Called every step on a terminal (redraws at most 10×/s) and at every log record."""
        if self.quiet:
            return
        if metrics:
            self.shown.update({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"})
        if self.tty:
            now = time.perf_counter()
            if force or now - self.last_draw > 0.1 or step == self.total:
                width = 24
                fill = int(width * step / self.total)
                bar = "#" * fill + "." * (width - fill)
                self.stream.write(f"\r[{bar}] {self._text(step)}\x1b[K")
                self.stream.flush()
                self.last_draw = now
        elif metrics is not None:
            self.stream.write(self._text(step) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()

    def print(self, text: str) -> None:
        if not self.quiet:
            if self.tty:
                self.stream.write("\r\x1b[K")
            self.stream.write(text + "\n")
            self.stream.flush()
