"""The ``hookmix`` command line. Exit codes: 0 success, 1 training failure, 2 bad input."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import attrs

from engine.errors import BadInput, HookmixError, Interrupted, PluginConflict

if TYPE_CHECKING:
    from engine.config.registry import Registry

BUILTIN = ("plugins", "describe", "recipes", "train", "bench", "new-plugin")
#: The entry-point group of ``hookmix`` sub-commands: ``verb = "module:attribute"``, an :class:`engine.Command`.
COMMANDS_GROUP = "hookmix.commands"
#: The engine's own benchmarks. ``hookmix bench NAME`` for any other NAME runs the command ``bench-NAME`` of that
#: group, if one is registered: a benchmark that drives plugins lives with them, and the engine never imports them.
BENCHES = ("overhead", "ddp", "fsdp")


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # `--npro 2` is a typo to report, not --nproc
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit 2, like every other bad input
        raise BadInput(f"{message}; see `{self.prog} --help`")


def _count(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _count0(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def _build_parser(commands: dict) -> argparse.ArgumentParser:
    from engine import __version__
    from engine.plugin import API_VERSION

    parser = _Parser(prog="hookmix", description="Train PyTorch models with methods as plugins.")
    parser.add_argument("--version", action="version", version=f"hookmix {__version__} (plugin API {API_VERSION})")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    p = sub.add_parser("plugins", help="list every discoverable plugin")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("describe", help="show a plugin's config fields and declarations (or `describe run`)")
    p.add_argument("name", help="a plugin name, or `run` for the [run] table")
    p = sub.add_parser("recipes", help="list recipes shipped by installed plugins")
    p.add_argument("--show", metavar="NAME", help="print one shipped recipe's TOML")
    p = sub.add_parser("new-plugin", help="write a ready plugin package (pyproject, plugin, recipe, tests)")
    p.add_argument("name", help="plugin name (a Python identifier, e.g. zloss)")
    p.add_argument("--dir", help="where to create the package (default: ./hookmix-NAME)")
    p.add_argument(
        "--plugins", metavar="A,B", help="several plugins in one distribution NAME, each in its own submodule"
    )
    p = sub.add_parser("train", help="train a recipe (TOML path/URL or shipped recipe name)")
    p.add_argument("recipe", nargs="?", help="recipe file, URL or shipped name")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. run.steps=50 plugins.adamw.lr=3e-4")
    p.add_argument("--out", help="run directory URL (overrides run.out)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR bit-exactly")
    p.add_argument("--quiet", action="store_true", help="no plan or progress output")
    from engine.distributed.launch import add_launch_arguments

    add_launch_arguments(p)
    plugin_benches = {v.removeprefix("bench-"): c for v, c in commands.items() if v.startswith("bench-")}
    p = sub.add_parser(
        "bench",
        help="benchmarks: overhead, ddp (weak scaling of 2 ranks), fsdp (bytes per rank)"
        + "".join(f", {name}" for name in plugin_benches),
    )
    p.add_argument(
        "what",
        choices=[*BENCHES, *plugin_benches],
        help="the engine's: overhead, ddp, fsdp; a plugin's NAME runs its command `bench-NAME`, its options after "
        "NAME (`hookmix bench NAME --help`)" + "".join(f"; {name}: {c.help}" for name, c in plugin_benches.items()),
    )
    p.add_argument(
        "--repeats",
        type=_count,
        default=None,
        help="ddp: interleaved repeats of 1-rank and 2-rank steps (default 5); overhead: fresh "
        "contestants this many times, medians over repeats (default 1)",
    )
    p.add_argument("--steps", type=_count, default=30, help="timed steps per loop")
    p.add_argument("--noop", type=_count0, default=8, help="extra no-op plugins in the second comparison")
    p.add_argument(
        "--workload",
        choices=["gpt", "mlp", "tiny", "both"],
        default="both",
        help="both: gpt and mlp; tiny: a 40-8-10 MLP on 4 samples (the per-step cost in µs)",
    )
    p.add_argument("--against", choices=["lightning"], help="add Lightning Fabric and Trainer columns")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: this thread's CPU time (1 thread)")
    p.add_argument(
        "--order",
        choices=["shuffle", "rotate"],
        default="shuffle",
        help="overhead: the contestants' order in each round (rotate: the earlier method, biased)",
    )
    p.add_argument(
        "--interleave",
        choices=["step", "block"],
        default="step",
        help="overhead: each contestant's turn in a round, one step or 10 consecutive steps (block)",
    )
    for verb, command in commands.items():
        prog = {"prog": f"hookmix bench {verb.removeprefix('bench-')}"} if verb.startswith("bench-") else {}
        p = sub.add_parser(verb, help=f"{command.help} (plugin command)", **prog)
        command.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from engine.failures import interrupts

    with interrupts.start_up():  # a signal is recorded (never lost), and acted on at the next safe point
        return _main(list(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    from engine.distributed.launch import refused_before, say
    from engine.failures import interrupts

    if refused_before():  # a restarted worker of a launch whose input was refused: refuse again, silently
        return 2
    try:
        commands = {}
        verb = next((a for a in argv if not a.startswith("-")), None)
        if (verb is None and "--version" not in argv) or (verb is not None and verb not in BUILTIN):
            # plugin commands: for an unknown verb, and for `hookmix` / `hookmix --help` to list them
            from engine.config.registry import Registry

            commands = collect_commands(Registry())
        elif verb == "bench":  # the plugins' benchmarks (`bench-NAME` commands), for `bench NAME` and `bench --help`
            commands = collect_commands(None, prefix="bench-")
            argv = _plugin_bench(argv, commands)
        args, extra = _build_parser(commands).parse_known_args(argv)
        if args.verb == "train":  # overrides may follow options: train R --out D run.steps=5
            args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
            extra = [e for e in extra if e not in args.overrides]
        if extra:
            raise BadInput(f"unrecognized arguments: {' '.join(extra)}; see `hookmix --help`")
        if args.verb is None:
            _build_parser(commands).print_help()
            return 2
        interrupts.check()
        args.argv = argv  # `train --nproc N` re-launches itself through torch.distributed.run
        if args.verb in commands:
            code = int(commands[args.verb].run(args) or 0)
        else:
            code = int(globals()[f"cmd_{args.verb.replace('-', '_')}"](args) or 0)
        interrupts.check(finished=True)  # a signal that came after the work: say so, and exit with its code
        return code
    except HookmixError as exc:
        from engine.distributed.env import rank_prefix

        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        say(f"hookmix: error: {rank_prefix()}{text}", exc.exit_code)
        return exc.exit_code
    except Interrupted as exc:  # a signal at start-up, or during training (after its checkpoint)
        say(f"hookmix: {str(exc).splitlines()[0]}", exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:  # a SIGINT raised by a handler other than ours (a plugin's, a library's)
        say("hookmix: interrupted by SIGINT; stopped", 130)
        return 130
    except BrokenPipeError:  # `hookmix plugins | head`
        sys.stdout = None
        return 0
    except Exception as exc:
        from engine.distributed.launch import report_crash

        if "RANK" not in os.environ:
            raise
        return report_crash(exc)  # under torchrun: name the rank that failed


def cmd_plugins(args) -> int:
    from engine.config.registry import Registry

    rows = []
    for info in Registry().all():
        hooks = hooks_of(info.cls) if info.cls is not None else []
        rows.append(
            {
                "name": info.name,
                "distribution": info.dist,
                "version": info.version,
                "summary": info.cls.summary() if info.cls else "",
                "hooks": hooks,
                "status": "ok" if info.error is None else "broken",
                "error": info.error,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max([len(r["name"]) for r in rows] + [4])
    for r in rows:
        status = "ok" if r["error"] is None else f"BROKEN: {r['error']}"
        print(f"{r['name']:<{width}}  {r['distribution']} {r['version']}  [{status}]")
        if r["summary"]:
            print(f"{'':<{width}}  {r['summary']}")
        if r["hooks"]:
            print(f"{'':<{width}}  hooks: {', '.join(h.removeprefix('hookmix_') for h in r['hooks'])}")
    return 0


def hooks_of(cls) -> list[str]:
    from engine.plugin import Plugin

    return sorted(n for n in dir(cls) if n.startswith("hookmix_") and getattr(cls, n) is not getattr(Plugin, n, None))


def cmd_describe(args) -> int:
    from engine.config.recipe import RunConfig
    from engine.config.registry import Registry
    from engine.plugin import capability_name

    if args.name == "run":
        print("[run]  the run table of every recipe (engine/config/recipe.py RunConfig)")
        _describe_fields(RunConfig, "    ")
        return 0
    registry = Registry()
    info = registry.info(args.name)
    cls = registry.load(args.name)
    print(f"{info.name}  ({info.dist} {info.version}; plugin API {cls.api})")
    if "@" in args.name:  # NAME@LABEL: a second (third, ...) copy of a plugin, with its own table and state
        base, label = args.name.split("@", 1)
        print(f'  an instance of plugin {base!r} (label {label!r}): its own [plugins."{args.name}"] table,')
        print("  checkpoint state and metric names; see docs/authoring.md, 'Plugin instances'")
    print(f"  {cls.summary()}")
    for label in ("provides", "requires", "conflicts", "before", "after"):
        values = getattr(cls, label)
        if values:
            print(f"  {label}: {', '.join(map(capability_name, values))}")
    print(f"  hooks: {', '.join(hooks_of(cls)) or 'none'}")
    if cls.commands:
        print(f"  commands: {', '.join(cls.commands)}")
    if cls.recipes:
        print(f"  recipes: {cls.recipes}")
    config = cls.Config
    if config is None:
        print("  config: none")
        return 0
    print(f"  config [plugins.{info.name}]:")
    _describe_fields(config, "    ")
    return 0


def _describe_fields(cls, indent: str) -> None:
    attrs.resolve_types(cls)
    for f in attrs.fields(cls):
        from engine import validators
        from engine.config.recipe import _type_name

        ftype = _type_name(f.type)
        if attrs.has(f.type):
            print(f"{indent}{f.name} ({ftype}): {f.metadata.get('help', '')}")
            _describe_fields(f.type, indent + "  ")
            continue
        default = f.default.factory() if isinstance(f.default, attrs.Factory) else f.default
        rule = validators.describe(f.validator)  # e.g. "finite and > 0": the values the field accepts
        print(f"{indent}{f.name}: {ftype} = {default!r}  {f.metadata.get('help', '')}{f' [{rule}]' if rule else ''}")


def cmd_recipes(args) -> int:
    from engine.config.recipe import parse_toml, shipped_recipes
    from engine.config.registry import Registry, unknown_name_message

    shipped = shipped_recipes(Registry())
    if args.show:
        if args.show not in shipped:
            raise BadInput(unknown_name_message("recipe", args.show, sorted(shipped), "see `hookmix recipes`"))
        print(shipped[args.show][1], end="")
        return 0
    for name, (dist, text) in sorted(shipped.items()):
        raw = parse_toml(text, name)
        print(f"{name:<28} {dist:<12} {raw.get('description', '')}")
    return 0


def cmd_train(args) -> int:
    from engine.distributed import launch
    from engine.loop import Trainer
    from engine.rundir.claim import warn_if_ephemeral

    if args.resume and args.out:
        raise BadInput("--resume continues in RUN_DIR itself; drop --out (copy the directory to branch a run)")
    if not args.resume and args.recipe is None:
        raise BadInput("train needs a RECIPE (a .toml path or a name from `hookmix recipes`) or --resume RUN_DIR")
    if launch.wants_launch(args):
        return launch.launch(args)
    overrides = list(args.overrides)
    if args.resume:
        if args.recipe is not None:  # `train --resume DIR run.steps=20`: the first override lands in `recipe`
            overrides.insert(0, args.recipe)
        trainer = Trainer.from_recipe(None, *overrides, resume=args.resume, quiet=args.quiet)
    else:
        trainer = Trainer.from_recipe(args.recipe, *overrides, out=args.out, quiet=args.quiet)
    trainer.setup()
    warn_if_ephemeral(trainer.state.run_dir)
    summary = trainer.run()
    if not trainer.state.is_main:
        return 0
    shown = {
        k: round(v, 4)
        for k, v in summary["metrics"].items()
        if k in ("train/loss", "val/loss", "val/accuracy") or k.count("/") == 1 and not k.startswith("train/")
    }
    print(
        f"done: {summary['steps']} steps in {summary['wall_seconds']:.1f}s; "
        + ", ".join(f"{k} {v}" for k, v in shown.items())
        + f"; outputs in {trainer.state.run_dir.url()}"
    )
    return 0


def cmd_new_plugin(args) -> int:
    from engine.cli.scaffold import new_plugin

    plugins = [name.strip() for name in args.plugins.split(",")] if args.plugins else None
    path = new_plugin(args.name, args.dir, plugins)
    print(
        f"wrote {path}: cd there, `pip install -e .`, `python -m pytest`, then "
        f"`hookmix train {(plugins or [args.name])[0]}-mnist1d` (its shipped recipe)"
    )
    return 0


def _plugin_bench(argv: list[str], commands: dict) -> list[str]:
    """``bench NAME ...`` as ``bench-NAME ...`` when NAME is not the engine's and ``bench-NAME`` is a command."""
    i = argv.index("bench")
    name = argv[i + 1] if i + 1 < len(argv) else ""
    if name in BENCHES or f"bench-{name}" not in commands:
        return argv
    return [*argv[:i], f"bench-{name}", *argv[i + 2 :]]


