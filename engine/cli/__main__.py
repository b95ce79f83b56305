"""``python -m engine.cli``: the ``hookmix`` command."""

import sys

from engine.cli.main import main

sys.exit(main())
