import pathlib
import sys

import torch

# The repository root must be importable (``plugins.lipschitz``) also when pytest is run without ``-m``.
_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

torch.set_num_threads(1)
