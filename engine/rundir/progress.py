"""The progress display: a bar on a terminal, a line per log record elsewhere."""

from __future__ import annotations

import sys
import time
from typing import IO


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
        keys += [
            k for k in self.shown if k not in keys and "/" in k and not k.startswith(("train/loss/", "train/reward/"))
        ][:2]
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
