"""Bad recipes: unknown names and keys, wrong types; one line, exit 2, nothing written."""

from __future__ import annotations

import pytest

from engine import BadInput
from engine.cli.main import main
from engine.config.recipe import RunConfig, apply_overrides, read_recipe, resolve, structure_table
from engine.config.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def _resolve(registry: Registry, *overrides: str):
    name, raw = read_recipe("shakespeare-gpt", registry)
    return resolve(name, apply_overrides(raw, list(overrides)), registry)


# --- unknown plugin names ---------------------------------------------------------------------


def test_unknown_plugin_via_cli_is_one_line_exit_2_and_writes_nothing(capsys, one_error_line, tmp_path, tiny_gpt):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "shakespeare-gpt",
            *tiny_gpt,
            "run.plugins-=cross_entropy",
            "run.plugins+=cross_entropi",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert code == 2
    assert line == (
        "hookmix: error: unknown plugin 'cross_entropi'; did you mean 'cross_entropy'? (see `hookmix plugins`)"
    )
    assert captured.out == ""  # failed before the plan was printed
    assert not out.exists()


def test_unknown_plugin_table_is_caught_even_when_not_enabled(registry):
    with pytest.raises(BadInput, match=r"unknown plugin 'adamv'; did you mean 'adamw'\?"):
        _resolve(registry, "plugins.adamv.lr=0.1")


def test_unknown_recipe_name_suggests_the_shipped_one(registry):
    with pytest.raises(BadInput, match=r"unknown recipe 'shakespeare-gtp'; did you mean 'shakespeare-gpt'\?"):
        read_recipe("shakespeare-gtp", registry)


# --- unknown keys -----------------------------------------------------------------------------


def test_unknown_plugin_key_names_the_key_and_the_valid_keys(registry):
    with pytest.raises(BadInput) as exc:
        _resolve(registry, "plugins.adamw.lrr=0.1")
    msg = str(exc.value)
    assert "plugins.adamw.lrr" in msg and "did you mean 'lr'?" in msg
    assert (
        "valid keys of plugins.adamw: lr, betas, eps, weight_decay, decay_1d, warmup_steps, schedule, min_lr_ratio"
    ) in msg


def test_unknown_run_key_without_close_match_lists_valid_keys(registry):
    with pytest.raises(BadInput) as exc:
        _resolve(registry, "run.zzzz=1")
    msg = str(exc.value)
    assert "unknown key run.zzzz (valid keys of run:" in msg
    assert "valid keys of run: plugins, steps, seed, device" in msg


def test_unknown_top_level_key(registry):
    with pytest.raises(BadInput, match=r"unknown top-level key 'plugin'; did you mean 'plugins'\?"):
        resolve("x", {"run": {"plugins": ["adamw"]}, "plugin": {}}, registry)


def test_unknown_key_via_cli_exit_2(capsys, one_error_line, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "shakespeare-gpt", "plugins.gpt.n_layers=1", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "plugins.gpt.n_layers" in line and "did you mean 'n_layer'?" in line
    assert not out.exists()


# --- wrong types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, expected",
    [
        ('plugins.adamw.lr="abc"', "plugins.adamw.lr: expected float, got str 'abc'"),
        ("plugins.adamw.lr=abc", "plugins.adamw.lr: expected float, got str 'abc'"),  # bare word: a string
        ("plugins.gpt.n_layer=3.5", "plugins.gpt.n_layer: expected int, got float 3.5"),
        ("run.steps=3.5", "run.steps: expected int, got float 3.5"),
        ("plugins.gpt.tie_weights=1", "plugins.gpt.tie_weights: expected bool, got int 1"),
        ("run.steps=true", "run.steps: expected int, got bool True"),
        ('plugins.adamw.betas=[0.9, "x"]', "plugins.adamw.betas: expected float, got str 'x'"),
        ("plugins.adamw.betas=0.9", "plugins.adamw.betas: expected a list, got float 0.9 (expected list[float])"),
        # a string where a list belongs must not become a list of characters
        ("run.plugins=gpt", "run.plugins: expected a list, got str 'gpt'"),
        ("plugins.tinyshakespeare=3", "plugins.tinyshakespeare must be a table"),
    ],
)
def test_wrong_type_is_bad_input_naming_the_key(registry, override, expected):
    with pytest.raises(BadInput) as exc:
        _resolve(registry, override)
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "table, expected",
    [
        ({"steps": 0}, r"run: steps=0 must be an integer in 1..2\*\*62; fix the value"),
        ({"grad_clip": -1.0}, r"run: grad_clip=-1.0 must be a number in \[0, 1e\+06\]; fix the value"),
        ({"precision": "fp16"}, "run: precision='fp16' must be one of fp32, bf16"),
    ],
)
def test_invalid_values_name_the_key(table, expected):
    with pytest.raises(BadInput, match=expected):
        structure_table(table, RunConfig, "run")


def test_ints_are_accepted_for_floats_and_values_are_kept(registry):
    recipe = _resolve(registry, "plugins.adamw.lr=1", "plugins.adamw.betas=[0, 0.5]", "run.steps=7")
    assert recipe.plugin_configs["adamw"].lr == 1.0 and type(recipe.plugin_configs["adamw"].lr) is float
    betas = recipe.plugin_configs["adamw"].betas  # (a beta of 1 is refused: torch needs < 1)
    assert betas == [0.0, 0.5] and type(betas[0]) is float
    assert recipe.run.steps == 7


@pytest.mark.parametrize(
    "override, expected",
    [
        ("run.steps+=3", "override 'run.steps+=3': += adds to or removes from a list, but run.steps is 1000"),
        ("run.steps", "override 'run.steps' is not KEY=VALUE"),
        ("steps=3", "top-level key must be run or plugins"),
        ("run..steps=3", "has an empty key part"),
    ],
)
def test_malformed_overrides_are_bad_input(registry, override, expected):
    with pytest.raises(BadInput, match=expected.replace("+", r"\+").replace(".", r"\.")):
        _resolve(registry, override)


def test_wrong_type_via_cli_exit_2(capsys, one_error_line, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "shakespeare-gpt", 'plugins.adamw.lr="abc"', "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == ("hookmix: error: plugins.adamw.lr: expected float, got str 'abc'; fix the value")
    assert not out.exists()
