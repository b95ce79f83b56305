"""The ``hookmix`` command line: ``main`` parses and dispatches; ``commands`` holds one function per verb.

Importing this package imports no torch: ``hookmix --version`` and ``hookmix --help`` answer at once.
"""

from engine.cli.main import main

__all__ = ["main"]
