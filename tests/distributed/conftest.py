"""Distributed tests: real processes through torch.distributed.run (gloo, one thread per rank).

The worker processes import the test plugins of ``dist_plugins.py`` and contrib's ``hookmix_ema``,
so their directories go on ``sys.path`` (passed on to the workers as PYTHONPATH).
"""

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for path in (ROOT, HERE, os.path.join(ROOT, "contrib", "hookmix-ema")):
    if path not in sys.path:
        sys.path.insert(0, path)

torch.set_num_threads(1)
