"""What a plugin is: a class with a name, a typed config, declarations and hook implementations.

A plugin package registers its classes under the ``hookmix.plugins`` entry-point group::

    [project.entry-points."hookmix.plugins"]
    ema = "hookmix_ema:EMA"

The engine imports a class only when a recipe names it (or ``hookmix plugins`` lists
everything), checks its declarations (:func:`check_plugin_class`: a wrong one makes that plugin
*broken*, never the others), instantiates it with no arguments, structures the recipe's
``[plugins.NAME]`` table into ``Config`` and sets ``plugin.config``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import tomllib
from importlib import resources
from typing import Any, Callable, ClassVar

import attrs
import pluggy

from engine import hookspecs

hookimpl = pluggy.HookimplMarker("hookmix")

#: What separates a plugin's name from an instance label: ``teacher@large`` is plugin ``teacher`` enabled again
#: under its own name (plugin API 1.1; see :attr:`Plugin.multi_instance`).
INSTANCE_SEPARATOR = "@"
_LABEL = re.compile(r"[A-Za-z0-9_]+")

#: The plugin API this engine implements. A plugin declares the range it supports in ``api``;
#: the major number changes only when a change would break a plugin written for the last one.
API_VERSION = "1.1"


def supports_api(spec: str) -> bool:
    """Whether a plugin's ``api`` specifier (PEP 440, e.g. ``">=1.0,<2"``) admits :data:`API_VERSION`."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        return API_VERSION in SpecifierSet(spec)
    except (InvalidSpecifier, TypeError):
        raise TypeError(f'api = {spec!r} is not a version specifier; write e.g. api = ">=1.0,<2"') from None


@attrs.define
class Command:
    """A ``hookmix`` sub-command: an entry point of the ``hookmix.commands`` group, or a plugin's ``commands`` entry.

    The CLI calls ``add_arguments`` with the verb's argparse parser and ``run`` with the parsed namespace.
    """

    help: str
    add_arguments: Callable[[Any], None]  # receives the verb's argparse parser
    run: Callable[[Any], int | None]  # receives the parsed namespace; returns an exit code

    @classmethod
    def lazy(cls, help: str, add_arguments: str, run: str) -> Command:
        """A command whose functions (``"module:function"``) are imported only when it is used.

        Keeps ``hookmix --help`` fast however heavy the command's module is.
        """
        return cls(help, _Lazy(add_arguments), _Lazy(run))


