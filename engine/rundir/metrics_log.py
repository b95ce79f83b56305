"""``metrics.jsonl`` and the TensorBoard event files of a run, and their repair on resume after a crash."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time

from engine.rundir.directory import RunDir


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
            raise BadInput(
                f"{run_dir.url('metrics.jsonl')} line {number} is not a metrics record ({line[:40]!r}); "
                f"restore the file, or delete that line to resume"
            ) from None
        if step <= resume_step:
            kept.append(line)
    if partial.strip():
        print(
            f"hookmix: note: dropped an incomplete last line of {run_dir.url('metrics.jsonl')} "
            f"(left by a crash); its step is replayed",
            file=sys.stderr,
        )
    return kept


class MetricsLog:
    """Appends records to ``metrics.jsonl`` and mirrors every scalar to TensorBoard.

    Per-record cost is what a small model's step pays for logging, so :meth:`write` only queues
    the record; :meth:`flush` formats the queued records as lines of the open file and as TensorBoard
    events (one per record, holding all its scalars; engine/rundir/event_file.py, written in this thread)
    and flushes both files. It runs with a record that comes ``FLUSH_SECONDS`` or more after the
    last flush, before every checkpoint and at the end: a killed run keeps every record up to its
    last checkpoint (a resume replays the steps after it), and a run that logs less than once a
    second flushes every record. A
    remote (fsspec) run directory has no append: there a flush rewrites the file, and
    TensorBoard's files are staged locally and copied at the end.
    """

    FLUSH_SECONDS = 1.0

    def __init__(self, run_dir: RunDir, resume_step: int | None = None, kept: list[str] | None = None) -> None:
        from engine.rundir.event_file import EventFile  # TensorBoard's protos: a heavy import, only when a run starts

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
            scalars = {
                k: v
                for k, v in record.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
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
