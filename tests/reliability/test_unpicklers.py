"""No code runs from a checkpoint or a data file: every unpickler of hookmix refuses every global outside its
exact allow-list, with one line and nothing called.

The readers that unpickle what a file names:

- ``.metadata`` of a sharded (DCP) checkpoint: ``sharded_checkpoint.parse_metadata`` (``METADATA_GLOBALS``);
- the CIFAR-100 archive: ``cifar100.restricted_loads`` (``RestrictedUnpickler``);
- one-file checkpoints, and the pieces of a DCP directory: ``torch.load(weights_only=True)`` with torch's own
  allow-list, to which hookmix adds nothing (``test_hookmix_widens_no_allow_list``; every load call of the
  project is audited by ``test_every_load_in_the_project_is_restricted``).

The payloads are generated. For every module of a reader's allow-list: every callable of the module's
namespace, every callable attribute of its classes (``PosixPath.write_text``), and every callable one and two
levels deep through the modules it imported (``metadata`` imports ``os``: ``os.system``, reached by the dotted
name that protocol 4 resolves attribute by attribute), minus the allowed pairs. Each is pickled three ways:
protocol 4 (STACK_GLOBAL) calling it with a shell command that creates PWNED, protocol 2 (GLOBAL) calling it with
PWNED's path (``mkdir``, ``touch``, ``open``), protocol 0 (GLOBAL) calling it without arguments. Every payload
must be refused with one line, and PWNED must not exist. For the one-file reader the names go one level deep
(torch compares the whole dotted name with its table, so deeper names change nothing): the namespace's names
through ``checkpoint.load_bytes`` (a torch.save file around the pickle), the dotted ones through torch's
unpickler directly (a tenth of the time). ``-s`` prints the count per module.

Also: allowed classes holding what DCP never writes (pieces outside the directory, transformed pieces, wrong
types), a piece that needs arbitrary unpickling, and end to end: ``hookmix train --resume`` of an FSDP run
(2 processes) whose ``.metadata`` was replaced, and ``hookmix train`` on a CIFAR archive with a payload: exit 2,
one line, no PWNED, nothing written.
"""

from __future__ import annotations

import ast
import functools
import importlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import types
import warnings
import zipfile

import pytest
import torch
from reliability_helpers import ROOT, TINY_GPT, cli, hookmix_process, one_line, snapshot

from engine.distributed import sharded_checkpoint
from engine.errors import BadInput
from engine.rundir import checkpoint
from plugins.cifar import cifar100

DCP_MODULES = {  # the allowed module -> the module whose namespace is walked
    "torch.distributed.checkpoint.metadata": "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem": "torch.distributed.checkpoint.filesystem",
    "torch.serialization": "torch.serialization",
    "torch": "torch",
    "pathlib": "pathlib",
    "pathlib._local": "pathlib",  # Python 3.13's spelling (no such module before 3.13)
}
CIFAR_MODULES = {
    "numpy": "numpy",
    "numpy.core.multiarray": "numpy._core.multiarray",  # numpy < 2 spelling, numpy 2's objects
    "numpy._core.multiarray": "numpy._core.multiarray",
    "numpy.core.numeric": "numpy._core.numeric",
    "numpy._core.numeric": "numpy._core.numeric",
    "builtins": "builtins",
    "__builtin__": "builtins",  # Python 2 (and protocol < 3) spelling
    "_codecs": "_codecs",
}