class _Lazy:
    """A ``"module:function"`` reference, imported at the first call."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __call__(self, *args):
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)(*args)

    def __repr__(self) -> str:
        return f"<lazy {self.target}>"


class Plugin:
    """Base class for hookmix plugins. Subclass it, set the declarations, implement hooks.

    Declarations (class attributes, all checked when the class is loaded):

    ``name``
        The name recipes use; must equal the entry-point name.
    ``Config``
        An attrs class (fields made with :func:`engine.field`) or ``None``.
    ``provides`` / ``requires`` / ``conflicts``
        Capabilities: names (strings) or ``typing.Protocol`` classes. Every plugin provides its
        own name. A run fails when a required capability is not provided by an enabled plugin,
        or a conflicting one is; a plugin that provides a Protocol must implement it.
        ``state.provider(Protocol)`` returns the enabled plugin that provides it, typed.
    ``before`` / ``after``
        Plugin names or capabilities this one must run before / after, in every hook (ignored
        when nothing enabled matches). The engine sorts topologically and fails on cycles.
    ``recipes``
        A package (dotted name) whose ``*.toml`` files are recipes shipped with the plugin.
    ``commands``
        ``{verb: engine.Command}``: extra ``hookmix`` sub-commands (inherited like any attribute).
        Plugin API 1.0, still honoured; a command belongs in the ``hookmix.commands`` entry-point
        group instead (``verb = "module:attribute"``), where it needs no plugin to carry it.
    ``api``
        The plugin API versions supported, a PEP 440 specifier (default ``">=1.0,<2"``).
    ``needs_full_weights``
        ``True`` when the plugin's maths needs whole weight matrices (spectral norms, a certified
        bound, orthogonalisation). Under ``run.strategy = "fsdp"`` the engine then runs the
        ``after_optimizer_step`` and ``eval_metrics`` hooks inside ``state.full_weights()`` (gathered
        full tensors, written back to the shards), and refuses the plugin (exit 2) when it implements
        a hook that sees sharded weights (``before_backward``, ``after_backward``, ``optimizer_step``,
        the ``evaluate`` wrapper).
        See docs/distributed.md, "The full-matrix contract".
    ``default_hooks`` (plugin API 1.1)
        Exclusive hooks this plugin implements only as a default: another enabled plugin that
        implements one of them replaces this plugin's implementation (the plan says so) instead of
        being refused as a second provider. Two implementations that are not defaults are still
        refused, naming both. E.g. ``grpo`` declares ``("hookmix_advantages",)``.
    ``multi_instance`` (plugin API 1.1)
        ``True`` when a recipe may enable the plugin more than once, as ``NAME@LABEL`` (``teacher@large``),
        each instance with its own ``[plugins."NAME@LABEL"]`` table, checkpoint state and names. An
        instance's ``self.name`` is its instance name (already in ``__init__``); it keeps the names it
        gives apart with ``self.name`` (``kd@t2`` as a loss term, ``teacher@large/val_accuracy``) or
        :meth:`scoped` (``teacher_logits@large``). Default ``False``: a 1.0 plugin may use fixed names
        that two instances would share, so ``NAME@LABEL`` is refused for it.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type | None] = None
    provides: ClassVar[tuple] = ()
    requires: ClassVar[tuple] = ()
    conflicts: ClassVar[tuple] = ()
    before: ClassVar[tuple] = ()
    after: ClassVar[tuple] = ()
    recipes: ClassVar[str | None] = None
    commands: ClassVar[dict[str, Command]] = {}
    api: ClassVar[str] = ">=1.0,<2"
    needs_full_weights: ClassVar[bool] = False
    default_hooks: ClassVar[tuple[str, ...]] = ()
    multi_instance: ClassVar[bool] = False

    def __init__(self) -> None:
        self.config = self.Config() if self.Config is not None else None

    @property
    def instance(self) -> str:
        """This instance's label (``"large"`` for ``teacher@large``); ``""`` for the plugin under its own name."""
        return split_instance(self.name)[1]

    def scoped(self, key: str) -> str:
        """``key`` for the plugin under its own name, ``key@LABEL`` for an instance: an output, term or metric
        name that two instances must not share (``teacher_logits`` -> ``teacher_logits@large``)."""
        label = self.instance
        return f"{key}{INSTANCE_SEPARATOR}{label}" if label else key

    @classmethod
    def summary(cls) -> str:
        """One line describing the plugin: the first line of its docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def split_instance(name: str) -> tuple[str, str]:
    """``"teacher@large"`` -> ``("teacher", "large")``; a plain plugin name -> ``(name, "")``."""
    base, _, label = name.partition(INSTANCE_SEPARATOR)
    return base, label


def base_name(name: str) -> str:
    """The plugin an enabled name stands for: ``teacher`` for ``teacher@large`` and for ``teacher``."""
    return split_instance(name)[0]


def check_instance_name(name: str) -> None:
    """Raise ``ValueError`` with a one-line reason when ``NAME@LABEL`` is malformed."""
    base, label = split_instance(name)
    if not base or not _LABEL.fullmatch(label):
        raise ValueError(
            f"{name!r} is not an instance name; write NAME{INSTANCE_SEPARATOR}LABEL with a LABEL of letters, "
            f"digits and _ (e.g. teacher{INSTANCE_SEPARATOR}large)"
        )


def capability_name(cap: Any) -> str:
    """The name a capability goes by in messages, the plan and docs: a string, or a Protocol's name."""
    return cap if isinstance(cap, str) else getattr(cap, "__name__", repr(cap))


def offers(name: str, cls: type, capability: Any) -> bool:
    """Whether the plugin ``name`` (class ``cls``) is, or provides, ``capability`` (a name or a Protocol).

    An instance ``teacher@large`` is ``teacher@large`` and also ``teacher``: a declaration naming the
    plugin (``requires = ("teacher",)``, ``after = ("teacher",)``) covers every instance of it.
    """
    key = capability_name(capability)
    return key in (name, base_name(name)) or key in map(capability_name, cls.provides)


def is_protocol(cap: Any) -> bool:
    return isinstance(cap, type) and getattr(cap, "_is_protocol", False)


def protocol_members(proto: type) -> list[str]:
    """The methods and attributes a Protocol class asks for (what a provider must have)."""
    names = set()
    for klass in proto.__mro__:
        if klass is object or not getattr(klass, "_is_protocol", False) or klass.__name__ in ("Protocol", "Generic"):
            continue
        names |= {n for n in vars(klass) if not n.startswith("_")}
        names |= set(getattr(klass, "__annotations__", {}))
    return sorted(names)


def missing_members(plugin_cls: type, proto: type) -> list[str]:
    return [m for m in protocol_members(proto) if not hasattr(plugin_cls, m)]


