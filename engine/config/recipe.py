"""Recipes: a TOML file with a ``[run]`` table and one ``[plugins.NAME]`` table per plugin.

::

    description = "char-level GPT on tinyshakespeare"
    [run]
    plugins = ["tinyshakespeare", "gpt", "adamw", "cross_entropy"]
    steps = 600
    [plugins.adamw]
    lr = 3e-3

Command-line overrides use dotted keys and TOML values: ``run.steps=50``,
``plugins.adamw.lr=3e-4``, ``run.plugins+=ema`` (enable), ``run.plugins-=ema`` (disable).
Every table is structured with cattrs into an attrs class; unknown keys and wrong types are
bad input naming the key and the valid choices. The resolved recipe (every default filled in)
is saved in the run directory and is all that is needed to reproduce the run.

Plugin API 1.1: ``run.plugins`` may name a plugin that declares ``multi_instance`` more than once, as
``NAME@LABEL`` (``[plugins."teacher@large"]``). A table's ``from = "X"`` starts it from X's table (the
keys the plugin accepts; its own keys win), X's table dropped by ``run.plugins-=X`` included:
``run.plugins-=grpo run.plugins+=soft_grpo plugins.soft_grpo.from=grpo``. A table ``run.plugins-=X`` drops
and no ``from`` takes is named in a note of the plan (:attr:`Recipe.notes`).
"""

from __future__ import annotations

import tomllib
import typing
from typing import Any, Literal

import attrs
import cattrs
import fsspec
import tomli_w

from engine.config.registry import Registry, did_you_mean, unknown_name_message
from engine.errors import BadInput
from engine.validators import Rule, device_name, finite_non_negative, in_range, int_range, no_nul


def one_of(*allowed: str) -> Rule:
    """attrs validator: the value must be one of ``allowed`` (shown by ``hookmix describe``)."""
    return Rule(f"one of {', '.join(map(str, allowed))}", lambda v: v in allowed)


#: attrs validator: a number > 0 (kept for plugins written against 0.1; ``validators.finite_positive`` also
#: refuses nan and inf).
positive = Rule("> 0", lambda v: v > 0)

#: attrs validator: a number >= 0 (see ``positive``).
non_negative = Rule(">= 0", lambda v: v >= 0)


def field(default, help: str, **kw):
    """An attrs field with a help text (shown by ``hookmix describe``)."""
    if isinstance(default, (list, dict, set)):
        return attrs.field(factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return attrs.field(default=default, metadata={"help": help}, **kw)


@attrs.define
class RunConfig:
    """The ``[run]`` table: everything about a run that is not a plugin's business."""

    plugins: list[str] = field([], "plugin names to enable, in tie-break order")
    steps: int = field(100, "optimizer steps to train", validator=int_range(1, 2**62))
    seed: int = field(0, "seed for every RNG the run uses", validator=int_range(0, 2**63 - 2))
    device: str = field("cpu", "cpu, cuda, cuda:N, or auto (cuda when available)", validator=device_name)
    precision: str = field("fp32", "fp32, or bf16 (autocast)", validator=one_of("fp32", "bf16"))
    grad_accum: int = field(1, "micro-batches per optimizer step", validator=int_range(1, 2**20))
    grad_clip: float = field(0.0, "max global gradient norm; 0 disables clipping", validator=finite_non_negative)
    eval_interval: int = field(0, "evaluate every N steps (0: only at the end)", validator=int_range(0, 2**62))
    checkpoint_interval: int = field(0, "checkpoint every N steps (0: only at the end)", validator=int_range(0, 2**62))
    log_interval: int = field(10, "log train metrics every N steps", validator=int_range(1, 2**62))
    keep_checkpoints: int = field(2, "how many recent checkpoints to keep", validator=int_range(1, 2**62))
    out: str = field("", "run directory URL (default: runs/<recipe>-<time>)", validator=no_nul)
    threads: int = field(0, "torch CPU threads (0: torch's default)", validator=int_range(0, 4096))
    dist_backend: str = field(
        "auto",
        "torch.distributed backend under torchrun: auto (nccl on CUDA, gloo on CPU), gloo or nccl",
        validator=one_of("auto", "gloo", "nccl"),
    )
    dist_timeout: float = field(
        120.0, "seconds a collective waits for a peer before the run fails", validator=in_range(1.0, 86400.0)
    )
    compile: bool = field(False, "compile the model with torch.compile (see docs/performance.md)")
    peak_flops: float = field(
        0.0, "device peak FLOP/s for perf/mfu (0: known GPUs only)", validator=in_range(0.0, 1e21)
    )
    strategy: str = field(
        "ddp",
        "multi-process strategy: ddp (replicated weights) or fsdp (FSDP2: weights, "
        "gradients and optimizer state sharded; DCP checkpoints)",
        validator=one_of("ddp", "fsdp"),
    )


@attrs.define
class Recipe:
    """A resolved recipe: run config plus one structured config per plugin table."""

    name: str
    description: str
    run: RunConfig
    plugin_configs: dict[str, Any]  # enabled plugin name -> its Config instance (or None)
    # what resolving did with settings that the user may not expect (a dropped table, keys moved by
    # `from`): printed as "note:" lines of the plan; not part of the recipe (never saved, never compared)
    notes: list[str] = attrs.field(factory=list, eq=False, repr=False)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        out["run"] = converter.unstructure(self.run)
        out["plugins"] = {n: converter.unstructure(c) for n, c in self.plugin_configs.items() if c is not None}
        return _drop_none(out)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


# --- strict structuring: no silent int(3.7) or bool("no") --------------------------------------

converter = cattrs.Converter(forbid_extra_keys=True)


def _strict(t: type):
    def structure(value, _):
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if type(value) is not t:
            raise TypeError(f"expected {t.__name__}, got {type(value).__name__} {value!r}")
        return value

    return structure


for _t in (int, float, bool, str):
    converter.register_structure_hook(_t, _strict(_t))


def _strict_list(value, t):  # cattrs would turn "ema" into ["e", "m", "a"]
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__} {value!r}")
    item = (typing.get_args(t) or (Any,))[0]
    return [converter.structure(v, item) for v in value]


