"""Run ``hookmix ARGV`` and send this process a signal at its N-th audit event (a deterministic moment).

``python signal_at_event.py N SIGNAL ARGV...``. Audit events (``sys.addaudithook``: every import, file
open, listdir, compile, ...) tick all through start-up, so sweeping N walks the signal across the whole
command without timing it: the same N lands at the same moment on every machine. ``N = 0`` sends nothing
and prints the number of events the command raised (the sweep's range) as the last line on stdout;
a target beyond the command's last event prints ``not sent``.

The hook is added just before ``main()`` is called: the console script's own imports before it (two
near-empty package modules) belong to Python's start-up, not to hookmix.
"""

import os
import signal
import sys

from engine.cli import main

target, signum = int(sys.argv[1]), getattr(signal, sys.argv[2])
count = 0


def tick(event: str, args) -> None:
    global count
    count += 1
    if count == target:
        os.kill(os.getpid(), signum)


sys.argv = ["hookmix", *sys.argv[3:]]
sys.addaudithook(tick)
code = main()
if target == 0:
    print(f"events {count}")
elif count < target:  # the command ended first (its event count varied): the sweep skips this moment
    print("not sent")
sys.exit(code)
