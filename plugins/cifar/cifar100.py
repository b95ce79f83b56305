"""CIFAR-100 from the official python-pickle archive, read with a restricted unpickler.

Docs: ``docs/distillation.md`` (the CIFAR-100 protocol: archive format, safety, augmentation, normalisation).

The archive ``cifar-100-python.tar.gz`` (or its extracted folder ``cifar-100-python/`` holding ``train``,
``test`` and ``meta``) is located through fsspec, so any fsspec URL works (local path, ``file://``,
``memory://``, ``s3://`` with the right extras, ...). Each file is a pickle of a dict with byte-string keys
(``pickle.load(f, encoding="bytes")``): ``b"data"`` uint8 N x 3072 (1024 R, 1024 G, 1024 B, row-major 32x32),
``b"fine_labels"`` (0-99), ``b"coarse_labels"`` (0-19); ``meta`` holds ``b"fine_label_names"``.

Unpickling runs code named by the file, so the plain unpickler is never used: ``RestrictedUnpickler``
resolves only exact (module, name) pairs: the globals numpy needs to rebuild arrays, plus the few that pickle
writes for sets, bytearrays and bytes, and raises ``UnsafePickleError`` naming any other global (a dotted name
too). The decoded content is validated (dtype, shapes, label range).
"""

from __future__ import annotations

import io
import pickle
import posixpath
import tarfile
import zlib
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "UnsafePickleError",
    "RestrictedUnpickler",
    "restricted_loads",
    "load_cifar100",
    "load_cifar100_meta",
    "write_synthetic_cifar100",
    "normalize_cifar100",
    "random_crop_flip",
]

#: Per-channel RGB mean / std on [0, 1] pixels (megvii-research/mdistiller: mdistiller/dataset/cifar100.py).
CIFAR100_MEAN: Tuple[float, float, float] = (0.5071, 0.4867, 0.4408)
CIFAR100_STD: Tuple[float, float, float] = (0.2675, 0.2565, 0.2761)

ARCHIVE_DIR = "cifar-100-python"
SPLITS = ("train", "test")
NUM_CLASSES = 100
NUM_COARSE = 20


# ----------------------------------------------------------------------------------------------------------
# restricted unpickling
# ----------------------------------------------------------------------------------------------------------
class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle referenced a global outside the allow-list (nothing was imported or called)."""


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``, which Python 3 protocol-2 pickles use to store ``bytes``.

    Only the latin-1 round trip is accepted; any other codec is refused.
    """
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> Dict[Tuple[str, str], Any]:
    """The numpy callables array pickles name, taken from numpy's own reducers (version independent).

    numpy >= 2 writes ``numpy._core.*``; older numpy (and the official, Python 2 era archive) wrote
    ``numpy.core.*``. Both spellings map to the same objects; nothing is imported by name.
    """
    reconstruct = np.zeros(1).__reduce__()[0]  # multiarray._reconstruct
    scalar = np.float64(0).__reduce__()[0]  # multiarray.scalar
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numeric._frombuffer (protocol 5)
    allowed: Dict[Tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(core + ".multiarray", "_reconstruct")] = reconstruct
        allowed[(core + ".multiarray", "scalar")] = scalar
        allowed[(core + ".numeric", "_frombuffer")] = frombuffer
    return allowed


#: Exact (module, qualified name) pairs and the objects they resolve to: nothing is imported or looked up by a
#: name the file chose. Besides numpy's array rebuilding, what pickle itself writes for plain values:
#: sets, frozensets and bytearrays are REDUCE calls of their type at protocols 0-2 (``__builtin__`` names
#: below protocol 3), and ``bytes`` at protocol 2 are ``_codecs.encode(str, "latin1")``.
_ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = _numpy_globals()
_ALLOWED_GLOBALS.update(
    {
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("_codecs", "encode"): _latin1_encode,
    }
)
_PY2_MODULES = {"__builtin__": "builtins"}


