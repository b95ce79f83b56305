"""Discovery through real installed entry points; enabling by name; no silent autoload."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from engine import BadInput, Plugin, hookimpl
from engine.cli.main import main
from engine.config.recipe import apply_overrides, resolve
from engine.config.registry import Registry
from engine.loop import Trainer
from engine.testing import TOY, TOY_PLUGINS, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIRST_PARTY = {"tinyshakespeare", "mnist1d", "gpt", "mlp", "cnn1d", "adamw", "cross_entropy"}


def _env(*paths: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("HOOKMIX_TRACE", None)
    return env


@pytest.fixture(scope="module")
def ema_site(tmp_path_factory) -> str:
    """contrib/hookmix-ema installed by pip into a private target directory (not into the venv)."""
    src = tmp_path_factory.mktemp("ema-src") / "hookmix-ema"
    # build from a copy: an in-tree build would leave build/ and *.egg-info in contrib/
    shutil.copytree(
        os.path.join(ROOT, "contrib", "hookmix-ema"),
        src,
        ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"),
    )
    target = tmp_path_factory.mktemp("ema-site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "-q",
            "--target",
            str(target),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert any(p.name.startswith("hookmix_ema-") and p.name.endswith(".dist-info") for p in target.iterdir())
    return str(target)


def test_ema_is_not_installed_in_the_test_environment():
    assert "ema" not in Registry().names()  # on purpose: the tests below install it themselves


def test_plugins_json_lists_installed_contrib_first_party_and_broken(ema_site, broken_dist, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "plugins", "--json"],
        cwd=tmp_path,
        env=_env(ema_site, broken_dist),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["ema"]["distribution"] == "hookmix-ema"
    assert rows["ema"]["version"] == "0.1.0"
    assert rows["ema"]["status"] == "ok" and rows["ema"]["error"] is None
    assert "hookmix_after_optimizer_step" in rows["ema"]["hooks"]
    assert "hookmix_evaluate" in rows["ema"]["hooks"]
    for name in FIRST_PARTY:
        assert rows[name]["distribution"] == "hookmix" and rows[name]["status"] == "ok", rows[name]
    assert rows["tinyshakespeare"]["hooks"] == ["hookmix_data"]
    assert rows["broken"]["distribution"] == "hookmix-broken"
    assert rows["broken"]["status"] == "broken"
    assert rows["broken"]["error"] == "RuntimeError: boom: this plugin cannot import"


def test_recipe_enabling_installed_contrib_plugin_by_name_trains(
    ema_site, broken_dist, monkeypatch, capsys, tmp_path, tiny_gpt
):
    # discovered from the pip-installed dist-info; the broken plugin next to it is not enabled, so harmless
    monkeypatch.syspath_prepend(broken_dist)
    monkeypatch.syspath_prepend(ema_site)
    monkeypatch.delitem(sys.modules, "hookmix_ema", raising=False)
    out = tmp_path / "run"
    try:
        code = main(["train", "shakespeare-gpt", "run.steps=2", "run.plugins+=ema", *tiny_gpt, "--out", str(out)])
        assert sys.modules["hookmix_ema"].__file__.startswith(ema_site)
    finally:
        sys.modules.pop("hookmix_ema", None)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert re.search(
        r"^  ema +hookmix-ema 0\.1\.0 +Exponential moving average", captured.out, flags=re.M
    )  # in the plan
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    ours = {"distribution": "hookmix", "version": "0.2.0"}
    assert summary["plugins"] == {
        "tinyshakespeare": ours,
        "gpt": ours,
        "adamw": ours,
        "cross_entropy": ours,
        "ema": {"distribution": "hookmix-ema", "version": "0.1.0"},
    }
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["ema/decay"] == 0.99  # ema's evaluate wrapper ran
    assert "[plugins.ema]" in (out / "recipe.toml").read_text()


def test_broken_plugin_is_listed_and_fails_a_run_only_when_enabled(
    broken_dist, monkeypatch, capsys, one_error_line, tmp_path, tiny_gpt
):
    monkeypatch.syspath_prepend(broken_dist)
    registry = Registry()
    info = registry.info("broken")
    assert info.status == "broken: RuntimeError: boom: this plugin cannot import"
    assert registry.info("adamw").status == "ok"

    result = train(TOY, steps=2)  # installed but not enabled: no effect
    assert result.summary["steps"] == 2

    out = tmp_path / "run"
    code = main(["train", "shakespeare-gpt", *tiny_gpt, "run.steps=2", "run.plugins+=broken", "--out", str(out)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "plugin 'broken' (hookmix-broken 0.1) is broken: RuntimeError: boom" in line
    assert not out.exists()


# --- enable / disable by name -----------------------------------------------------------------


class Spy(Plugin):
    """Counts its instances and its steps."""

    name = "spy"
    instances = 0

    def __init__(self):
        super().__init__()
        type(self).instances += 1
        self.steps = 0

    @hookimpl
    def hookmix_after_optimizer_step(self, model, state):
        self.steps += 1


def _toy_run(overrides: list[str], plugins: list[str]):
    registry = Registry({**TOY_PLUGINS, "spy": Spy})
    raw = apply_overrides(
        {"run": {"plugins": plugins, "steps": 3, "out": f"memory://spy-{uuid.uuid4().hex}"}}, overrides
    )
    trainer = Trainer(resolve("t", raw, registry), registry, quiet=True)
    return trainer, trainer.run()


def test_enable_and_disable_by_name_with_overrides(monkeypatch):
    monkeypatch.setattr(Spy, "instances", 0)
    trainer, summary = _toy_run(["run.plugins+=spy"], list(TOY))
    assert Spy.instances >= 1  # resolve asks a throwaway instance for its Config class
    assert trainer.manager.order == [*TOY, "spy"]
    assert trainer.manager.plugins["spy"].steps == 3
    assert "spy" in summary["plugins"]

    monkeypatch.setattr(Spy, "instances", 0)
    trainer, summary = _toy_run(["run.plugins-=spy"], [*TOY, "spy"])
    assert Spy.instances == 0
    assert "spy" not in trainer.manager.plugins and "spy" not in summary["plugins"]

    # += never duplicates; -= of a name that is not in the list is a typo: bad input with a suggestion
    assert apply_overrides({"run": {"plugins": ["a", "b"]}}, ["run.plugins+=b", 'run.plugins+=["c", "a"]'])["run"][
        "plugins"
    ] == ["a", "b", "c"]
    with pytest.raises(BadInput, match="did you mean 'spy'"):
        apply_overrides({"run": {"plugins": ["a", "spy"]}}, ["run.plugins-=spyy"])


def test_installed_plugin_not_named_is_never_instantiated_or_imported(install_dist, capsys, tmp_path, tiny_gpt):
    install_dist(
        "hookmix-spy",
        {"autoload_spy": "hookmix_autoload_spy:AutoloadSpy"},
        {
            "hookmix_autoload_spy": """
        from engine import Plugin, hookimpl

        class AutoloadSpy(Plugin):
            \"\"\"Fails every run it is instantiated in.\"\"\"
            name = "autoload_spy"

            def __init__(self):
                raise RuntimeError("autoload_spy was instantiated although no recipe named it")
    """
        },
    )
    assert "autoload_spy" in Registry().names()
    train(TOY, steps=1)
    assert "hookmix_autoload_spy" not in sys.modules  # a recipe resolved in code imports only what it names
    assert main(["train", "shakespeare-gpt", *tiny_gpt, "run.steps=1", "--quiet", "--out", str(tmp_path / "r")]) == 0
    with pytest.raises(RuntimeError, match="instantiated although"):
        train([*TOY, "autoload_spy"], steps=1)  # and named, it is


def test_registry_rejects_unknown_names_with_a_suggestion():
    with pytest.raises(BadInput, match=r"unknown plugin 'adamv'; did you mean 'adamw'\?"):
        Registry().load("adamv")
