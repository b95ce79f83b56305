"""Datasets for hookmix's core plugin.

Every dataset has the same small interface, which the engine relies on:

    info: dict                                   # what the model / loss need to know
    train_batch(generator) -> {"input", "target"}
    val_batches() -> iterator of {"input", "target"}

Rules that keep training resumable and evaluation comparable:

- train_batch draws all of its randomness from the torch.Generator it is given,
  never from global RNG state. Restoring the generator's state restores the
  exact sequence of batches.
- val_batches is deterministic and finite, and yields the same batches on
  every call, so validation numbers from different steps or runs compare.

Batches are CPU tensors; moving them to a device is the engine's job.
"""

import hashlib
import json
import math
import random
import sys
import uuid
import zipfile
from importlib import resources
from pathlib import Path
from typing import Dict, Iterator

import fsspec
import numpy as np
import torch

Batch = Dict[str, torch.Tensor]

# -----------------------------------------------------------------------------
# text


def default_text_path() -> str:
    """Filesystem path of the bundled tiny-shakespeare corpus (about 1.1 MB)."""
    # The corpus ships as package data next to this module, so it works wherever
    # the package is imported from. __package__ is empty only if this file is run
    # as a script; then fall back to its directory.
    root = resources.files(__package__) if __package__ else Path(__file__).parent
    return str(root / "corpora" / "tinyshakespeare.txt")


DEFAULT_TEXT_URL = "file://" + default_text_path()


def load_text(url: str, min_chars: int = 2) -> str:
    """Read a UTF-8 text file from any fsspec URL (local path, file://, memory://, s3://, ...).

    Raises ValueError, with a one-line message naming the problem and the fix,
    when the file is missing, is not UTF-8, or holds fewer than min_chars characters.
    """
    try:
        with fsspec.open(url, "rb") as f:
            raw = f.read()
    except (FileNotFoundError, IsADirectoryError):
        raise ValueError(f"text file not found: {url!r}; pass the path or fsspec URL of an existing file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"text file {url!r} is not valid UTF-8 (bad byte at offset {e.start}); "
            f"re-encode it as UTF-8, e.g. `iconv -f <encoding> -t UTF-8`"
        ) from None
    if len(text) < min_chars:
        raise ValueError(
            f"text file {url!r} has {len(text)} characters but at least {min_chars} are needed; use a longer text"
        )
    return text


