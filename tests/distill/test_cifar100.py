"""CIFAR-100 loader (restricted unpickler, fsspec paths), augmentation and normalisation (spec §3, §11.1)."""

import collections
import io
import os
import pickle
import tarfile

import fsspec
import numpy as np
import pytest
import torch

from plugins.cifar.cifar100 import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    UnsafePickleError,
    load_cifar100,
    load_cifar100_meta,
    normalize_cifar100,
    random_crop_flip,
    restricted_loads,
    write_synthetic_cifar100,
)

CANARY_CALLS = []


def _canary(*args):  # would record a call if a loader ever resolved and ran it
    CANARY_CALLS.append(args)
    return {}


class _CallsCanary:
    def __reduce__(self):
        return (_canary, ("pwned",))


def _tar_with(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


# --- loading ----------------------------------------------------------------------------------------------
def test_synthetic_archive_roundtrip(tmp_path):
    path = str(tmp_path / "cifar-100-python.tar.gz")
    written = write_synthetic_cifar100(path, n_train=12, n_test=5, seed=3)
    for split, n in (("train", 12), ("test", 5)):
        images, fine = load_cifar100(path, split)
        assert images.dtype == np.uint8 and images.shape == (n, 3, 32, 32)
        assert fine.dtype == np.int64 and fine.shape == (n,)
        assert np.array_equal(images, written[split][0]) and np.array_equal(fine, written[split][1])
    _, _, coarse = load_cifar100(path, "train", return_coarse=True)
    assert np.array_equal(coarse, written["train"][1] // 5)
    names = load_cifar100_meta(path)
    assert len(names) == 100 and names[0] == "class_00"


def test_synthetic_files_have_official_layout(tmp_path):
    """Byte-string keys and the R, G, B plane order of the official format."""
    path = str(tmp_path / "c.tar.gz")
    written = write_synthetic_cifar100(path, n_train=2, n_test=1)
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == ["cifar-100-python/meta", "cifar-100-python/test", "cifar-100-python/train"]
        raw = tar.extractfile("cifar-100-python/train").read()
    assert b"numpy.core.multiarray" in raw  # pre-numpy-2 global names, as in the official files
    entry = restricted_loads(raw)
    assert set(entry) == {b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"}
    data = entry[b"data"]
    assert data.shape == (2, 3072)
    images = written["train"][0]
    assert np.array_equal(images[1, 1].reshape(-1), data[1, 1024:2048])  # green plane of image 1


def test_folder_parent_and_memory_urls(tmp_path):
    folder = str(tmp_path / "cifar-100-python")
    written = write_synthetic_cifar100(folder, n_train=4, n_test=2, archive=False, seed=1)
    for path in (folder, str(tmp_path), "file://" + folder):
        images, fine = load_cifar100(path, "test")
        assert np.array_equal(images, written["test"][0]) and np.array_equal(fine, written["test"][1])
    url = "memory://hookmix-test/cifar-100-python.tar.gz"
    try:
        written = write_synthetic_cifar100(url, n_train=3, n_test=2, seed=2)
        images, fine = load_cifar100(url, "train")
        assert np.array_equal(images, written["train"][0])
    finally:
        fsspec.filesystem("memory").rm("/hookmix-test", recursive=True)


def test_missing_and_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_cifar100(str(tmp_path / "nope.tar.gz"))
    with pytest.raises(ValueError):
        load_cifar100(str(tmp_path), "validation")
    bad = str(tmp_path / "bad.tar.gz")
    _tar_with(bad, {"train": pickle.dumps({b"data": np.zeros((2, 10)), b"fine_labels": [0, 1]}, protocol=2)})
    with pytest.raises(ValueError, match="uint8"):
        load_cifar100(bad)
    _tar_with(bad, {"train": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]})})
    with pytest.raises(ValueError, match="labels"):
        load_cifar100(bad)


def test_modern_numpy_pickles_load():
    obj = {b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), "x": {1, 2}, "s": np.float32(1.5), "b": b"raw"}
    for protocol in (2, 3, 4, 5):
        out = restricted_loads(pickle.dumps(obj, protocol=protocol))
        assert np.array_equal(out[b"data"], obj[b"data"]) and out["x"] == {1, 2} and out["b"] == b"raw"
        assert out["s"] == np.float32(1.5)


