"""The ``hookmix`` command line: ``main`` parses and dispatches (engine/cli/main.py); ``scaffold`` writes
a plugin package.

Importing this package imports only the signal handling (engine/failures/interrupts.py, stdlib only): the
console script calls :func:`main`, whose first statement makes SIGINT/SIGTERM recorded rather than raised,
before any slow import (attrs, pluggy, torch) starts.
"""

from engine.failures.interrupts import start_up


def main(argv: list[str] | None = None) -> int:
    with start_up():  # from here on a signal is never lost: it is recorded and acted on at a safe point
        from engine.cli.main import main as run_command

        return run_command(argv)


__all__ = ["main"]
