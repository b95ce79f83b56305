# Lets `pytest contrib/hookmix-ema/tests` import the plugin without installing it.
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