def _torch_allowed() -> set[str]:
    from torch import _weights_only_unpickler

    user = {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', g)}" for g in _safe_globals()}
    return set(_weights_only_unpickler._get_allowed_globals()) | user


def _safe_globals() -> list:
    return [g[0] if isinstance(g, tuple) else g for g in torch.serialization.get_safe_globals()]


def _torch_modules() -> list[str]:
    from torch import _weights_only_unpickler

    return sorted({name.rsplit(".", 1)[0] for name in _weights_only_unpickler._get_allowed_globals()})


ONE_FILE_MODULES = {m: m for m in _torch_modules()}  # torch's own table (the safe globals vary with imports)


def _callables(obj) -> set[str]:
    """The names of ``obj``'s callable attributes (a module's namespace, or a class's attributes)."""
    out = set()
    for name in list(vars(obj)) if isinstance(obj, types.ModuleType) else dir(obj):
        try:
            if callable(getattr(obj, name)):
                out.add(name)
        except Exception:  # a descriptor that fails outside an instance
            continue
    return out


def _reachable(module: types.ModuleType, depth: int, classes: bool) -> set[str]:
    """Callables of ``module``, of its classes (``classes``), and ``depth - 1`` levels through its imports."""
    names = _callables(module)
    for name, value in list(vars(module).items()):
        if classes and isinstance(value, type):
            names |= {f"{name}.{attr}" for attr in _callables(value)}
        if depth > 1 and isinstance(value, types.ModuleType):
            names |= {f"{name}.{inner}" for inner in _reachable(value, depth - 1, False)}
    return names


@functools.cache
def _targets(reader: str, module: str) -> list[str]:
    modules, allowed = {
        "dcp": (DCP_MODULES, {f"{m}.{n}" for m, n in sharded_checkpoint.METADATA_GLOBALS}),
        "cifar": (CIFAR_MODULES, {f"{m}.{n}" for m, n in cifar100._ALLOWED_GLOBALS}),
        "one-file": (ONE_FILE_MODULES, _torch_allowed()),
    }[reader]
    if reader == "cifar" and module == "__builtin__":
        allowed = {a.replace("builtins.", "__builtin__.", 1) for a in allowed}
    with warnings.catch_warnings():  # deprecated attributes warn when read
        warnings.simplefilter("ignore")
        names = _reachable(
            importlib.import_module(modules[module]), 2 if reader == "one-file" else 3, reader != "one-file"
        )
    return sorted(n for n in names if f"{module}.{n}" not in allowed)


def _text(value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    return pickle.BINUNICODE + len(data).to_bytes(4, "little") + data


def _payloads(module: str, name: str, pwned: str) -> list[tuple[str, bytes]]:
    """Three pickles that call ``module.name``: what a plain ``pickle.load`` would run."""
    where = f"{module}\n{name}\n".encode()
    return [
        ("p4", b"\x80\x04" + _text(module) + _text(name) + pickle.STACK_GLOBAL + _text(f"touch {pwned}") + b"\x85R."),
        ("p2", b"\x80\x02" + pickle.GLOBAL + where + _text(pwned) + b"\x85R."),
        ("p0", pickle.GLOBAL + where + pickle.MARK + pickle.TUPLE + pickle.REDUCE + pickle.STOP),
    ]


def as_checkpoint(data: bytes) -> bytes:
    """``data`` as the pickle of a torch.save file (what ``torch.load`` unpickles); ``version``: the one
    other member that torch.load needs."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/version", b"3\n")
    return out.getvalue()


def _torch_unpickle(data: bytes) -> None:
    """What ``checkpoint.load_bytes`` does with a file's pickle, without the zip around it and torch.load's
    long message (a tenth of the time): torch's weights_only unpickler, its refusal named by the same test."""
    from torch import _weights_only_unpickler

    try:
        with warnings.catch_warnings():  # torch warns about protocol 4 before refusing it
            warnings.simplefilter("ignore")
            _weights_only_unpickler.Unpickler(io.BytesIO(data), encoding="utf-8").load()
    except pickle.UnpicklingError as exc:
        what = checkpoint.refused_object(exc)
        raise BadInput(
            f"needs unpickling arbitrary Python objects ({what})" if what else "is unreadable (UnpicklingError)"
        )


def _refusal(reader: str, kind: str, data: bytes, whole_file: bool = True) -> str | None:
    """None when the reader refused ``data`` as it must (one line, the right error); else what happened.
    ``whole_file=False``: a one-file payload goes to torch's unpickler directly (the dotted names)."""
    try:
        if reader == "dcp":
            sharded_checkpoint.parse_metadata(data, "run/checkpoints/step-00000004.dcp/.metadata")
        elif reader == "cifar":
            cifar100.restricted_loads(data)
        elif whole_file:
            checkpoint.load_bytes(as_checkpoint(data), "run/checkpoints/step-00000004.pt")
        else:
            _torch_unpickle(data)
    except (BadInput, cifar100.UnsafePickleError) as exc:
        text = str(exc)
        if "\n" in text or "\r" in text:
            return f"a message of several lines: {text!r}"
        expected = {
            "dcp": "is not allowed in a checkpoint's DCP metadata",
            "cifar": "refusing to unpickle global",
            # torch's weights_only unpickler has no STACK_GLOBAL: it refuses the opcode (unreadable, exit 2)
            "one-file": "is unreadable (UnpicklingError)" if kind == "p4" else "needs unpickling arbitrary",
        }[reader]
        return None if expected in text else f"{type(exc).__name__}: {text}"
    except BaseException as exc:  # anything else ran into code it should never have reached
        return f"not refused: {type(exc).__name__}: {str(exc)[:200]}"
    return "loaded"


CASES = [("dcp", m) for m in DCP_MODULES] + [("cifar", m) for m in CIFAR_MODULES]
CASES += [("one-file", m) for m in ONE_FILE_MODULES]


@pytest.mark.parametrize("reader, module", CASES, ids=[f"{r}-{m}" for r, m in CASES])
def test_every_name_reachable_from_an_allowed_module_is_refused(reader, module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a relative PWNED would appear
    pwned = str(tmp_path / "PWNED")
    names = _targets(reader, module)
    wrong = []
    for name in names:
        for kind, data in _payloads(module, name, pwned):
            problem = _refusal(reader, kind, data, whole_file="." not in name)
            if problem is not None:
                wrong.append(f"{kind} {module}.{name}: {problem}")
    assert not wrong, f"{len(wrong)} not refused, e.g.:\n" + "\n".join(wrong[:20])
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
    print(f"{reader} {module}: {3 * len(names)} payloads ({len(names)} names) refused")


def test_the_payloads_would_run_code_without_the_restricted_unpicklers(tmp_path, monkeypatch):
    """The generated payloads are live: the plain unpickler runs the dotted name of issue 20 (protocol 4 walks
    ``metadata.os.system``), and protocol 2's GLOBAL makes PWNED through ``os.mkdir``."""
    monkeypatch.chdir(tmp_path)
    pwned = tmp_path / "PWNED"
    pickle.loads(_payloads("torch.distributed.checkpoint.metadata", "os.system", str(pwned))[0][1])
    assert pwned.exists()
    pwned.unlink()
    pickle.loads(_payloads("os", "mkdir", str(pwned))[1][1])
    assert pwned.is_dir()


def test_dotted_and_foreign_names_are_refused_before_any_lookup():
    """A few classic payloads by hand, including names that exist only as dotted paths and other modules."""
    for module, name in [
        ("torch.distributed.checkpoint.metadata", "os.system"),
        ("torch.distributed.checkpoint.metadata", "torch.load"),
        ("torch", "Size.__new__"),
        ("torch", "_dynamo"),  # torch imports it lazily: a lookup alone would import a module
        ("os", "system"),
        ("posix", "system"),
        ("subprocess", "Popen"),
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("runpy", "_run_code"),
        ("pickle", "loads"),
    ]:
        for kind, data in _payloads(module, name, "/nonexistent/PWNED"):
            assert _refusal("dcp", kind, data) is None
            assert _refusal("cifar", kind, data) is None
    with pytest.raises(BadInput, match="a persistent id is not allowed"):
        sharded_checkpoint.parse_metadata(b"\x80\x04" + _text("x") + b"\x94Q.", "m")


def _recorded_globals(data: bytes) -> set[tuple[str, str]]:
    seen = set()

    class Recorder(sharded_checkpoint._MetadataUnpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    Recorder(io.BytesIO(data)).load()
    return seen


CORE_PAIRS = {
    ("torch.distributed.checkpoint.metadata", n)
    for n in ("Metadata", "StorageMeta", "MetadataIndex", "TensorStorageMetadata", "TensorProperties")
} | {
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
}


def test_plain_tensor_dcp_metadata_names_only_allowed_pairs(tmp_path):
    """A DCP directory of plain tensors (as a 1-process or DDP state dict: float32, int64, bfloat16, AdamW state)
    loads through SafeReader; its metadata names the core pairs and dtypes, nothing else."""
    import torch.distributed.checkpoint as dcp

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()["state"], "count": torch.arange(3)}
    state["half"] = torch.ones(2, dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="single process"):
        dcp.save(state, checkpoint_id=str(tmp_path / "ck"), no_dist=True)
    data = (tmp_path / "ck" / ".metadata").read_bytes()
    seen = _recorded_globals(data)
    dtypes = {("torch", "float32"), ("torch", "int64"), ("torch", "bfloat16")}
    assert seen == CORE_PAIRS | dtypes
    metadata = sharded_checkpoint.SafeReader(str(tmp_path / "ck")).read_metadata()
    assert sorted(metadata.state_dict_metadata)[:2] == ["count", "half"]


def _plain_dcp(path: str) -> torch.nn.Module:
    """A DCP directory of a Linear's state dict, as hookmix lays it out (model, modules, optimizer)."""
    import torch.distributed.checkpoint as dcp

    model = torch.nn.Linear(3, 2)
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"model": model.state_dict(), "modules": {}, "optimizer": {}}, checkpoint_id=path, no_dist=True)
    return model


def _piece(metadata, key: str):
    return next((index, info) for index, info in metadata.storage_data.items() if index.fqn == key)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda m: setattr(_piece(m, "model.weight")[1], "relative_path", "../x.distcp"), "outside its directory"),
        (lambda m: setattr(_piece(m, "model.weight")[1], "relative_path", "/etc/passwd"), "outside its directory"),
        (lambda m: setattr(_piece(m, "model.weight")[1], "transform_descriptors", ["zstd"]), "is transformed"),
        (lambda m: setattr(m.state_dict_metadata["model.bias"].properties, "dtype", "float32"), "is malformed"),
        (lambda m: setattr(m.state_dict_metadata["model.bias"], "size", (2,)), "is malformed"),
        (lambda m: m.state_dict_metadata["model.bias"].chunks.append("x"), "is malformed"),
        (lambda m: setattr(m, "storage_data", None), "not DCP metadata"),
    ],
)
def test_edited_dcp_metadata_is_refused_before_loading(edit, expected, tmp_path):
    """Allowed classes holding what DCP never writes: pieces outside the directory (another file's bytes as weights),
    transformed pieces, a dtype or shape of the wrong type. Refused (bad input), never skipped as damage."""
    _plain_dcp(str(tmp_path / "ck"))
    metadata = pickle.loads((tmp_path / "ck" / ".metadata").read_bytes())  # written by this test: trusted
    edit(metadata)
    with pytest.raises(BadInput, match=expected) as refused:
        sharded_checkpoint.parse_metadata(pickle.dumps(metadata), "ck/.metadata")
    assert not isinstance(refused.value, checkpoint.Damaged)