def cmd_bench(args) -> int:
    from engine.bench.overhead import overhead

    if args.what not in BENCHES:  # a plugin's benchmark, with an option before its name: `bench --steps 3 rl`
        raise BadInput(f"put the options of bench {args.what} after its name: hookmix bench {args.what} [OPTIONS]")
    if args.what == "ddp":
        from engine.bench.ddp import ddp_bench

        if args.workload == "tiny":
            raise BadInput("bench ddp has the workloads gpt and mlp; use --workload gpt, mlp or both")
        return ddp_bench(steps=args.steps, repeats=args.repeats or 5, workload=args.workload)
    if args.what == "fsdp":
        from engine.bench.fsdp import fsdp_bench

        return fsdp_bench()

    return overhead(
        steps=args.steps,
        noop=args.noop,
        workload=args.workload,
        against=args.against,
        clock=args.clock,
        repeats=args.repeats or 1,
        order=args.order,
        interleave=args.interleave,
    )


def collect_commands(registry: Registry | None, prefix: str = "") -> dict[str, Any]:
    """Sub-commands for the CLI: the ``hookmix.commands`` entry points, then the plugins' ``commands`` attribute.

    ``registry=None``: the entry points only; ``prefix``: only the verbs that start with it (``hookmix bench``
    loads just the ``bench-*`` entries).

    The entry-point group is where commands belong (``verb = "module:attribute"``, an :class:`engine.Command`);
    the attribute is plugin API 1.0 and still works. A command that fails to import, is not a ``Command``,
    shadows a built-in verb or cannot build its arguments is reported on stderr and skipped, so the other
    verbs keep working. A verb claimed twice is a :class:`PluginConflict` naming both claimants.
    """
    from importlib import metadata

    from engine.plugin import Command

    commands: dict[str, Any] = {}  # the usable ones
    owner: dict[str, tuple[str, Any]] = {}  # every claimed verb: (who claims it, the command), usable or not
    for ep in metadata.entry_points(group=COMMANDS_GROUP):
        if not ep.name.startswith(prefix):
            continue
        claimant = f"distribution {ep.dist.name if ep.dist else '?'}"
        if ep.name in owner:
            raise PluginConflict(
                f"command {ep.name!r} provided by both {owner[ep.name][0]} and {claimant}; uninstall one"
            )
        owner[ep.name] = (claimant, None)
        try:  # importing the command's module: any error there is that command's, not the CLI's
            command = ep.load()
        except Exception as exc:
            _skip_command(ep.name, claimant, f"{type(exc).__name__}: {_first_line(exc)}")
            continue
        if not isinstance(command, Command):
            _skip_command(ep.name, claimant, f"{ep.value} is a {type(command).__name__}, not an engine.Command")
        elif ep.name in BUILTIN:
            _skip_command(ep.name, claimant, "it has the name of a built-in command")
        elif _builds_arguments(ep.name, command, claimant):
            commands[ep.name] = command
    for info in registry.ok() if registry is not None else ():
        for verb, command in info.cls.commands.items():
            if verb in owner:
                if owner[verb][1] is command:  # inherited by a subclass: the same command, once
                    continue
                raise PluginConflict(
                    f"command {verb!r} provided by both {owner[verb][0]} and {info.name}; uninstall one"
                )
            owner[verb] = (info.name, command)
            if _builds_arguments(verb, command, f"plugin {info.name!r}"):
                commands[verb] = command
    return commands


def _builds_arguments(verb: str, command: Any, claimant: str) -> bool:
    """Whether the command can add its arguments to a parser; a verb that cannot is broken and skipped."""
    try:
        command.add_arguments(argparse.ArgumentParser(prog=f"hookmix {verb}"))
    except Exception as exc:
        _skip_command(verb, claimant, f"{type(exc).__name__}: {_first_line(exc)}")
        return False
    return True


def _skip_command(verb: str, claimant: str, reason: str) -> None:
    print(f"hookmix: warning: command {verb!r} of {claimant} is broken ({reason}); skipped", file=sys.stderr)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


if __name__ == "__main__":
    sys.exit(main())
