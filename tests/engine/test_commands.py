"""Sub-commands from the ``hookmix.commands`` entry-point group, beside the plugin API 1.0 ``commands`` attribute."""

from __future__ import annotations

import re
import sys
import textwrap
from importlib import metadata

import pytest

from engine.cli.main import COMMANDS_GROUP, main

COMMANDS_MODULE = """
from engine import Command

def _add(parser):
    parser.add_argument("who")

def _run(args):
    print(f"hi {args.who}")
    return 4

def _add_broken(parser):
    from hookmix_cmds_missing import add_arguments  # not written yet

hi = Command(help="say hi", add_arguments=_add, run=_run)
lazy_hi = Command.lazy("say hi, imported when used", "hookmix_cmds:_add", "hookmix_cmds:_run")
no_args = Command(help="x", add_arguments=_add_broken, run=_run)
not_a_command = print
"""


@pytest.fixture
def install_commands(tmp_path, monkeypatch):
    """Install a fake distribution whose ``hookmix.commands`` group holds the given verbs; forgotten afterwards."""
    modules: list[str] = []

    def install(dist: str, commands: dict[str, str], sources: dict[str, str]) -> None:
        root = tmp_path / f"site-{dist}"
        info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        lines = "".join(f"{verb} = {target}\n" for verb, target in commands.items())
        (info / "entry_points.txt").write_text(f"[{COMMANDS_GROUP}]\n{lines}")
        for name, source in sources.items():
            (root / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(root))  # also invalidates importlib's metadata caches
        modules.extend(sources)

    yield install
    for name in modules:
        sys.modules.pop(name, None)


def test_a_command_of_the_group_is_listed_in_help_and_runs(install_commands, capsys):
    install_commands(
        "hookmix-cmds",
        {"hi": "hookmix_cmds:hi", "lazy-hi": "hookmix_cmds:lazy_hi"},
        {"hookmix_cmds": COMMANDS_MODULE},
    )
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert re.search(r"^ +hi +say hi", out, flags=re.M)
    assert re.search(r"^ +lazy-hi +say hi, imported when used", out, flags=re.M)
    assert main(["hi", "there"]) == 4
    assert main(["lazy-hi", "again"]) == 4
    assert capsys.readouterr().out == "hi there\nhi again\n"


def test_a_broken_command_is_skipped_with_a_warning_and_the_others_run(install_commands, capsys):
    install_commands(
        "hookmix-cmds",
        {
            "hi": "hookmix_cmds:hi",
            "gone": "hookmix_cmds_gone:hi",  # its module does not exist
            "no-args": "hookmix_cmds:no_args",  # cannot build its arguments
            "printer": "hookmix_cmds:not_a_command",
            "train": "hookmix_cmds:hi",  # would shadow the built-in verb
        },
        {"hookmix_cmds": COMMANDS_MODULE},
    )
    assert main(["hi", "you"]) == 4
    captured = capsys.readouterr()
    assert captured.out == "hi you\n"
    warnings = captured.err.strip().splitlines()
    for verb in ("gone", "no-args", "printer", "train"):
        assert any(
            w.startswith(f"hookmix: warning: command {verb!r} of distribution hookmix-cmds is broken") for w in warnings
        ), (verb, warnings)
    assert any("not an engine.Command" in w for w in warnings)
    assert main(["no-args", "x"]) == 2  # skipped: an unknown verb, one line
    assert "invalid choice: 'no-args'" in capsys.readouterr().err


def test_two_distributions_giving_one_verb_is_a_one_line_error(install_commands, capsys, one_error_line):
    install_commands("hookmix-cmds", {"hi": "hookmix_cmds:hi"}, {"hookmix_cmds": COMMANDS_MODULE})
    install_commands("hookmix-cmds-too", {"hi": "hookmix_cmds:hi"}, {})
    assert main(["hi", "x"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.search(r"command 'hi' provided by both distribution hookmix-cmds(-too)? and distribution", line), line


def test_a_group_command_and_a_plugin_command_with_one_verb_conflict(install_commands, install_dist, capsys):
    install_commands("hookmix-cmds", {"hello": "hookmix_cmds:hi"}, {"hookmix_cmds": COMMANDS_MODULE})
    plugin = """
    from engine import Command, Plugin

    class Greeter(Plugin):
        name = "greeter"
        commands = {"hello": Command(help="greet", add_arguments=lambda p: None, run=lambda a: 0)}
    """
    install_dist("hookmix-greeter", {"greeter": "hookmix_greeter:Greeter"}, {"hookmix_greeter": plugin})
    assert main(["hello", "x"]) == 2
    assert "command 'hello' provided by both distribution hookmix-cmds and greeter" in capsys.readouterr().err


def test_first_party_commands_come_from_the_group_and_no_plugin_carries_one():
    from engine.config.registry import Registry

    ours = {ep.name for ep in metadata.entry_points(group=COMMANDS_GROUP) if ep.value.startswith("plugins.")}
    assert ours == {
        "distill-mnist1d",
        "lipschitz-check",
        "lipschitz-sweep",
        "lipschitz-bench",
        "countdown-compare",
        "countdown-variants",
        "bench-rollouts",
        "bench-rl",
        "countdown-gkd",
    }
    first_party = [i for i in Registry().ok() if i.target.startswith("plugins.")]
    assert first_party and not [i.name for i in first_party if i.cls.commands]
