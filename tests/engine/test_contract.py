"""The plugin contract v1: declarations checked at load, typed capabilities, versions, one way to open a run."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from typing import Protocol, runtime_checkable

import pytest
import torch

from engine import API_VERSION, BadInput, Plugin, WeightConstraint, hookimpl, open_run
from engine.cli.main import main
from engine.config.recipe import apply_overrides
from engine.config.registry import Registry
from engine.loop import Trainer
from engine.manager import order_plugins
from engine.testing import TOY, TOY_PLUGINS, make_recipe, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- 1. recipes shipped by a plugin: a wrong declaration breaks that plugin only -----------------


RECIPE_MODULE = """
    from engine import Plugin

    class Good(Plugin):
        \"\"\"Ships a valid recipe.\"\"\"
        name = "good_recipes"
        recipes = "hookmix_rcp_pkg"

    class Missing(Plugin):
        \"\"\"Points at a package that does not exist.\"\"\"
        name = "missing_recipes"
        recipes = "hookmix_no_such_package"

    class Empty(Plugin):
        \"\"\"Points at a module that is not a package of TOML files.\"\"\"
        name = "empty_recipes"
        recipes = "hookmix_rcp"

    class BadToml(Plugin):
        \"\"\"Ships a recipe that is not TOML.\"\"\"
        name = "bad_toml_recipes"
        recipes = "hookmix_rcp_bad"
"""


def _recipe_plugins(install_dist):
    names = ("good_recipes", "missing_recipes", "empty_recipes", "bad_toml_recipes")
    classes = ("Good", "Missing", "Empty", "BadToml")
    site = install_dist(
        "hookmix-rcp", {n: f"hookmix_rcp:{c}" for n, c in zip(names, classes)}, {"hookmix_rcp": RECIPE_MODULE}
    )
    for pkg, text in (
        ("hookmix_rcp_pkg", 'description = "a shipped toy"\n[run]\nplugins = ["mnist1d"]\n'),
        ("hookmix_rcp_bad", "this is [not toml\n"),
    ):
        os.makedirs(os.path.join(site, pkg))
        open(os.path.join(site, pkg, "__init__.py"), "w").close()
        with open(os.path.join(site, pkg, "r.toml" if pkg.endswith("pkg") else "bad.toml"), "w") as f:
            f.write(text)


def test_a_wrong_recipes_declaration_breaks_that_plugin_only(install_dist, capsys, tmp_path):
    _recipe_plugins(install_dist)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"^missing_recipes .*BROKEN: recipes = 'hookmix_no_such_package' is not an importable package", out, flags=re.M
    )
    assert re.search(r"^empty_recipes .*BROKEN: recipes = 'hookmix_rcp' is not an importable package", out, flags=re.M)
    assert re.search(
        r"^bad_toml_recipes .*BROKEN: shipped recipe hookmix_rcp_bad/bad.toml is not valid TOML", out, flags=re.M
    )
    assert re.search(r"^good_recipes .*\[ok\]", out, flags=re.M)
    assert main(["recipes"]) == 0  # the others' recipes still list, the valid one too
    listed = capsys.readouterr().out
    assert re.search(r"^r +hookmix-rcp +a shipped toy", listed, flags=re.M) and "shakespeare-gpt" in listed
    assert main(["recipes", "--show", "shakespeare-gpt"]) == 0
    assert capsys.readouterr().out == open(os.path.join(ROOT, "plugins/core/recipes/shakespeare-gpt.toml")).read()


def test_recipes_show_names_an_unknown_recipe(capsys, one_error_line):
    assert main(["recipes", "--show", "shakespeare-gtp"]) == 2
    assert "did you mean 'shakespeare-gpt'" in one_error_line(capsys.readouterr().err)


# --- 2. config for a plugin that is not enabled ------------------------------------------------


@pytest.mark.parametrize("override", ["plugins.kd.weight=3", "plugins.kd.wieght=3"])
def test_config_for_a_disabled_plugin_is_bad_input(override, capsys, one_error_line, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "shakespeare-gpt", override, "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "[plugins.kd] configures plugin 'kd', which run.plugins does not enable" in line
    assert "run.plugins+=kd" in line
    assert not out.exists()


def test_disabling_a_plugin_drops_its_table():
    raw = {"run": {"plugins": ["a", "b"]}, "plugins": {"b": {"x": 1}, "a": {"y": 2}}}
    assert apply_overrides(raw, ["run.plugins-=b"]) == {"run": {"plugins": ["a"]}, "plugins": {"a": {"y": 2}}}


# --- 3. hooks without @hookimpl or misspelled --------------------------------------------------


def test_a_hook_method_without_hookimpl_is_refused_with_the_plugin_name():
    unmarked = type(
        "Unmarked", (Plugin,), {"name": "unmarked", "__doc__": "x", "hookmix_on_log": lambda self, metrics: None}
    )
    info = Registry({"unmarked": unmarked}).info("unmarked")
    assert info.error == (
        "method hookmix_on_log is named like a hook but lacks @hookimpl, so it would never run; "
        "decorate it with @engine.hookimpl"
    )
    with pytest.raises(BadInput, match=r"plugin 'unmarked' \(<local> 0\) is broken: method hookmix_on_log"):
        train([*TOY, unmarked], steps=1)


def test_a_misspelled_hook_gets_a_close_match():
    typo = type(
        "Typo", (Plugin,), {"name": "typo", "__doc__": "x", "hookmix_aftr_optimizer_step": hookimpl(lambda self: None)}
    )
    assert Registry({"typo": typo}).info("typo").error == (
        "method hookmix_aftr_optimizer_step is not a hook; did you mean hookmix_after_optimizer_step?"
    )


# --- 4. ordering by capability, and two constraints on the same parameters ----------------------


class _Cap(Plugin):
    """A third-party weight constraint: scales the first layer's weight."""

    provides = (WeightConstraint,)

    def constrained_parameters(self, model):
        return ["0.0.weight"]

    @hookimpl
    def hookmix_after_optimizer_step(self, model, state):
        model[0][0].weight.mul_(0.999)


