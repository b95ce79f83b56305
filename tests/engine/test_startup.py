"""Start-up pays only for what the run uses: what `hookmix --version` and a one-process run import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Runs the command line in a fresh interpreter and reports, for each watched module, the frames
# (file names) that imported it first: the answer to "who made this run pay for it".
WATCH = textwrap.dedent(
    """
    import json, sys, traceback
    WATCHED = {"torch", "torch._dynamo", "torch.distributed.fsdp", "torch.distributed.checkpoint"}
    first = {}

    class Watch:
        def find_spec(self, name, path=None, target=None):
            if name in WATCHED and name not in first:
                first[name] = [f.filename for f in traceback.extract_stack()[:-1]]
            return None

    sys.meta_path.insert(0, Watch())
    sys.argv = ["hookmix", *sys.argv[1:]]
    from engine.cli import main
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code
    print("WATCHED " + json.dumps({"code": code, "first": first}))
    """
)


def _imports(*argv: str, cwd) -> dict:
    proc = subprocess.run([sys.executable, "-c", WATCH, *argv], capture_output=True, text=True, cwd=cwd, timeout=300)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("WATCHED ")]
    assert line, proc.stderr[-2000:]
    return json.loads(line[-1].removeprefix("WATCHED "))


def test_version_imports_no_torch(tmp_path):
    result = _imports("--version", cwd=tmp_path)
    assert result["code"] == 0
    assert "torch" not in result["first"], "hookmix --version imported torch via:\n" + "\n".join(
        result["first"]["torch"]
    )


def _pulled_in_by_torch_optim(frames: list[str]) -> bool:
    """Whether the import happened inside a torch optimizer called from hookmix code: torch 2.x's
    ``Optimizer.add_param_group`` is wrapped in ``torch._disable_dynamo``, which imports ``torch._dynamo``
    (and with it ``torch.distributed.fsdp``) on first use. That cost is torch's; every other path is ours."""
    ours = [i for i, f in enumerate(frames) if "/engine/" in f or "/plugins/" in f]
    return bool(ours) and any("/torch/optim/" in f for f in frames[ours[-1] + 1 :])


def test_one_process_run_imports_no_sharding_or_compiler(tmp_path):
    result = _imports("train", "mnist1d-mlp", "run.steps=1", "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path)
    assert result["code"] == 0
    for module in ("torch.distributed.fsdp", "torch.distributed.checkpoint", "torch._dynamo"):
        frames = result["first"].get(module)
        assert frames is None or _pulled_in_by_torch_optim(frames), (
            f"a one-process run imported {module} via:\n" + "\n".join(f for f in frames if "frozen" not in f)
        )


def test_the_watch_sees_an_engine_import(tmp_path):
    """The check above can fail: importing the FSDP module of the engine is seen and attributed to hookmix."""
    script = WATCH.replace("from engine.cli import main", "import engine.distributed.fsdp\nfrom engine.cli import main")
    proc = subprocess.run([sys.executable, "-c", script, "--version"], capture_output=True, text=True, cwd=tmp_path)
    first = json.loads(proc.stdout.splitlines()[-1].removeprefix("WATCHED "))["first"]
    assert "torch.distributed.fsdp" in first and not _pulled_in_by_torch_optim(first["torch.distributed.fsdp"])
