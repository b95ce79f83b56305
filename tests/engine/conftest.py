"""Shared fixtures of the engine tests: one thread, fake installed plugins, a tiny GPT run."""

from __future__ import annotations

import contextlib
import io
import sys
import textwrap

import pytest
import torch

torch.set_num_threads(1)

# shakespeare-gpt shrunk to a second of CPU time per run
TINY_GPT = [
    "plugins.gpt.n_layer=1",
    "plugins.gpt.n_head=2",
    "plugins.gpt.n_embd=32",
    "plugins.tinyshakespeare.block_size=16",
    "plugins.tinyshakespeare.batch_size=4",
    "plugins.tinyshakespeare.eval_batches=1",
    "run.threads=1",
]
GPT6 = [*TINY_GPT, "run.steps=6", "run.checkpoint_interval=3", "run.eval_interval=3", "run.log_interval=2"]


@pytest.fixture(scope="session")
def tiny_gpt() -> list[str]:
    """Overrides that make shakespeare-gpt tiny (1 block, width 32, 16-char windows)."""
    return list(TINY_GPT)


@pytest.fixture(scope="session")
def gpt6() -> list[str]:
    """The tiny shakespeare-gpt run used by the resume/output tests: 6 steps, eval + checkpoint at 3 and 6."""
    return list(GPT6)


@pytest.fixture(scope="session")
def gpt_run(tmp_path_factory) -> str:
    """Directory of one finished `hookmix train shakespeare-gpt <GPT6> --out DIR` (do not modify it)."""
    from engine.cli.main import main

    out = str(tmp_path_factory.mktemp("gpt-straight") / "run")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "shakespeare-gpt", *GPT6, "--quiet", "--out", out]) == 0
    return out


def write_dist(root, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> str:
    """Lay out an installed distribution (dist-info + modules) under ``root``, as pip would."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[hookmix.plugins]\n{lines}")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    return str(root)


@pytest.fixture
def install_dist(tmp_path, monkeypatch):
    """Install a fake distribution on ``sys.path`` for this test; its modules are forgotten afterwards."""
    names: list[str] = []

    def install(dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> str:
        path = write_dist(tmp_path / f"site-{dist}", dist, entry_points, modules)
        monkeypatch.syspath_prepend(path)  # also invalidates importlib's metadata caches
        names.extend(modules)
        return path

    yield install
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
def broken_dist(tmp_path) -> str:
    """A directory (not on sys.path) holding `hookmix-broken`, whose entry point `broken` fails to import."""
    return write_dist(
        tmp_path / "site-broken",
        "hookmix-broken",
        {"broken": "hookmix_broken_mod:Broken"},
        {"hookmix_broken_mod": 'raise RuntimeError("boom: this plugin cannot import")\n'},
    )


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("hookmix: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def one_error_line():
    """Check that the CLI's stderr is exactly one `hookmix: error: ...` line (no traceback); return it."""
    return _one_error_line