class CharText:
    """Character-level language modelling on one text.

    - Vocabulary: the sorted set of characters of the *whole* text, so train and
      val share one encoding and val never meets an unknown character.
    - Split: the first (1 - val_fraction) of the characters train, the rest validate.
      A contiguous split (not random windows) keeps val text unseen in training.
    - Train batches: batch_size random offsets i drawn from `generator`;
      input = chars[i : i+T], target = chars[i+1 : i+T+1]. Offsets are drawn with
      replacement, and every window lies wholly inside the train split.
    - Val batches: eval_batches * batch_size windows whose offsets are evenly spaced
      from the start to the end of the val split (fewer if the split is short), in
      order, batch_size at a time. Evenly spaced windows cover the whole split the
      same way on every call, without any randomness.

    info = {"task": "lm", "vocab_size": V, "block_size": T, "itos": "<the V characters in id order>"};
    itos[i] is the character with id i, and a plain string stays JSON-friendly.
    """

    def __init__(self, text: str, block_size: int, batch_size: int, val_fraction: float = 0.1, eval_batches: int = 16):
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        n_train = int(len(text) * (1.0 - val_fraction))
        # Each split needs at least one full window of block_size + 1 characters.
        if min(n_train, len(text) - n_train) < block_size + 1:
            need = math.ceil((block_size + 1) / min(val_fraction, 1.0 - val_fraction)) + 1
            raise ValueError(
                f"text has {len(text)} characters, too short for block_size={block_size} with "
                f"val_fraction={val_fraction}; use a text of at least ~{need} characters or a smaller block_size"
            )
        self.block_size = block_size
        self.batch_size = batch_size
        self.eval_batches = eval_batches

        chars = sorted(set(text))
        self.itos = "".join(chars)
        # Encode by code point: sorted characters are sorted code points, so a binary
        # search maps each code point to its id. Much faster than a Python loop on MBs of text.
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        vocab = np.array([ord(c) for c in chars], dtype=np.uint32)
        ids = torch.from_numpy(np.searchsorted(vocab, codepoints).astype(np.int64))
        self.train_data = ids[:n_train]
        self.val_data = ids[n_train:]
        self.info = {"task": "lm", "vocab_size": len(chars), "block_size": block_size, "itos": self.itos}

    def encode(self, s: str) -> torch.Tensor:
        return torch.tensor([self.itos.index(c) for c in s], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def _windows(self, data: torch.Tensor, offsets: torch.Tensor) -> Batch:
        # unfold gives a (num_windows, T+1) view without copying; indexing copies the rows we want.
        rows = data.unfold(0, self.block_size + 1, 1)[offsets]
        return {"input": rows[:, :-1].contiguous(), "target": rows[:, 1:].contiguous()}

    def train_batch(self, generator: torch.Generator) -> Batch:
        num_windows = len(self.train_data) - self.block_size  # offsets 0 .. len - T - 1
        offsets = torch.randint(num_windows, (self.batch_size,), generator=generator)
        return self._windows(self.train_data, offsets)

    def val_batches(self) -> Iterator[Batch]:
        last = len(self.val_data) - self.block_size - 1  # largest valid offset
        count = min(self.eval_batches * self.batch_size, last + 1)
        offsets = torch.linspace(0, last, count, dtype=torch.float64).round().long()
        for start in range(0, count, self.batch_size):
            yield self._windows(self.val_data, offsets[start : start + self.batch_size])


# -----------------------------------------------------------------------------
# MNIST-1D


class DamagedCache(Exception):
    """A cache file that cannot be what the generator wrote (it is rebuilt, with a note)."""


class MNIST1D:
    """The MNIST-1D classification benchmark (Greydanus 2020), generated locally.

    Data comes from the `mnist1d` package's make_dataset with its default
    transforms, so num_train=4000, num_test=1000, seed=42 reproduces the standard
    dataset; nothing is downloaded. Generation takes a few seconds, so with a
    cache_dir (any fsspec URL) the arrays are saved as an .npz whose name encodes
    every generation parameter and are loaded from there next time. cache_dir=None
    generates every time.

    - Inputs: float32 (B, 40), standardised by make_dataset. Targets: int64 (B,).
    - Train batches: batch_size distinct training examples picked at random with
      `generator` (no repeats inside a batch; batches are independent draws, not epochs).
    - Val batches: the test split in its stored order, batch_size at a time (the last may be smaller).
    """

    def __init__(self, batch_size: int, num_train: int = 4000, num_test: int = 1000, seed: int = 42, cache_dir=None):
        total = num_train + num_test
        # make_dataset builds num_samples // 10 examples per class, silently dropping the rest.
        if num_train < 1 or num_test < 1 or total % 10 != 0:
            raise ValueError(
                f"num_train + num_test must be a positive multiple of 10 (one share per class), "
                f"got {num_train} + {num_test}; adjust either count"
            )
        if not 1 <= batch_size <= num_train:
            raise ValueError(f"batch_size must be between 1 and num_train={num_train}, got {batch_size}")
        self.batch_size = batch_size
        self.num_train, self.num_test, self.seed = num_train, num_test, seed

        arrays = self._load_or_make(cache_dir)
        self.train_x = torch.from_numpy(arrays["x"][:num_train].astype(np.float32))
        self.train_y = torch.from_numpy(arrays["y"][:num_train].astype(np.int64))
        self.test_x = torch.from_numpy(arrays["x"][num_train:].astype(np.float32))
        self.test_y = torch.from_numpy(arrays["y"][num_train:].astype(np.int64))
        self.info = {"task": "classification", "num_classes": 10, "input_dim": self.train_x.shape[1]}

    def _args(self) -> dict:
        from mnist1d.data import get_dataset_args

        args = get_dataset_args(as_dict=True)
        args.pop("url")  # only used for downloading, which we never do
        total = self.num_train + self.num_test
        args.update(num_samples=total, train_split=self.num_train / total, seed=self.seed)
        return args

    def cache_name(self) -> str:
        # Readable counts plus a hash of our arguments and the mnist1d version: a new
        # release (possibly with new defaults) gets a new file, and a stale cache is never
        # loaded. The version comes from metadata, so a cache hit never imports mnist1d
        # (a multi-second import).
        from importlib.metadata import version

        key = {"num_train": self.num_train, "num_test": self.num_test, "seed": self.seed, "mnist1d": version("mnist1d")}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        return f"mnist1d_train{self.num_train}_test{self.num_test}_seed{self.seed}_{digest}.npz"

    def _load_or_make(self, cache_dir) -> dict:
        if cache_dir is None:
            return self._make()
        fs, root = fsspec.core.url_to_fs(str(cache_dir))
        path = root.rstrip("/") + "/" + self.cache_name()
        if fs.exists(path):
            try:
                return self._load_checked(fs, path)
            except DamagedCache as exc:
                # A truncated, empty or foreign file (a crash, a full disk, a user's copy) must not break every
                # later run: say which file it was and rebuild it in place.
                print(
                    f"hookmix: note: the MNIST-1D cache {str(cache_dir).rstrip('/')}/{self.cache_name()} is damaged ({exc}); "
                    f"rebuilding it",
                    file=sys.stderr,
                )
        arrays = self._make()
        fs.makedirs(root, exist_ok=True)
        # Write under a unique temporary name, then rename: a reader (or a run that
        # crashes mid-write) never sees a half-written cache file.
        tmp = root.rstrip("/") + f"/.{self.cache_name()}.{uuid.uuid4().hex}.tmp"
        with fs.open(tmp, "wb") as f:
            np.savez(f, x=arrays["x"], y=arrays["y"])
        fs.mv(tmp, path)
        return arrays

    def _load_checked(self, fs, path: str) -> dict:
        """The cached arrays, after checking that they are what this generator writes (no pickles)."""
        try:
            with fs.open(path, "rb") as f:
                with np.load(f, allow_pickle=False) as npz:
                    arrays = {"x": npz["x"], "y": npz["y"]}
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise DamagedCache(f"unreadable: {reason}") from None
        x, y, total = arrays["x"], arrays["y"], self.num_train + self.num_test
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[0] != total:
            raise DamagedCache(f"x is {x.dtype} {x.shape}, expected float32 ({total}, 40)")
        if y.dtype != np.int64 or y.shape != (total,):
            raise DamagedCache(f"y is {y.dtype} {y.shape}, expected int64 ({total},)")
        if not np.isfinite(x).all() or y.min() < 0 or y.max() > 9:
            raise DamagedCache("values out of range (non-finite inputs or labels outside 0..9)")
        return arrays

    def _make(self) -> dict:
        from mnist1d.data import make_dataset
        from mnist1d.utils import ObjectView

        # make_dataset reseeds Python's and NumPy's global RNGs; put them back so
        # building a dataset does not change any other code's random stream.
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            d = make_dataset(ObjectView(self._args()))
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        # Concatenate and split ourselves at num_train: exact, whatever float rounding
        # make_dataset's int(len * train_split) does.
        x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)
        y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
        return {"x": x, "y": y}

    def train_batch(self, generator: torch.Generator) -> Batch:
        # randperm over 4000 items is cheap and gives distinct indices within the batch.
        idx = torch.randperm(self.num_train, generator=generator)[: self.batch_size]
        return {"input": self.train_x[idx], "target": self.train_y[idx]}

    def val_batches(self) -> Iterator[Batch]:
        for start in range(0, self.num_test, self.batch_size):
            end = start + self.batch_size
            # clone so a caller that edits a batch in place cannot change later evaluations
            yield {"input": self.test_x[start:end].clone(), "target": self.test_y[start:end].clone()}
