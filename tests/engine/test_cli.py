"""The command line: describe, recipes, plugins, and bad arguments (exit 2, one line)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from engine.cli.main import main


def test_describe_shows_fields_with_types_defaults_and_help(capsys):
    assert main(["describe", "adamw"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("adamw  (hookmix 0.2.0; plugin API >=1.0,<2)\n")
    assert "  hooks: hookmix_lr_scheduler, hookmix_optimizer, hookmix_param_groups\n" in out
    assert "  config [plugins.adamw]:\n" in out
    assert "    lr: float = 0.001  peak learning rate [a number in (0, 1e+06]]\n" in out  # the validator's rule
    assert "    warmup_steps: int = 0  linear warm-up steps [an integer in 0..2**62]\n" in out
    assert "    decay_1d: bool = False  also decay 1-D parameters (biases, norm gains)\n" in out
    assert "    schedule: 'cosine' | 'linear' | 'constant' = 'cosine'  learning-rate decay after warm-up\n" in out
    assert re.search(
        r"\n    betas: list\S* = \[0\.9, 0\.95\]  Adam betas \(beta1, beta2\) \[a list of 2 values, each a number "
        r"in \[0, 1\)\]\n",
        out,
    )


def test_recipes_lists_the_shipped_recipes(capsys):
    assert main(["recipes"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    for name in ("shakespeare-gpt", "mnist1d-mlp", "mnist1d-cnn"):
        assert rows.get(name) == "hookmix", rows


def test_plugins_text_lists_status(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^adamw +hookmix 0\.2\.0  \[ok\]$", out, flags=re.M)
    assert re.search(r"^ +hooks: lr_scheduler, optimizer, param_groups$", out, flags=re.M)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "shakespeare-gpt", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["describe"], "the following arguments are required: name"),
        (["describe", "adamv"], "unknown plugin 'adamv'; did you mean 'adamw'?"),
        (["train"], "train needs a RECIPE"),
        (["train", "no/such/recipe.toml"], "recipe file no/such/recipe.toml not found"),
        (["train", "--resume", "/nonexistent/hookmix-run"], "/nonexistent/hookmix-run holds no recipe.toml"),
        (["bench", "nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, expected, capsys, one_error_line):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert expected in one_error_line(captured.err)
    assert captured.out == ""


def test_no_verb_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: hookmix" in capsys.readouterr().out


def test_console_script_maps_bad_input_to_exit_2(tmp_path):
    hookmix = os.path.join(os.path.dirname(sys.executable), "hookmix")
    proc = subprocess.run([hookmix, "describe", "adamv"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "hookmix: error: unknown plugin 'adamv'; did you mean 'adamw'? (see `hookmix plugins`)\n"
    assert proc.stdout == ""


COMMANDS_MODULE = """
    from engine import Command, Plugin

    def _add(parser):
        parser.add_argument("who")

    def _run(args):
        print(f"hello {args.who}")
        return 3

    class Greeter(Plugin):
        \"\"\"Adds `hookmix hello WHO`.\"\"\"
        name = "greeter"
        commands = {"hello": Command(help="greet", add_arguments=_add, run=_run)}

    class Greeter2(Greeter):
        \"\"\"Claims `hello` too, with a command of its own.\"\"\"
        name = "greeter2"
        commands = {"hello": Command(help="greet again", add_arguments=_add, run=_run)}

    class Heir(Greeter):
        \"\"\"Inherits Greeter's commands (the same command: no conflict).\"\"\"
        name = "heir"

    class Crashy(Plugin):
        \"\"\"Declares commands that are not Commands.\"\"\"
        name = "crashy"
        commands = {"crash": print}

    def _add_broken(parser):
        from hookmix_greeter_missing import add_arguments  # not written yet

    class CrashyArgs(Plugin):
        \"\"\"Its command cannot build its arguments.\"\"\"
        name = "crashy_args"
        commands = {"crash": Command(help="x", add_arguments=_add_broken, run=_run)}
"""


def test_plugin_commands_run_and_a_failing_provider_breaks_no_other_verb(install_dist, capsys, one_error_line):
    install_dist(
        "hookmix-greeter",
        {
            "greeter": "hookmix_greeter:Greeter",
            "crashy": "hookmix_greeter:Crashy",
            "crashy_args": "hookmix_greeter:CrashyArgs",
            "heir": "hookmix_greeter:Heir",
        },
        {"hookmix_greeter": COMMANDS_MODULE},
    )
    assert main(["hello", "world"]) == 3  # inherited by heir: listed once, no conflict
    assert capsys.readouterr().out == "hello world\n"
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    warnings, errors = [l for l in err if "warning" in l], [l for l in err if "warning" not in l]
    # the command that cannot build its arguments is named (not silently dropped)
    assert any("'crashy_args'" in w for w in warnings)
    assert "invalid choice: 'frobnicate'" in one_error_line("\n".join(errors))
    # a wrong commands declaration makes that plugin broken, with the reason
    assert main(["plugins"]) == 0
    assert re.search(r"^crashy .*BROKEN: commands must be a dict", capsys.readouterr().out, flags=re.M)


def test_help_lists_plugin_commands(install_dist, capsys):
    install_dist("hookmix-greeter", {"greeter": "hookmix_greeter:Greeter"}, {"hookmix_greeter": COMMANDS_MODULE})
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert re.search(r"hello +greet \(plugin command\)", out)


def test_duplicate_plugin_command_names_both_plugins(install_dist, capsys, one_error_line):
    install_dist(
        "hookmix-greeter",
        {"greeter": "hookmix_greeter:Greeter", "greeter2": "hookmix_greeter:Greeter2"},
        {"hookmix_greeter": COMMANDS_MODULE},
    )
    assert main(["hello", "world"]) == 2
    assert "command 'hello' provided by both greeter and greeter2" in one_error_line(capsys.readouterr().err)