def check_plugin_class(cls: Any, registered_as: str) -> None:
    """Raise ``TypeError`` with a one-line reason when a plugin class's declarations are wrong."""
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise TypeError(f"{cls!r} is not a subclass of engine.Plugin")
    if cls.name != registered_as:
        raise TypeError(f"class {cls.__name__} declares name {cls.name!r} but is registered as {registered_as!r}")
    if INSTANCE_SEPARATOR in cls.name:  # NAME@LABEL names an instance of NAME in a recipe
        raise TypeError(f"name {cls.name!r} contains {INSTANCE_SEPARATOR!r}, which separates an instance label")
    if not supports_api(cls.api):
        raise TypeError(
            f"supports plugin API {cls.api!r}, this engine implements {API_VERSION}; upgrade the plugin (or hookmix)"
        )
    if cls.Config is not None and not attrs.has(cls.Config):
        raise TypeError(f"Config = {cls.Config!r} is not an attrs class; decorate it with @attrs.define")
    for label in ("provides", "requires", "conflicts", "before", "after"):
        values = getattr(cls, label)
        if not isinstance(values, tuple) or not all(isinstance(v, str) or is_protocol(v) for v in values):
            raise TypeError(f"{label} must be a tuple of names or typing.Protocol classes, got {values!r}")
    for proto in (c for c in cls.provides if is_protocol(c)):
        missing = missing_members(cls, proto)
        if missing:
            raise TypeError(
                f"provides {proto.__name__} but lacks {', '.join(missing)}; implement it or remove it from provides"
            )
    for label in ("needs_full_weights", "multi_instance"):
        if not isinstance(getattr(cls, label), bool):
            raise TypeError(f"{label} must be True or False, got {getattr(cls, label)!r}")
    _check_hooks(cls)
    _check_default_hooks(cls)
    _check_recipes(cls)
    commands = cls.commands
    if not isinstance(commands, dict) or not all(
        isinstance(k, str) and isinstance(v, Command) for k, v in commands.items()
    ):
        raise TypeError("commands must be a dict {verb: engine.Command}")


def _check_hooks(cls: type) -> None:
    """Every ``hookmix_*`` attribute is a known hook marked ``@hookimpl`` (else it would never run)."""
    known = hookspecs.hook_names()
    for attr in dir(cls):
        if not attr.startswith("hookmix_"):
            continue
        value = inspect.getattr_static(cls, attr)
        if value is None:  # a subclass switching an inherited implementation off
            continue
        close = difflib.get_close_matches(attr, known, n=1)
        hint = f"; did you mean {close[0]}?" if close and close[0] != attr else ""
        if attr not in known:
            raise TypeError(f"method {attr} is not a hook{hint or '; see docs/hooks.md for the hook names'}")
        if not callable(value) or not hasattr(value, "hookmix_impl"):
            raise TypeError(
                f"method {attr} is named like a hook but lacks @hookimpl, so it would never run; "
                f"decorate it with @engine.hookimpl"
            )


def _check_default_hooks(cls: type) -> None:
    """``default_hooks`` lists exclusive hooks the class implements (a default of anything else means nothing)."""
    hooks = cls.default_hooks
    if not isinstance(hooks, tuple) or not all(isinstance(h, str) for h in hooks):
        raise TypeError(f"default_hooks must be a tuple of hook names, got {hooks!r}")
    for hook in hooks:
        if hook not in hookspecs.hook_names() or hookspecs.convention(hook).kind != "exclusive":
            raise TypeError(
                f"default_hooks lists {hook}, which is not an exclusive hook; only an exclusive hook's "
                f"implementation can yield to another plugin's (see docs/hooks.md)"
            )
        if not callable(getattr(cls, hook, None)):
            raise TypeError(f"default_hooks lists {hook}, which the plugin does not implement; implement it or drop it")


def _check_recipes(cls: type) -> None:
    package = cls.recipes
    if package is None:
        return
    if not isinstance(package, str) or not package:
        raise TypeError(f"recipes = {package!r} must be the dotted name of a package holding *.toml files")
    try:
        importlib.import_module(package)
        files = list(resources.files(package).iterdir())
    except Exception as exc:  # ModuleNotFoundError, a module that is not a package, ...
        raise TypeError(
            f"recipes = {package!r} is not an importable package ({type(exc).__name__}); "
            f"point it at a package (a folder with __init__.py) holding *.toml files"
        ) from None
    tomls = [f for f in files if f.name.endswith(".toml")]
    if not tomls:
        raise TypeError(f"recipes = {package!r} holds no *.toml file; add recipes or remove the declaration")
    for f in tomls:  # a recipe that cannot be read would break `hookmix recipes` for everyone
        try:
            tomllib.loads(f.read_text("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise TypeError(
                f"shipped recipe {package}/{f.name} is not valid TOML ({str(exc).splitlines()[0]}); fix the file"
            ) from None