class CapA(_Cap):
    name = "cap_a"


class CapB(_Cap):
    name = "cap_b"


class Averager(Plugin):
    """Must see constrained weights: runs after every WeightConstraint, whoever provides it."""

    name = "averager"
    after = (WeightConstraint,)


def test_before_after_accept_capabilities():
    plugins = {"averager": Averager(), "cap_a": CapA(), "toy_model": TOY_PLUGINS["toy_model"]()}
    assert order_plugins(plugins) == ["cap_a", "averager", "toy_model"]


def test_two_constraints_on_the_same_parameters_warn_in_the_plan():
    recipe, registry = make_recipe([*TOY, CapA, CapB], steps=1)
    stream = io.StringIO()
    Trainer(recipe, registry, stream=stream).run()
    assert (
        "warning: weight constraints 'cap_a' and 'cap_b' both constrain 1 parameters (e.g. 0.0.weight); "
        "cap_b runs after cap_a and can void cap_a's guarantee"
    ) in stream.getvalue()


# --- 5. typed capabilities -----------------------------------------------------------------------


@runtime_checkable
class Temperature(Protocol):
    """Something that knows a temperature."""

    def temperature(self) -> float: ...


class Thermostat(Plugin):
    """Provides Temperature."""

    name = "thermostat"
    provides = (Temperature,)

    def temperature(self) -> float:
        return 2.5


class Reader(Plugin):
    """Requires Temperature and reads it through state.provider, typed."""

    name = "reader"
    requires = (Temperature,)
    seen: list = []

    @hookimpl
    def hookmix_configure(self, state):
        Reader.seen.append(state.provider(Temperature).temperature())