# --- refusing anything else -------------------------------------------------------------------------------
MALICIOUS = {
    "os.system": b"cos\nsystem\n(S'true'\ntR.",
    "posix.system": b"cposix\nsystem\n(S'true'\ntR.",
    "builtins.eval": b"cbuiltins\neval\n(S'1+1'\ntR.",
    "__builtin__.getattr": b"c__builtin__\ngetattr\n(S'x'\nS'y'\ntR.",
    "numpy.load": b"cnumpy\nload\n(S'x.npy'\ntR.",
    "collections.OrderedDict": pickle.dumps(collections.OrderedDict(a=1), protocol=4),
}


@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_malicious_pickle_refused(tmp_path, name):
    with pytest.raises(UnsafePickleError, match=name.replace(".", r"\.")):
        restricted_loads(MALICIOUS[name])
    path = str(tmp_path / "evil.tar.gz")
    _tar_with(path, {"train": MALICIOUS[name]})
    with pytest.raises(ValueError, match="refusing"):  # UnsafePickleError is also a ValueError
        load_cifar100(path, "train")


def test_refused_global_is_never_called(tmp_path):
    payload = pickle.dumps({b"data": _CallsCanary()}, protocol=2)
    assert b"_canary" in payload
    path = str(tmp_path / "evil.tar.gz")
    _tar_with(path, {"train": payload, "meta": payload})
    with pytest.raises(UnsafePickleError, match="_canary"):
        load_cifar100(path)
    with pytest.raises(UnsafePickleError):
        load_cifar100_meta(path)
    assert CANARY_CALLS == []
    assert pickle.loads(payload)[b"data"] == {} and CANARY_CALLS == [("pwned",)]  # the plain unpickler would call it
    CANARY_CALLS.clear()


def test_codecs_only_latin1():
    assert restricted_loads(b"c_codecs\nencode\n(Vab\nVlatin1\ntR.") == b"ab"
    with pytest.raises(UnsafePickleError):
        restricted_loads(b"c_codecs\nencode\n(Vab\nVrot13\ntR.")


# --- augmentation / normalisation -------------------------------------------------------------------------
def _images(n, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))


def test_random_crop_flip_outputs_are_crops_of_padded_input():
    x = _images(5)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(5):
        candidates = [padded[i, :, r : r + 32, c : c + 32] for r in range(9) for c in range(9)]
        candidates += [cand.flip(-1) for cand in candidates]
        assert any(torch.equal(out[i], cand) for cand in candidates)


def test_random_crop_flip_seeded_and_varied():
    x = _images(64, seed=1)
    a = random_crop_flip(x, torch.Generator().manual_seed(7))
    b = random_crop_flip(x, torch.Generator().manual_seed(7))
    c = random_crop_flip(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    flipped = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0, flip_prob=1.0)
    assert torch.equal(flipped, x.flip(-1))
    assert torch.equal(random_crop_flip(x, torch.Generator().manual_seed(0), padding=0, flip_prob=0.0), x)
    # both flip states and several offsets occur in a batch
    same = [(torch.equal(a[i], x[i]), torch.equal(a[i], x[i].flip(-1))) for i in range(64)]
    assert sum(s for s, _ in same) < 64 and (a != x).any()


def test_normalize_constants():
    assert CIFAR100_MEAN == (0.5071, 0.4867, 0.4408) and CIFAR100_STD == (0.2675, 0.2565, 0.2761)
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[1] = 255
    out = normalize_cifar100(x)
    assert out.dtype == torch.float32
    for ch in range(3):
        assert out[0, ch].allclose(torch.tensor(-CIFAR100_MEAN[ch] / CIFAR100_STD[ch]))
        assert out[1, ch].allclose(torch.tensor((1 - CIFAR100_MEAN[ch]) / CIFAR100_STD[ch]))


def test_no_stray_files(tmp_path):
    write_synthetic_cifar100(str(tmp_path / "a.tar.gz"))
    assert os.listdir(tmp_path) == ["a.tar.gz"]
