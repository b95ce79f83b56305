"""TensorBoard event files, written by the training thread itself.

An event file is a sequence of records: the length of a serialized ``Event`` proto (8 bytes,
little-endian), a masked CRC-32C of those 8 bytes, the proto, a masked CRC-32C of the proto.
TensorBoard's own ``SummaryWriter`` queues every event for a background thread that computes the
CRCs in pure Python and writes it: under the GIL that thread's work lands between the training
step's kernels, once per log record. Here the
CRC is google-crc32c's C implementation and the record goes into a buffered file in the calling
thread, flushed when the metrics file is (:class:`engine.rundir.metrics_log.MetricsLog`). The protos are
TensorBoard's; files read back with its ``EventAccumulator`` (tests/engine/test_outputs.py).
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time

import google_crc32c
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary

_serial = itertools.count()  # two files of one process in one second get different names


def masked_crc32c(data: bytes) -> int:
    """The CRC TensorBoard's record format stores: CRC-32C, rotated right by 15 bits, plus a constant."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventFile:
    """One new event file in ``log_dir``. ``purge_step``: TensorBoard drops the steps ≥ it that
    older files in the directory hold (a resumed run replays them)."""

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        os.makedirs(log_dir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_serial)}"
        self.path = os.path.join(log_dir, name)
        self.file = open(self.path, "xb")
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:  # the two events torch's SummaryWriter(purge_step=...) writes
            self._write(Event(wall_time=time.time(), step=purge_step, file_version="brain.Event:2"))
            self._write(Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def scalars(self, step: int, values: dict[str, float], wall_time: float | None = None) -> None:
        """One event holding every scalar of a record (not one event per scalar); ``wall_time``: when the
        values were recorded (default: now)."""
        summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self._write(Event(wall_time=time.time() if wall_time is None else wall_time, step=step, summary=summary))

    def _write(self, event: Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self.file.write(
            header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))
        )

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