def test_provider_returns_the_typed_provider_and_requirements_name_the_protocol():
    Reader.seen.clear()
    train([*TOY, Thermostat, Reader], steps=1)
    assert Reader.seen == [2.5]
    with pytest.raises(BadInput, match="plugin 'reader' requires 'Temperature', which no enabled plugin provides"):
        train([*TOY, Reader], steps=1)


def test_providing_a_protocol_without_its_methods_breaks_the_plugin():
    liar = type("Liar", (Plugin,), {"name": "liar", "__doc__": "x", "provides": (Temperature,)})
    assert Registry({"liar": liar}).info("liar").error == (
        "provides Temperature but lacks temperature; implement it or remove it from provides"
    )


def test_every_declared_capability_is_documented():
    from engine.plugin import capability_name

    text = open(os.path.join(ROOT, "docs", "capabilities.md"), encoding="utf-8").read()
    documented = set(re.findall(r"^### `([^`]+)`", text, flags=re.M))
    registry = Registry()
    names = set(registry.names())
    declared = set()
    for info in registry.ok():
        for label in ("provides", "requires", "conflicts", "before", "after"):
            declared |= {capability_name(c) for c in getattr(info.cls, label)} - names
    missing = sorted(declared - documented)
    assert not missing, f"capabilities declared but not documented in docs/capabilities.md: {missing}"
    assert not sorted(documented - declared), "docs/capabilities.md documents capabilities nothing declares"


# --- 6. API versioning ----------------------------------------------------------------------------


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"hookmix 0.2.0 (plugin API {API_VERSION})\n"


@pytest.mark.parametrize(
    "api, reason",
    [
        (">=2.0", "supports plugin API '>=2.0', this engine implements 1.1; upgrade the plugin (or hookmix)"),
        ("version one", "api = 'version one' is not a version specifier"),
    ],
)
def test_a_plugin_for_another_api_is_broken(api, reason):
    future = type("Future", (Plugin,), {"name": "future", "__doc__": "x", "api": api})
    assert Registry({"future": future}).info("future").error.startswith(reason)


def test_resume_prints_what_changed(tmp_path):
    out = str(tmp_path / "run")
    train(TOY, steps=4, out=out, stop_at=2)
    stream = io.StringIO()
    recipe, registry = make_recipe(TOY, {"toy_sgd": {"lr": 0.05}}, steps=4, out=out)
    Trainer(recipe, registry, resume=True, stream=stream).run()
    assert "resume: plugins.toy_sgd.lr: 0.1 when checkpointed, 0.05 now" in stream.getvalue()


# --- 7. reference docs and describe run ----------------------------------------------------------


def test_describe_run_lists_every_run_field(capsys):
    import attrs

    from engine.config.recipe import RunConfig

    assert main(["describe", "run"]) == 0
    out = capsys.readouterr().out
    for f in attrs.fields(RunConfig):
        assert re.search(rf"^    {f.name}: ", out, flags=re.M), f"run.{f.name} missing from `hookmix describe run`"


def test_authoring_reference_covers_the_contract():
    text = open(os.path.join(ROOT, "docs", "authoring.md"), encoding="utf-8").read()
    import engine.testing as kit

    for name in ("train", "Result", "TOY", "assert_resumes_exactly", "make_recipe"):
        assert name in kit.__dict__ and f"`{name}" in text, f"test kit API {name} undocumented"
    for name in (
        "state.log",
        "field(",
        "validator=",
        "state.provider",
        "state.forward",
        "open_run",
        "`hookmix describe run`",
        "`hookmix recipes --show",
    ):
        assert name in text, f"docs/authoring.md does not cover {name}"
    # every data-info key a shipped plugin reads is in the data-plugin contract
    keys = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "plugins")):
        for file in files:
            if file.endswith(".py"):
                source = open(os.path.join(folder, file), encoding="utf-8").read()
                keys |= set(re.findall(r"data_info\(\s*\"(\w+)\"", source))
    assert keys, "no data_info reads found"
    undocumented = sorted(k for k in keys if f"`{k}`" not in text)
    assert not undocumented, f"data info keys read by shipped plugins but not in docs/authoring.md: {undocumented}"


