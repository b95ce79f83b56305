"""Helpers of the reliability tests: the tiny GPT overrides, a filesystem that fails on demand,
and the real CLI run in-process or as a subprocess. (A module, not conftest: test modules import it.)"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import fsspec
from fsspec.implementations.memory import MemoryFileSystem

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# shakespeare-gpt shrunk to about a second of CPU time (the same overrides as tests/engine)
TINY_GPT = [
    "plugins.gpt.n_layer=1",
    "plugins.gpt.n_head=2",
    "plugins.gpt.n_embd=32",
    "plugins.tinyshakespeare.block_size=16",
    "plugins.tinyshakespeare.batch_size=4",
    "plugins.tinyshakespeare.eval_batches=1",
    "run.threads=1",
]
GPT6 = [
    *TINY_GPT,
    "run.steps=6",
    "run.checkpoint_interval=2",
    "run.eval_interval=3",
    "run.log_interval=1",
    "run.keep_checkpoints=3",
]


class FaultyFS(MemoryFileSystem):
    """An in-memory filesystem (``faulty://``) whose writes fail the way a disk does.

    ``FaultyFS.fail`` decides, for each file opened for writing, whether its first write raises
    ``OSError(FaultyFS.code)``; ``FaultyFS.read_only`` makes directory creation fail too.
    Tests run as root, for whom ``chmod`` does not stop writes: this filesystem does.
    """

    protocol = "faulty"
    fail = staticmethod(lambda path: False)
    code = errno.ENOSPC
    read_only = False

    def _error(self, path: str) -> OSError:
        code = errno.EROFS if self.read_only else type(self).code
        return OSError(code, os.strerror(code), path)

    def makedirs(self, path, exist_ok=False):
        if self.read_only and not self.exists(path):
            raise self._error(path)
        return super().makedirs(path, exist_ok=exist_ok)

    def _open(self, path, mode="rb", **kwargs):
        if "r" not in mode and (self.read_only or type(self).fail(path)):
            raise self._error(path)
        return super()._open(path, mode, **kwargs)


fsspec.register_implementation("faulty", FaultyFS, clobber=True)


def cli(*argv: str, capsys) -> tuple[int, str, str]:
    """Run ``hookmix ARGV`` in this process; return (exit code, stdout, stderr)."""
    from engine.cli.main import main

    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The single stderr line of a refusal (fails on a traceback or on a second line)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def hookmix_process(*argv: str, **kwargs) -> subprocess.Popen:
    """``python -m engine.cli ARGV`` as a real process (signals, kills, concurrent writers)."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *argv],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def snapshot(path: str) -> dict:
    """Every file under ``path`` with its bytes (to assert that nothing was written)."""
    files = {}
    for root, _, names in os.walk(path):
        for n in names:
            full = os.path.join(root, n)
            with open(full, "rb") as f:
                files[os.path.relpath(full, path)] = f.read()
    return files


def records(text: str) -> list[dict]:
    """metrics.jsonl text as records without the perf/ throughput keys (wall-clock rates differ between
    runs; every other value must reproduce bit for bit)."""
    import json

    from engine.testing import without_timings

    return without_timings([json.loads(line) for line in text.splitlines() if line.strip()])
