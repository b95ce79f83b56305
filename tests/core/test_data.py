import os
import random
import uuid

import fsspec
import numpy as np
import pytest
import torch

from plugins.core.data import DEFAULT_TEXT_URL, MNIST1D, CharText, default_text_path, load_text

torch.set_num_threads(1)

TEXT = "hello wörld, the quick brown fox jumps over the lazy dog. " * 20  # 1160 chars, one non-ASCII


def gen(seed):
    return torch.Generator().manual_seed(seed)


def batches_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- load_text ----------------------------------------------------------------


def memory_url(data: bytes) -> str:
    url = f"memory://hookmix-test/{uuid.uuid4().hex}.txt"
    with fsspec.open(url, "wb") as f:
        f.write(data)
    return url


def test_load_text_memory_url():
    assert load_text(memory_url(TEXT.encode("utf-8"))) == TEXT


def test_load_text_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_text(str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="not found"):
        load_text("memory://hookmix-test/does-not-exist.txt")


def test_load_text_not_utf8():
    with pytest.raises(ValueError, match="UTF-8"):
        load_text(memory_url("café".encode("latin-1")))


def test_load_text_too_short():
    with pytest.raises(ValueError, match="characters"):
        load_text(memory_url(b""))


def test_default_corpus():
    assert os.path.isfile(default_text_path())
    text = load_text(DEFAULT_TEXT_URL)
    assert len(text) == 1115394 and text.startswith("First Citizen:")


# -- CharText -----------------------------------------------------------------


@pytest.fixture(scope="module")
def chartext():
    return CharText(TEXT, block_size=8, batch_size=4, eval_batches=3)


def test_chartext_vocab_and_info(chartext):
    assert chartext.itos == "".join(sorted(set(TEXT)))
    assert chartext.info == {"task": "lm", "vocab_size": len(set(TEXT)), "block_size": 8, "itos": chartext.itos}
    assert chartext.decode(chartext.encode("wörld")) == "wörld"


def test_chartext_split(chartext):
    n_train = int(len(TEXT) * 0.9)
    assert len(chartext.train_data) == n_train
    assert len(chartext.val_data) == len(TEXT) - n_train
    assert chartext.decode(chartext.train_data) == TEXT[:n_train]
    assert chartext.decode(chartext.val_data) == TEXT[n_train:]


def test_chartext_train_batch(chartext):
    b = chartext.train_batch(gen(0))
    assert b["input"].shape == b["target"].shape == (4, 8)
    assert b["input"].dtype == torch.int64
    torch.testing.assert_close(b["input"][:, 1:], b["target"][:, :-1])  # target is input shifted by one
    train_text = TEXT[: len(chartext.train_data)]
    for x, y in zip(b["input"], b["target"]):
        assert chartext.decode(x) + chartext.decode(y[-1:]) in train_text  # windows stay in the train split


def test_chartext_train_batch_deterministic(chartext):
    assert batches_equal(chartext.train_batch(gen(1)), chartext.train_batch(gen(1)))
    assert not batches_equal(chartext.train_batch(gen(1)), chartext.train_batch(gen(2)))
    # resuming from a saved generator state replays the same batches
    g = gen(3)
    chartext.train_batch(g)
    state = g.get_state()
    first = chartext.train_batch(g)
    g.set_state(state)
    assert batches_equal(first, chartext.train_batch(g))


def test_chartext_train_batch_ignores_global_rng(chartext):
    torch.manual_seed(0)
    a = chartext.train_batch(gen(5))
    torch.manual_seed(1)
    assert batches_equal(a, chartext.train_batch(gen(5)))


def test_chartext_val_batches(chartext):
    first, second = list(chartext.val_batches()), list(chartext.val_batches())
    assert len(first) == 3
    assert all(batches_equal(a, b) for a, b in zip(first, second))
    inputs = torch.cat([b["input"] for b in first])
    targets = torch.cat([b["target"] for b in first])
    val = chartext.val_data
    torch.testing.assert_close(inputs[0], val[:8])  # first window starts the val split
    torch.testing.assert_close(targets[-1], val[-8:])  # last window ends it