# --- 8. new-plugin -----------------------------------------------------------------------------


def test_new_plugin_installs_and_passes_its_own_tests(tmp_path):
    pkg = tmp_path / "pkg"
    assert main(["new-plugin", "zloss", "--dir", str(pkg)]) == 0
    site = tmp_path / "site"
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
            str(site),
            str(pkg),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=pkg,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "recipes"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert re.search(r"^zloss-mnist1d +hookmix-zloss", proc.stdout, flags=re.M)


@pytest.mark.parametrize("name", ["Z-Loss", "class", ""])
def test_new_plugin_refuses_bad_names(name, capsys, one_error_line, tmp_path):
    assert main(["new-plugin", name, "--dir", str(tmp_path / "x")]) == 2
    assert "must be a lowercase Python identifier" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_new_plugin_never_overwrites(capsys, one_error_line, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    assert main(["new-plugin", "zloss", "--dir", str(tmp_path / "x")]) == 2
    assert "already exists" in one_error_line(capsys.readouterr().err)
    assert os.listdir(tmp_path / "x") == ["keep.txt"]


# --- 10. one way to open a run ---------------------------------------------------------------------


def test_open_run_reads_recipe_step_weights_and_rebuilds_the_model(tmp_path):
    out = str(tmp_path / "run")
    result = train(TOY, steps=3, out=out)
    run = open_run(out)
    assert run.step == 3 and run.plugins == TOY
    for key, value in result.model.state_dict().items():
        assert torch.equal(run.weights("model")[key], value)
    with pytest.raises(BadInput, match="holds no 'ema' weights"):
        run.weights("ema")
    built = run.build(Registry(TOY_PLUGINS), torch.device("cpu"))
    assert (built.data_plugin, built.model_plugin) == ("toy_data", "toy_model")
    for key, value in result.model.state_dict().items():
        assert torch.equal(built.model.state_dict()[key], value)
    rng = torch.get_rng_state()
    run.build(Registry(TOY_PLUGINS), torch.device("cpu"))
    assert torch.equal(rng, torch.get_rng_state())  # the caller's RNG does not move
    assert open_run(f"{out}/checkpoints/step-00000003.pt").step == 3
    with pytest.raises(BadInput, match="holds no recipe.toml"):
        open_run(str(tmp_path))


# --- 11. no back doors; profiling ----------------------------------------------------------------


def _public_names() -> dict[str, set[str] | None]:
    """The public modules a plugin may import, and the names each offers (None: every name)."""
    import engine
    import engine.testing

    return {
        "engine": {*engine.__all__, "testing"},
        "engine.testing": set(engine.testing.__all__),
        "engine.validators": None,
    }


def _private_uses(path: str, public: dict[str, set[str] | None]) -> list[str]:
    """Each use of the engine in a Python file outside its public surface: an import of another engine module
    or of a name the public module does not export, ``engine.X`` of such a name, ``state._x``, ``._manager``."""
    import ast

    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, a.name) for a in node.names if a.name.split(".")[0] == "engine" and a.name not in public]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "engine":
            names = public.get(node.module, set())
            if node.module not in public:
                found.append((node, f"from {node.module} import ..."))
            elif names is not None:
                found += [(node, f"from {node.module} import {a.name}") for a in node.names if a.name not in names]
        elif isinstance(node, ast.Attribute):
            base = node.value
            if isinstance(base, ast.Name) and base.id == "engine" and node.attr not in public["engine"]:
                found.append((node, f"engine.{node.attr}"))
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            of_state = (isinstance(base, ast.Name) and base.id == "state") or (
                isinstance(base, ast.Attribute) and base.attr == "state"
            )
            if private and (of_state or node.attr == "_manager"):
                found.append((node, f"state.{node.attr}" if of_state else f".{node.attr}"))
    return [f"{os.path.relpath(path, ROOT)}:{node.lineno}: {what}" for node, what in found]