def _shown(text: Any) -> str:
    return ascii(str(text))[1:-1][:80]  # chosen by the file: printable, one line, bounded


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (numpy array rebuilding, plain containers).

    Any other ``module.name`` raises ``UnsafePickleError`` before it is imported or called. Persistent ids
    are refused as well.
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        # a dotted name is refused before the lookup: protocol 4 would walk it through the module's imports
        key = (_PY2_MODULES.get(module, module), name)
        if "." not in name and key in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[key]
        raise UnsafePickleError(
            f"refusing to unpickle global '{_shown(module)}.{_shown(name)}': only numpy array reconstruction and "
            "plain builtin containers are allowed in a CIFAR-100 archive"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {_shown(repr(pid))}")


def restricted_loads(data: bytes, encoding: str = "bytes") -> Any:
    """``pickle.loads`` through ``RestrictedUnpickler`` (``encoding="bytes"`` as for the official archive)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def _unpickle_member(data: bytes, what: str) -> Any:
    """A member's pickle, or ValueError naming the member when its bytes are not a (complete) pickle."""
    try:
        return restricted_loads(data)
    except UnsafePickleError:
        raise
    except Exception as exc:  # garbage or truncated bytes make the parser raise many types (EOFError, KeyError...)
        raise ValueError(f"{what} is not a valid pickle ({type(exc).__name__}): the archive is damaged") from None


# ----------------------------------------------------------------------------------------------------------
# reading the archive
# ----------------------------------------------------------------------------------------------------------
def _url_to_fs(path: str, storage_options: Optional[Dict[str, Any]]):
    import fsspec  # local import: only the loader needs it

    return fsspec.core.url_to_fs(str(path), **(storage_options or {}))


def _read_member(path: str, member: str, storage_options: Optional[Dict[str, Any]] = None) -> bytes:
    """Raw bytes of ``train`` / ``test`` / ``meta`` from an archive file or an (extracted) folder."""
    fs, root = _url_to_fs(path, storage_options)
    if fs.isdir(root):
        for candidate in (posixpath.join(root, member), posixpath.join(root, ARCHIVE_DIR, member)):
            if fs.isfile(candidate):
                with fs.open(candidate, "rb") as f:
                    return f.read()
        raise FileNotFoundError(f"no '{member}' in {path} (nor in {path}/{ARCHIVE_DIR})")
    if not fs.isfile(root):
        raise FileNotFoundError(f"CIFAR-100 archive not found: {path}")
    try:
        with fs.open(root, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as tar:
            for info in tar:
                parts = info.name.replace("\\", "/").strip("/").split("/")
                if info.isfile() and parts[-1] == member and len(parts) <= 2:
                    handle = tar.extractfile(info)
                    if handle is not None:
                        return handle.read()
    except (tarfile.TarError, EOFError, zlib.error) as exc:  # not a tar, or a truncated / corrupt one
        reason = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__).rstrip(": ")[:80]
        raise ValueError(
            f"{path} is not a readable tar archive ({reason}); pass cifar-100-python.tar.gz or its extracted folder"
        ) from None
    raise FileNotFoundError(f"no '{ARCHIVE_DIR}/{member}' member in archive {path}")


def _str_keys(obj: Any, what: str) -> Dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: expected a dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _labels(values: Any, n: int, num: int, what: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise ValueError(f"{what}: expected {n} integer labels, got shape {labels.shape} dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num):
        raise ValueError(f"{what}: labels outside [0, {num})")
    return labels.astype(np.int64)


def load_cifar100(
    path: str,
    split: str = "train",
    storage_options: Optional[Dict[str, Any]] = None,
    return_coarse: bool = False,
):
    """Load one split of CIFAR-100 from the official python archive.

    Args:
        path: fsspec URL of ``cifar-100-python.tar.gz`` or of the ``cifar-100-python/`` folder (or its parent).
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
        storage_options: passed to fsspec.
        return_coarse: also return the 20 coarse labels.

    Returns:
        ``(images, fine_labels)``: uint8 ``(N, 3, 32, 32)`` RGB and int64 ``(N,)`` in [0, 100);
        with ``return_coarse``, ``(images, fine_labels, coarse_labels)``.

    Raises:
        UnsafePickleError: the file names a global outside the allow-list.
        ValueError: the content is not CIFAR-100 shaped.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    what = f"{path}:{split}"
    entry = _str_keys(_unpickle_member(_read_member(path, split, storage_options), what), what)
    for key in ("data", "fine_labels"):
        if key not in entry:
            raise ValueError(f"{what}: missing key {key!r}")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{what}: 'data' must be a uint8 N x 3072 array, got "
            f"{type(data).__name__} {getattr(data, 'dtype', None)} {getattr(data, 'shape', None)}"
        )
    n = data.shape[0]
    images = np.ascontiguousarray(data.reshape(n, 3, 32, 32))
    fine = _labels(entry["fine_labels"], n, NUM_CLASSES, what + " fine_labels")
    if not return_coarse:
        return images, fine
    coarse = _labels(entry.get("coarse_labels", []), n, NUM_COARSE, what + " coarse_labels")
    return images, fine, coarse


def load_cifar100_meta(path: str, storage_options: Optional[Dict[str, Any]] = None) -> List[str]:
    """The 100 fine label names from the archive's ``meta`` file."""
    meta = _str_keys(_unpickle_member(_read_member(path, "meta", storage_options), f"{path}:meta"), f"{path}:meta")
    names = meta.get("fine_label_names")
    if not isinstance(names, (list, tuple)) or len(names) != NUM_CLASSES:
        raise ValueError(f"{path}:meta: expected {NUM_CLASSES} fine_label_names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


# ----------------------------------------------------------------------------------------------------------
# synthetic archive (tests)
# ----------------------------------------------------------------------------------------------------------
class _Py2StylePickler(pickle._Pickler):  # pure-Python pickler: its dispatch table can be extended
    """Protocol-2 pickler that writes ``bytes`` as Python 2 ``str`` opcodes and numpy globals under their
    pre-2.0 ``numpy.core`` names, like the files of the official archive."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str

    def save_global(self, obj: Any, name: Optional[str] = None) -> None:
        module = getattr(obj, "__module__", None) or ""
        qualname = name or getattr(obj, "__qualname__", obj.__name__)
        module = module.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
        self.memoize(obj)


def _py2_dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_synthetic_cifar100(
    path: str,
    n_train: int = 20,
    n_test: int = 10,
    seed: int = 0,
    archive: bool = True,
    storage_options: Optional[Dict[str, Any]] = None,
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Write a tiny CIFAR-100-format dataset (random pixels and labels) and return what was written.

    ``archive=True`` writes a ``.tar.gz`` holding ``cifar-100-python/{train,test,meta}`` at ``path``;
    ``archive=False`` writes the three files into the folder ``path``. Files are protocol-2 pickles with
    byte-string keys, as in the official archive. Returns ``{split: (images N x 3 x 32 x 32, fine_labels)}``.
    """
    rng = np.random.default_rng(seed)
    written: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    files: Dict[str, bytes] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = rng.integers(0, NUM_CLASSES, size=n)
        coarse = fine // 5
        files[split] = _py2_dumps(
            {
                b"filenames": [f"synthetic_{split}_{i}.png".encode() for i in range(n)],
                b"batch_label": f"synthetic {split} batch".encode(),
                b"fine_labels": [int(v) for v in fine],
                b"coarse_labels": [int(v) for v in coarse],
                b"data": data,
            }
        )
        written[split] = (data.reshape(n, 3, 32, 32), fine.astype(np.int64))
    files["meta"] = _py2_dumps(
        {
            b"fine_label_names": [f"class_{i:02d}".encode() for i in range(NUM_CLASSES)],
            b"coarse_label_names": [f"super_{i:02d}".encode() for i in range(NUM_COARSE)],
        }
    )

    fs, root = _url_to_fs(path, storage_options)
    if archive:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, payload in files.items():
                info = tarfile.TarInfo(f"{ARCHIVE_DIR}/{name}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        parent = posixpath.dirname(root)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(root, "wb") as f:
            f.write(buf.getvalue())
    else:
        fs.makedirs(root, exist_ok=True)
        for name, payload in files.items():
            with fs.open(posixpath.join(root, name), "wb") as f:
                f.write(payload)
    return written


# ----------------------------------------------------------------------------------------------------------
# augmentation / normalisation (torch)
# ----------------------------------------------------------------------------------------------------------
def normalize_cifar100(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or [0, 255]-valued) ``(N, 3, H, W)`` -> float32 ``(x / 255 - mean) / std`` per channel."""
    x = images.to(torch.float32) / 255.0
    mean = torch.tensor(CIFAR100_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, padding: int = 4, flip_prob: float = 0.5
) -> torch.Tensor:
    """RandomCrop(size, padding) with zero fill + RandomHorizontalFlip, per image, batched.

    ``images``: ``(N, C, H, W)`` of any dtype (apply before ``normalize_cifar100`` so the padding is black
    pixels, as torchvision's pipeline does). All randomness is drawn from ``generator`` (on its device),
    so a seeded generator makes the batch reproducible.
    """
    if images.dim() != 4:
        raise ValueError(f"expected (N, C, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    gdev = generator.device
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev).to(images.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev).to(images.device)
    flip = (torch.rand(n, generator=generator, device=gdev) < flip_prob).to(images.device)

    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows = oy.view(n, 1) + torch.arange(h, device=images.device)  # (N, H)
    cols = ox.view(n, 1) + torch.arange(w, device=images.device)  # (N, W)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)  # a flip is a reversed column window
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    chan = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
