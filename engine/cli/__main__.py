"""``python -m engine.cli``: the ``hookmix`` command."""

import sys

from engine.cli import main

sys.exit(main())
