"""The core data plugins: ``tinyshakespeare`` (character-level text) and ``mnist1d`` (MNIST-1D, cached)."""

from __future__ import annotations

import attrs

from engine import BadInput, Plugin, field, hookimpl
from engine.validators import MAX_WIDTH, in_range, int_range

RECIPES = "plugins.core.recipes"
MAX_BATCH = 2**20  # examples per batch: beyond this a typo, not a plan
MAX_EXAMPLES = 10**7  # generated MNIST-1D examples (4,000 in the benchmark)


@attrs.define
class TinyShakespeareConfig:
    path: str = field("", "fsspec URL of a UTF-8 text file; empty: the embedded tinyshakespeare corpus")
    block_size: int = field(128, "characters per training window", validator=int_range(1, MAX_WIDTH))
    batch_size: int = field(32, "windows per micro-batch", validator=int_range(1, MAX_BATCH))
    val_fraction: float = field(
        0.1,
        "the last fraction of the text is the validation split",
        validator=in_range(0, 1, low_open=True, high_open=True),
    )
    eval_batches: int = field(16, "validation batches per evaluation", validator=int_range(1, MAX_BATCH))


class TinyShakespeare(Plugin):
    """Character-level language-model data from a text file (tinyshakespeare embedded)."""

    name = "tinyshakespeare"
    Config = TinyShakespeareConfig
    recipes = RECIPES

    @hookimpl
    def hookmix_data(self, state):
        from plugins.core.data import CharText, default_text_path, load_text

        c = self.config
        try:
            text = load_text(c.path or default_text_path())
            return CharText(text, c.block_size, c.batch_size, c.val_fraction, c.eval_batches)
        except ValueError as exc:
            raise BadInput(f"plugins.tinyshakespeare: {exc}") from None


@attrs.define
class MNIST1DConfig:
    batch_size: int = field(100, "examples per micro-batch", validator=int_range(1, MAX_BATCH))
    num_train: int = field(4000, "training examples", validator=int_range(1, MAX_EXAMPLES))
    num_test: int = field(1000, "test examples (the validation set)", validator=int_range(1, MAX_EXAMPLES))
    seed: int = field(42, "generation seed of the mnist1d package (numpy: < 2**32)", validator=int_range(0, 2**32 - 1))


class MNIST1DData(Plugin):
    """The MNIST-1D benchmark, generated locally with the mnist1d package and cached."""

    name = "mnist1d"
    Config = MNIST1DConfig
    recipes = RECIPES

    @hookimpl
    def hookmix_data(self, state):
        from plugins.core.data import MNIST1D

        c = self.config
        try:
            return MNIST1D(c.batch_size, c.num_train, c.num_test, c.seed, cache_dir=f"{state.cache_dir}/mnist1d")
        except ValueError as exc:
            raise BadInput(f"plugins.mnist1d: {exc}") from None