def test_chartext_val_batches_short_split():
    # val split of 116 chars has only 108 windows of 8 + 1; ask for more than that
    data = CharText(TEXT, block_size=8, batch_size=50, eval_batches=16)
    sizes = [len(b["input"]) for b in data.val_batches()]
    assert sizes == [50, 50, 8]


def test_chartext_too_short_text():
    with pytest.raises(ValueError, match="too short"):
        CharText("abcdefghij" * 5, block_size=8, batch_size=2)


# -- MNIST1D ------------------------------------------------------------------

SMALL = dict(num_train=200, num_test=100, seed=7)


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("mnist1d_cache")
    return cache, MNIST1D(batch_size=32, cache_dir=str(cache), **SMALL)


def test_mnist1d_shapes_and_split(mnist_cache):
    _, data = mnist_cache
    assert data.info == {"task": "classification", "num_classes": 10, "input_dim": 40}
    assert data.train_x.shape == (200, 40) and data.test_x.shape == (100, 40)
    b = data.train_batch(gen(0))
    assert b["input"].shape == (32, 40) and b["input"].dtype == torch.float32
    assert b["target"].shape == (32,) and b["target"].dtype == torch.int64
    assert set(data.train_y.tolist()) <= set(range(10))


def test_mnist1d_train_batch(mnist_cache):
    _, data = mnist_cache
    assert batches_equal(data.train_batch(gen(4)), data.train_batch(gen(4)))
    assert not batches_equal(data.train_batch(gen(4)), data.train_batch(gen(5)))


def test_mnist1d_no_repeats_within_batch(mnist_cache):
    cache, _ = mnist_cache
    whole = MNIST1D(batch_size=200, cache_dir=str(cache), **SMALL)  # batch = the whole train split
    rows = whole.train_batch(gen(0))["input"]
    assert torch.unique(rows, dim=0).shape[0] == 200  # every example exactly once


def test_mnist1d_val_batches(mnist_cache):
    _, data = mnist_cache
    first, second = list(data.val_batches()), list(data.val_batches())
    assert [len(b["target"]) for b in first] == [32, 32, 32, 4]
    assert all(batches_equal(a, b) for a, b in zip(first, second))
    torch.testing.assert_close(torch.cat([b["input"] for b in first]), data.test_x)  # in order
    first[0]["input"].zero_()  # editing a yielded batch must not change the dataset
    assert batches_equal(second[0], next(data.val_batches()))


def test_mnist1d_cache_round_trip(mnist_cache, monkeypatch):
    cache, data = mnist_cache
    assert sorted(os.listdir(cache)) == [data.cache_name()]  # one file, no temp left behind

    def no_generation(self):
        raise AssertionError("should load from cache, not generate")

    monkeypatch.setattr(MNIST1D, "_make", no_generation)
    again = MNIST1D(batch_size=32, cache_dir=str(cache), **SMALL)
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(again, name), getattr(data, name))


def test_mnist1d_memory_cache_matches_uncached(mnist_cache):
    _, data = mnist_cache
    url = f"memory://hookmix-test/{uuid.uuid4().hex}"
    cached = MNIST1D(batch_size=32, cache_dir=url, **SMALL)
    assert fsspec.filesystem("memory").exists(f"{url}/{data.cache_name()}")
    assert torch.equal(cached.train_x, data.train_x) and torch.equal(cached.test_y, data.test_y)


def test_mnist1d_cache_key_depends_on_parameters():
    def name(num_train, num_test, seed):
        data = MNIST1D.__new__(MNIST1D)  # skip __init__: only the name is needed, not the data
        data.num_train, data.num_test, data.seed = num_train, num_test, seed
        return data.cache_name()

    assert len({name(200, 100, 7), name(200, 100, 8), name(210, 90, 7)}) == 3


def test_mnist1d_keeps_global_rng():
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    MNIST1D(batch_size=10, num_train=20, num_test=10)  # uncached: runs make_dataset
    assert (random.random(), np.random.rand()) == expected


def test_mnist1d_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 10"):
        MNIST1D(batch_size=10, num_train=205, num_test=100)
    with pytest.raises(ValueError, match="batch_size"):
        MNIST1D(batch_size=500, num_train=200, num_test=100)
