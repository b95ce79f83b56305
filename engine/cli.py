"""The ``hookmix`` command line. Exit codes: 0 success, 1 training failure, 2 bad input."""

from __future__ import annotations

import argparse
import json
import sys

import attrs

from engine.errors import BadInput, HookmixError

BUILTIN = ("plugins", "describe", "recipes", "train", "bench")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other bad input
        raise BadInput(f"{message}; see `{self.prog} --help`")


def _build_parser(commands: dict) -> argparse.ArgumentParser:
    parser = _Parser(prog="hookmix", description="Train PyTorch models with methods as plugins.")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    p = sub.add_parser("plugins", help="list every discoverable plugin")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("describe", help="show a plugin's config fields and declarations")
    p.add_argument("name")
    sub.add_parser("recipes", help="list recipes shipped by installed plugins")
    p = sub.add_parser("train", help="train a recipe (TOML path/URL or shipped recipe name)")
    p.add_argument("recipe", nargs="?", help="recipe file, URL or shipped name")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. run.steps=50 plugins.adamw.lr=3e-4")
    p.add_argument("--out", help="run directory URL (overrides run.out)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR bit-exactly")
    p.add_argument("--quiet", action="store_true", help="no plan or progress output")
    p = sub.add_parser("bench", help="benchmarks: overhead")
    p.add_argument("what", choices=["overhead"])
    p.add_argument("--steps", type=int, default=30, help="timed steps per loop")
    p.add_argument("--noop", type=int, default=8, help="extra no-op plugins in the second comparison")
    p.add_argument("--workload", choices=["gpt", "mlp", "both"], default="both")
    p.add_argument("--against", choices=["lightning"], help="add Lightning Fabric and Trainer columns")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: this thread's CPU time (1 thread)")
    for verb, command in commands.items():
        p = sub.add_parser(verb, help=command.help)
        command.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        commands = {}
        verb = next((a for a in argv if not a.startswith("-")), None)
        if verb is not None and verb not in BUILTIN:
            from engine.manager import collect_commands
            from engine.registry import Registry
            commands = collect_commands(Registry())
        args, extra = _build_parser(commands).parse_known_args(argv)
        if args.verb == "train":  # overrides may follow options: train R --out D run.steps=5
            args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
            extra = [e for e in extra if e not in args.overrides]
        if extra:
            raise BadInput(f"unrecognized arguments: {' '.join(extra)}; see `hookmix --help`")
        if args.verb is None:
            _build_parser(commands).print_help()
            return 2
        if args.verb in commands:
            return int(commands[args.verb].run(args) or 0)
        return int(globals()[f"cmd_{args.verb}"](args) or 0)
    except HookmixError as exc:
        print(f"hookmix: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hookmix: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hookmix plugins | head`
        sys.stdout = None
        return 0


def cmd_plugins(args) -> int:
    from engine.registry import Registry

    rows = []
    for info in Registry().all():
        hooks = hooks_of(info.cls) if info.cls is not None else []
        rows.append({"name": info.name, "distribution": info.dist, "version": info.version,
                     "summary": info.cls.summary() if info.cls else "", "hooks": hooks,
                     "status": "ok" if info.error is None else "broken", "error": info.error})
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

    return sorted(n for n in dir(cls) if n.startswith("hookmix_")
                  and getattr(cls, n) is not getattr(Plugin, n, None))


def cmd_describe(args) -> int:
    from engine.registry import Registry

    registry = Registry()
    info = registry.info(args.name)
    cls = registry.load(args.name)
    print(f"{info.name}  ({info.dist} {info.version})")
    print(f"  {cls.summary()}")
    for label in ("provides", "requires", "conflicts", "before", "after"):
        values = getattr(cls, label)
        if values:
            print(f"  {label}: {', '.join(values)}")
    print(f"  hooks: {', '.join(hooks_of(cls)) or 'none'}")
    config = cls().hookmix_plugin_config()
    if config is None:
        print("  config: none")
        return 0
    print(f"  config [plugins.{info.name}]:")
    _describe_fields(config, "    ")
    return 0


def _describe_fields(cls, indent: str) -> None:
    attrs.resolve_types(cls)
    for f in attrs.fields(cls):
        from engine.recipe import _type_name

        ftype = _type_name(f.type)
        if attrs.has(f.type):
            print(f"{indent}{f.name} ({ftype}): {f.metadata.get('help', '')}")
            _describe_fields(f.type, indent + "  ")
            continue
        default = f.default.factory() if isinstance(f.default, attrs.Factory) else f.default
        print(f"{indent}{f.name}: {ftype} = {default!r}  {f.metadata.get('help', '')}")


def cmd_recipes(args) -> int:
    from engine.recipe import parse_toml, shipped_recipes
    from engine.registry import Registry

    for name, (dist, text) in sorted(shipped_recipes(Registry()).items()):
        raw = parse_toml(text, name)
        print(f"{name:<28} {dist:<12} {raw.get('description', '')}")
    return 0


def cmd_train(args) -> int:
    from engine.loop import Trainer
    from engine.outputs import RunDir
    from engine.recipe import apply_overrides, parse_toml, read_recipe, resolve
    from engine.registry import Registry

    registry = Registry()
    overrides = list(args.overrides)
    if args.resume:
        if args.out:
            raise BadInput("--resume continues in RUN_DIR itself; drop --out (copy the directory to branch a run)")
        if args.recipe is not None:  # `train --resume DIR run.steps=20`: the first override lands in `recipe`
            overrides.insert(0, args.recipe)
        run_dir = RunDir(args.resume)
        if not run_dir.exists("recipe.toml"):
            raise BadInput(f"{args.resume} holds no recipe.toml; pass the directory of a hookmix run")
        raw = parse_toml(run_dir.read_text("recipe.toml"), run_dir.url("recipe.toml"))
        name = str(raw.get("name", "run"))
        raw = apply_overrides(raw, overrides)
        raw.setdefault("run", {})["out"] = args.resume
    else:
        if args.recipe is None:
            raise BadInput("train needs a RECIPE (a .toml path or a name from `hookmix recipes`) or --resume RUN_DIR")
        name, raw = read_recipe(args.recipe, registry)
        raw = apply_overrides(raw, overrides)
        if args.out:
            raw.setdefault("run", {})["out"] = args.out
    recipe = resolve(name, raw, registry)
    trainer = Trainer(recipe, registry, resume=bool(args.resume), quiet=args.quiet)
    summary = trainer.run()
    shown = {k: round(v, 4) for k, v in summary["metrics"].items()
             if k in ("train/loss", "val/loss", "val/accuracy") or k.count("/") == 1 and not k.startswith("train/")}
    print(f"done: {summary['steps']} steps in {summary['wall_seconds']:.1f}s; "
          + ", ".join(f"{k} {v}" for k, v in shown.items())
          + f"; outputs in {trainer.state.run_dir.url()}")
    return 0


def cmd_bench(args) -> int:
    from engine.bench import overhead

    return overhead(steps=args.steps, noop=args.noop, workload=args.workload, against=args.against,
                    clock=args.clock)


if __name__ == "__main__":
    sys.exit(main())
