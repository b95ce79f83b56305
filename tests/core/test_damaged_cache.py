"""A damaged MNIST-1D cache is detected, named in a one-line note, and rebuilt (issue: damaged caches)."""

import io
import os
import pickle

import numpy as np
import pytest
import torch

from engine.cli.main import main
from plugins.core.data import MNIST1D

torch.set_num_threads(1)

SMALL = dict(num_train=200, num_test=100, seed=11)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid cache file's bytes and the dataset it holds."""
    cache = tmp_path_factory.mktemp("good_cache")
    data = MNIST1D(batch_size=10, cache_dir=str(cache), **SMALL)
    return (cache / data.cache_name()).read_bytes(), data


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


DAMAGE = {
    "empty": lambda raw: b"",
    "truncated": lambda raw: raw[: len(raw) // 2],
    "garbage": lambda raw: b"this is not an npz file\n" * 40,
    "pickled_object_array": lambda raw: _npz_bytes(x=np.array([{"a": 1}], dtype=object), y=np.zeros(1)),
    "wrong_shape": lambda raw: _npz_bytes(x=np.zeros((3, 40), np.float32), y=np.zeros(3, np.int64)),
    "bad_labels": lambda raw: _npz_bytes(x=np.zeros((300, 40), np.float32), y=np.full(300, 12, np.int64)),
    "missing_key": lambda raw: _npz_bytes(x=np.zeros((300, 40), np.float32)),
    "a_pickle": lambda raw: pickle.dumps({"x": 1}),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_cache_is_rebuilt_with_one_note(damage, good, tmp_path, capsys, monkeypatch):
    raw, reference = good
    path = tmp_path / reference.cache_name()
    path.write_bytes(DAMAGE[damage](raw))

    data = MNIST1D(batch_size=10, cache_dir=str(tmp_path), **SMALL)

    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("hookmix: note: the MNIST-1D cache "), err
    assert f"{tmp_path}/{reference.cache_name()}" in err[0] and "rebuilding it" in err[0]
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(data, name), getattr(reference, name))  # the same data as a fresh build
    assert path.read_bytes() == raw  # the file is whole again (np.savez output is deterministic)
    assert sorted(os.listdir(tmp_path)) == [reference.cache_name()]  # no temporary file left

    def no_generation(self):
        raise AssertionError("the repaired cache should load without generating")

    monkeypatch.setattr(MNIST1D, "_make", no_generation)
    MNIST1D(batch_size=10, cache_dir=str(tmp_path), **SMALL)
    assert capsys.readouterr().err == ""  # loads silently now


def test_a_run_over_a_damaged_cache_trains_and_says_so(good, tmp_path, monkeypatch, capfd):
    """End to end: the CLI run rebuilds the cache (exit 0) and the note names the file."""
    raw, reference = good
    cache = tmp_path / "cache"
    (cache / "mnist1d").mkdir(parents=True)
    (cache / "mnist1d" / reference.cache_name()).write_bytes(raw[:100])
    monkeypatch.setenv("HOOKMIX_CACHE", str(cache))
    code = main(
        [
            "train",
            "mnist1d-mlp",
            "run.steps=1",
            "--quiet",
            "plugins.mnist1d.num_train=200",
            "plugins.mnist1d.num_test=100",
            "plugins.mnist1d.seed=11",
            "plugins.mnist1d.batch_size=10",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capfd.readouterr().err
    assert code == 0
    notes = [line for line in err.splitlines() if "hookmix: note: the MNIST-1D cache" in line]
    assert len(notes) == 1 and str(cache / "mnist1d" / reference.cache_name()) in notes[0]
    assert (cache / "mnist1d" / reference.cache_name()).read_bytes() == raw