def test_plugins_use_only_the_public_surface():
    """plugins/ and contrib/ import only ``engine`` (its ``__all__``), ``engine.validators`` and ``engine.testing``
    (its ``__all__``), and touch no private member of ``state``: the surface docs/authoring.md lists."""
    public = _public_names()
    offenders = []
    for top in ("plugins", "contrib"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            offenders += [u for f in files if f.endswith(".py") for u in _private_uses(os.path.join(folder, f), public)]
    assert not offenders, "plugins use engine internals (make it public in engine/__init__.py, or stop):\n" + (
        "\n".join(offenders)
    )


def test_the_surface_check_sees_every_kind_of_back_door(tmp_path):
    path = tmp_path / "plugin.py"
    path.write_text(
        "import engine.loop\nfrom engine.manager import Manager\nfrom engine import Plugin, build_state\n"
        "from engine.testing import TOY, _tree_equal\nfrom engine.validators import anything\nimport engine\n"
        "engine.Trainer, engine.dispatch\nstate._train_log, self.state._group, state.log, x._manager\n"
    )
    uses = {u.split(": ", 1)[1] for u in _private_uses(str(path), _public_names())}
    assert uses == {
        "engine.loop",
        "from engine.manager import ...",
        "from engine import build_state",
        "from engine.testing import _tree_equal",
        "engine.dispatch",
        "state._train_log",
        "state._group",
        "._manager",
    }


def test_every_public_name_exists_and_authoring_md_lists_exactly_them():
    import engine

    for name in engine.__all__:
        assert getattr(engine, name) is not None, name
    text = open(os.path.join(ROOT, "docs", "authoring.md"), encoding="utf-8").read()
    section = text.split("## The public surface", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `engine\.(\w+)`", section, flags=re.M))
    assert listed == set(engine.__all__), (
        f"docs/authoring.md lists {sorted(listed - set(engine.__all__))} that engine does not export, "
        f"and misses {sorted(set(engine.__all__) - listed)}"
    )


def test_state_forward_is_the_runs_forward():
    result = train(TOY, steps=1)
    batch = next(iter(result.state.data.val_batches()))
    with torch.no_grad():
        assert torch.equal(result.state.forward(result.model, batch)["logits"], result.model(batch["input"]))


def test_hookmix_profile_prints_a_per_hook_table(monkeypatch, capsys):
    monkeypatch.setenv("HOOKMIX_PROFILE", "1")
    train(TOY, steps=2)
    err = capsys.readouterr().err
    assert "hookmix profile (HOOKMIX_PROFILE=1)" in err
    assert re.search(r"hookmix_loss_terms +toy_ce +2 ", err)


# --- 13. small files, no paths outside the repository ---------------------------------------------


def test_no_engine_or_plugin_file_over_500_lines():
    long = []
    for top in ("engine", "plugins"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            long += [
                f"{os.path.relpath(os.path.join(folder, f), ROOT)}: {n}"
                for f in files
                if f.endswith(".py") and (n := sum(1 for _ in open(os.path.join(folder, f), encoding="utf-8"))) > 500
            ]
    assert not long, long


def test_no_project_file_refers_outside_the_repository():
    shared = "shared"  # spelled apart so this file does not match itself
    pattern = re.compile(rf"\.\./{shared}|{shared}/specs|{shared}/data")
    offenders = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [
            d
            for d in dirs
            if d not in (".git", ".venv", "runs", "__pycache__", ".pytest_cache") and not d.endswith(".egg-info")
        ]
        for file in files:
            if file.endswith((".py", ".md", ".toml", ".txt", ".sh")) and file != "tinyshakespeare.txt":
                path = os.path.join(folder, file)
                text = open(path, encoding="utf-8", errors="replace").read()
                if pattern.search(text):
                    offenders.append(os.path.relpath(path, ROOT))
    assert not offenders, offenders