def test_a_shard_piece_needing_arbitrary_unpickling_is_refused_not_skipped(tmp_path):
    """DCP loads every piece with torch.load(weights_only=True): a piece replaced by a pickle calling os.system is
    refused by torch, and hookmix reports it as bad input naming the file (not as damage to fall back from)."""
    from engine.rundir.directory import RunDir

    folder = tmp_path / "checkpoints" / "step-00000004.dcp"
    model = _plain_dcp(str(folder))
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    _, info = _piece(metadata, "model.weight")
    shard = folder / info.relative_path
    data = shard.read_bytes()
    pwned = tmp_path / "PWNED"
    evil = as_checkpoint(_payloads("os", "system", f"touch {pwned}")[1][1])
    shard.write_bytes(data[: info.offset] + evil + data[info.offset + info.length :])
    for other in metadata.storage_data.values():  # the pieces after it moved
        if other.relative_path == info.relative_path and other.offset > info.offset:
            other.offset += len(evil) - info.length
    info.length = len(evil)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    payload = {"step": 4, "sharded": "step-00000004.dcp", "optimizer": {}}
    with pytest.raises(BadInput, match=r"__0_0\.distcp: it needs unpickling arbitrary Python objects") as refused:
        sharded_checkpoint.load(RunDir(str(tmp_path)), payload, model, torch.nn.ModuleDict(), None)
    assert not isinstance(refused.value, checkpoint.Damaged) and "\n" not in str(refused.value)
    assert not pwned.exists()