converter.register_structure_hook_func(lambda t: t is list or typing.get_origin(t) is list, _strict_list)


def structure_table(table: Any, cls: type, where: str) -> Any:
    """Structure one TOML table into an attrs class, with errors that name the key."""
    if not isinstance(table, dict):
        raise BadInput(f"{where} must be a table, got {type(table).__name__}; write [{where}] with key = value lines")
    attrs.resolve_types(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            raise BadInput(
                f"unknown key {where}.{key}{did_you_mean(key, list(fields))} "
                f"(valid keys of {where}: {', '.join(fields) or 'none'})"
            )
        ftype = fields[key].type
        if attrs.has(ftype):
            kwargs[key] = structure_table(value, ftype, f"{where}.{key}")
            continue
        try:
            kwargs[key] = converter.structure(value, ftype)
        except Exception as exc:
            detail, wanted = _first_error(exc), _type_name(ftype)
            if not detail.startswith(f"expected {wanted},"):  # say the type once
                detail += f" (expected {wanted})"
            raise BadInput(f"{where}.{key}: {detail}; fix the value") from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise BadInput(f"{where}: {exc}; fix the value") from None


def _first_error(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _type_name(t: Any) -> str:
    if typing.get_origin(t) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(t))
    if typing.get_args(t):  # list[float], not "list"
        return str(t).replace("typing.", "")
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


# --- loading, overrides, resolution -------------------------------------------------------------


def parse_toml(text: str, origin: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"recipe {origin}: invalid TOML ({exc}); fix the syntax") from None


def read_recipe(source: str, registry: Registry) -> tuple[str, dict]:
    """Return (name, raw dict) for a recipe path/URL or the name of a shipped recipe."""
    shipped = shipped_recipes(registry)
    if source in shipped:
        return source, parse_toml(shipped[source][1], source)
    if "://" in source or source.endswith(".toml") or "/" in source:
        try:
            with fsspec.open(source, "r", encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise BadInput(f"recipe file {source} not found; check the path or run `hookmix recipes`") from None
        except (OSError, UnicodeDecodeError, ValueError, ImportError) as exc:  # ImportError: fsspec backend missing
            raise BadInput(
                f"cannot read recipe {source}: {_first_error(exc)}; pass a readable UTF-8 TOML file"
            ) from None
        name = source.rstrip("/").rsplit("/", 1)[-1].removesuffix(".toml")
        return name, parse_toml(text, source)
    raise BadInput(
        unknown_name_message("recipe", source, sorted(shipped), "pass a .toml path or a name from `hookmix recipes`")
    )


def shipped_recipes(registry: Registry) -> dict[str, tuple[str, str]]:
    """{recipe name: (distribution, TOML text)} for every recipe shipped by an installed plugin."""
    from importlib import resources

    out: dict[str, tuple[str, str]] = {}
    for info in registry.all():
        package = info.cls.recipes if info.cls is not None else None
        if not package:
            continue
        for entry in sorted(resources.files(package).iterdir(), key=lambda p: p.name):
            if entry.name.endswith(".toml"):
                out.setdefault(entry.name.removesuffix(".toml"), (info.dist, entry.read_text("utf-8")))
    return out


def parse_override(text: str) -> tuple[list[str], str, Any]:
    """``a.b=1`` -> (["a", "b"], "=", 1); also ``+=`` and ``-=`` for lists."""
    if "=" not in text:
        raise BadInput(f"override {text!r} is not KEY=VALUE; write e.g. run.steps=50")
    key, value_text = text.split("=", 1)
    op = "="
    if key.endswith(("+", "-")):
        op, key = key[-1] + "=", key[:-1]
    path = key.strip().split(".")
    if not all(path):
        raise BadInput(f"override {text!r} has an empty key part; write e.g. plugins.adamw.lr=3e-4")
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text  # bare words are strings: run.device=cuda
    return path, op, value


class RawRecipe(dict):
    """A raw recipe after overrides: the tables, plus what ``run.plugins-=X`` dropped (``dropped``: X -> its
    table, for ``from = "X"`` and the plan's note) and which plugins ``run.plugins+=`` added (``added``).
    Equal to the plain dict of its tables."""

    def __init__(self, tables: dict, dropped: dict | None = None, added: list | None = None) -> None:
        super().__init__(tables)
        self.dropped: dict[str, dict] = dict(dropped or {})
        self.added: list[str] = list(added or [])


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = RawRecipe(_deepcopy(raw), getattr(raw, "dropped", None), getattr(raw, "added", None))
    for text in overrides:
        path, op, value = parse_override(text)
        if path[0] not in ("run", "plugins", "description"):
            raise BadInput(f"override {text!r}: top-level key must be run or plugins; write e.g. run.steps=50")
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise BadInput(f"override {text!r}: {part} is not a table; check the key")
        last = path[-1]
        if op == "=":
            node[last] = value
            continue
        items = value if isinstance(value, list) else [value]
        current = node.get(last, [])
        if not isinstance(current, list):
            raise BadInput(
                f"override {text!r}: {op} adds to or removes from a list, but {'.'.join(path)} is "
                f"{current!r}; write {'.'.join(path)}=VALUE"
            )
        current = list(current)
        if op == "+=":
            if path == ["run", "plugins"]:
                raw.added += [str(v) for v in items if v not in current]
            current += [v for v in items if v not in current]
        else:
            missing = [v for v in items if v not in current]
            if missing:
                raise BadInput(
                    unknown_name_message(
                        f"entry {'.'.join(path)}-=", str(missing[0]), [str(c) for c in current], "it is not in the list"
                    )
                )
            current = [v for v in current if v not in items]
            if path == ["run", "plugins"] and isinstance(raw.get("plugins"), dict):
                for name in items:  # disabling a plugin drops its config table with it: kept for `from`
                    table = raw["plugins"].pop(name, None)
                    if isinstance(table, dict) and table:
                        raw.dropped[str(name)] = table
        node[last] = current
    return raw


def _deepcopy(value):
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


def resolve(name: str, raw: dict, registry: Registry) -> Recipe:
    """Validate a raw recipe dict against the run config and each enabled plugin's config."""
    unknown = set(raw) - {"run", "plugins", "description", "name"}
    if unknown:
        key = sorted(unknown)[0]
        raise BadInput(
            unknown_name_message(
                "top-level key", key, ["run", "plugins", "description"], "a recipe has [run] and [plugins.NAME] tables"
            )
        )
    run = structure_table(raw.get("run", {}), RunConfig, "run")
    if not run.plugins:
        raise BadInput(
            'run.plugins is empty; list the plugins to enable, e.g. plugins = ["tinyshakespeare", "gpt", "adamw", "cross_entropy"]'
        )
    dupes = {p for p in run.plugins if run.plugins.count(p) > 1}
    if dupes:
        raise BadInput(f"run.plugins names {sorted(dupes)[0]!r} twice; list each plugin once")
    tables = raw.get("plugins", {})
    if not isinstance(tables, dict):
        raise BadInput("plugins must be a table of [plugins.NAME] tables; fix the recipe")
    for pname in tables:  # a typo in a table name, or config for a plugin that would silently not run
        if pname not in registry.names():
            registry.info(pname)  # raises the unknown-name error with a suggestion
        if pname not in run.plugins:
            raise BadInput(
                f"[plugins.{pname}] configures plugin {pname!r}, which run.plugins does not enable; "
                f"enable it with run.plugins+={pname}, or remove the table"
            )
    notes: list[str] = []
    tables = _take_from(tables, getattr(raw, "dropped", {}), getattr(raw, "added", []), registry, notes)
    configs = {}
    for pname in run.plugins:
        config_cls = registry.load(pname).Config
        table = tables.get(pname, {})
        if config_cls is None:
            if table:
                raise BadInput(f"plugins.{pname}: plugin {pname!r} takes no configuration; remove the table")
            configs[pname] = None
        else:
            configs[pname] = structure_table(table, config_cls, f"plugins.{pname}")
    return Recipe(
        name=str(raw.get("name", name)),
        description=str(raw.get("description", "")),
        run=run,
        plugin_configs=configs,
        notes=notes,
    )


FROM = "from"  # the key of a table that starts from another plugin's table; a Python keyword: no config field


def _take_from(tables: dict, dropped: dict, added: list, registry: Registry, notes: list[str]) -> dict:
    """``tables`` with every ``from = "X"`` replaced by the keys of X's table the plugin accepts (its own keys
    win); a note for each move, and for each table ``run.plugins-=X`` dropped that no ``from`` took."""
    done: dict[str, Any] = {}  # target -> its table resolved (a chain a <- b <- c resolves b once)
    taken: set[str] = set()

    def source(target: str, name: Any, seen: tuple[str, ...]) -> dict:
        if not isinstance(name, str):
            raise BadInput(f'plugins.{target}.from must be a plugin name (a string), got {name!r}; e.g. from = "grpo"')
        if name in seen:
            raise BadInput(
                f"plugins.{target}.from: the tables take each other's keys ({' -> '.join((*seen, name))}); "
                f"break the cycle"
            )
        if name in tables and name != target:
            table = resolved(name, seen)
        elif name in dropped:
            taken.add(name)
            table = dropped[name]
        else:
            registry.info(name)  # unknown: bad input with a close match; known without a table: nothing to take
            table = {}
        if not isinstance(table, dict):
            raise BadInput(f"plugins.{name} must be a table, got {type(table).__name__}; fix the recipe")
        return table

    def resolved(target: str, seen: tuple[str, ...] = ()) -> Any:
        if target in done:
            return done[target]
        table = tables[target]
        if isinstance(table, dict) and FROM in table:
            origin = table[FROM]
            theirs = source(target, origin, (*seen, target))
            config_cls = registry.load(target).Config
            accepted = {f.name for f in attrs.fields(config_cls)} if config_cls is not None else set()
            own = {k: v for k, v in table.items() if k != FROM}
            moved = {k: v for k, v in theirs.items() if k in accepted and k not in own}
            left = sorted(k for k in theirs if k not in accepted)
            if moved or left:
                notes.append(
                    f"[plugins.{target}] takes {', '.join(moved) or 'no key'} from [plugins.{origin}]"
                    + (f"; not keys of {target}, left out: {', '.join(left)}" if left else "")
                )
            table = {**moved, **own}
        done[target] = table
        return table

    out = {target: resolved(target) for target in tables}
    for name, table in dropped.items():
        if name in taken or name in tables:
            continue
        note = f"run.plugins-={name} dropped the settings of [plugins.{name}] ({', '.join(table)})"
        new = [a for a in added if a != name]
        if new:  # a plugin was enabled in its place, maybe a variant that should have them
            heir = new[0] if len(new) == 1 else "NAME"
            note += f"; to give them to {heir}: plugins.{heir}.from={name}"
        notes.append(note)
    return out