# --- end to end: the command line -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> str:
    """`hookmix train shakespeare-gpt --nproc 2 run.strategy=fsdp`: 4 steps, DCP checkpoints at 2 and 4."""
    out = str(tmp_path_factory.mktemp("fsdp") / "run")
    proc = hookmix_process(
        "train",
        "shakespeare-gpt",
        *TINY_GPT,
        "run.strategy=fsdp",
        "run.steps=4",
        "run.checkpoint_interval=2",
        "run.eval_interval=2",
        "--nproc",
        "2",
        "--out",
        out,
        "--quiet",
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def test_a_genuine_fsdp_checkpoint_names_only_allowed_pairs(fsdp_run):
    """The .metadata of both checkpoints of a real FSDP2 run (2 processes) names the core pairs and float32."""
    for step in (2, 4):
        data = open(f"{fsdp_run}/checkpoints/step-0000000{step}.dcp/.metadata", "rb").read()
        assert _recorded_globals(data) == CORE_PAIRS | {("torch", "float32")}


def _tampered(fsdp_run: str, tmp_path, data: bytes) -> str:
    out = str(tmp_path / "run")
    shutil.copytree(fsdp_run, out)
    with open(f"{out}/checkpoints/step-00000004.dcp/.metadata", "wb") as f:
        f.write(data)
    return out


@pytest.mark.parametrize(
    "module, name, kind",
    [
        ("torch.distributed.checkpoint.metadata", "os.system", "p4"),  # issue 20's payload
        ("torch.serialization", "os.system", "p4"),
        ("pathlib", "os.mkdir", "p4"),
        ("os", "system", "p0"),
        ("torch", "os.mkdir", "p2"),
    ],
)
def test_resume_of_a_run_with_replaced_dcp_metadata_is_one_line_and_runs_nothing(
    fsdp_run, tmp_path, capsys, module, name, kind
):
    pwned = str(tmp_path / "PWNED")
    data = dict(_payloads(module, name, pwned))[kind]
    out = _tampered(fsdp_run, tmp_path, data)
    before = snapshot(out)
    code, _, err = cli("train", "--resume", out, "run.steps=6", "--quiet", capsys=capsys)
    line = one_line(err)
    assert code == 2 and line.startswith("hookmix: error: sharded checkpoint "), line
    assert f"{module}.{name} is not allowed in a checkpoint's DCP metadata" in line, line
    assert not os.path.exists(pwned) and snapshot(out) == before


def test_resume_of_the_untampered_fsdp_run_in_one_process_works(fsdp_run, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(fsdp_run, out)
    code, stdout, err = cli("train", "--resume", out, "run.steps=6", "--quiet", capsys=capsys)
    assert code == 0 and "done: 6 steps" in stdout, err


def test_cifar_archive_with_a_payload_is_one_line_and_runs_nothing(tmp_path, capsys):
    pwned = str(tmp_path / "PWNED")
    archive = str(tmp_path / "cifar-100-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        for member, data in (("train", _payloads("numpy", "os.system", pwned)[0][1]), ("test", b"")):
            info = tarfile.TarInfo(f"cifar-100-python/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = str(tmp_path / "out")
    code, _, err = cli("train", "cifar100-r32x4", f"plugins.cifar100.path={archive}", "--out", out, capsys=capsys)
    line = one_line(err)
    assert code == 2 and "refusing to unpickle global 'numpy.os.system'" in line, line
    assert not os.path.exists(pwned) and not os.path.exists(out)


# --- the audit: no other way in ---------------------------------------------------------------------------


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_every_load_in_the_project_is_restricted():
    """Every ``torch.load`` passes ``weights_only=True``, every ``np.load`` ``allow_pickle=False``, every DCP load
    goes through SafeReader; nothing calls the plain unpickler or widens torch's allow-list; the only Unpickler
    subclasses are the two audited here."""
    bad, unpicklers = [], []
    for top in ("engine", "plugins", "contrib"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for file in (f for f in files if f.endswith(".py")):
                path = os.path.join(folder, file)
                tree = ast.parse(open(path).read(), path)
                where = os.path.relpath(path, ROOT)
                for node, func in _calls(tree):
                    keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                    if func == "torch.load" and keywords.get("weights_only") != "True":
                        bad.append(f"{where}:{node.lineno} torch.load without weights_only=True")
                    if func.endswith(("np.load", "numpy.load")) and keywords.get("allow_pickle") != "False":
                        bad.append(f"{where}:{node.lineno} {func} without allow_pickle=False")
                    if func in ("dcp.load", "dcp.load_state_dict") and "storage_reader" not in keywords:
                        bad.append(f"{where}:{node.lineno} {func} without SafeReader (DCP's reader unpickles freely)")
                    if func.endswith("FileSystemReader"):
                        bad.append(f"{where}:{node.lineno} {func} (DCP's reader unpickles .metadata freely)")
                    if func.split(".")[-1] in ("add_safe_globals", "safe_globals") or func in (
                        "pickle.load",
                        "pickle.loads",
                        "pickle.Unpickler",
                        "marshal.loads",
                        "torch.jit.load",
                        "yaml.load",
                    ):
                        bad.append(f"{where}:{node.lineno} {func}")
                for node in ast.walk(tree):
                    if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
                        unpicklers.append(f"{where}:{node.name}")
    assert not bad, bad
    assert sorted(unpicklers) == [
        "engine/distributed/sharded_checkpoint.py:_MetadataUnpickler",
        "plugins/cifar/cifar100.py:RestrictedUnpickler",
    ]


def test_hookmix_widens_no_allow_list():
    """After importing every module of engine/ and plugins/, torch's weights_only allow-list holds only what torch
    itself registers (a fresh interpreter: nothing else imported first)."""
    script = (
        "import importlib, pkgutil, torch, engine, plugins\n"
        "for pkg in (engine, plugins):\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if info.name.endswith('__main__'):\n"  # runs the command line when imported
        "            continue\n"
        "        try:\n"
        "            importlib.import_module(info.name)\n"
        "        except ImportError:\n"  # an optional extra that is not installed
        "            pass\n"
        "found = [g[0] if isinstance(g, tuple) else g for g in torch.serialization.get_safe_globals()]\n"
        "print(sorted({getattr(g, '__module__', '?') for g in found}))\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert modules and all(m == "torch" or m.startswith("torch.") for m in modules), modules
