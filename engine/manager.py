"""The plugin manager: validates a plugin set, orders it, and calls hooks through typed methods.

The loop never touches ``pm.hook``: it calls one method per hook (tox's style). Order is the
engine's business: plugins declare ``before`` / ``after``; the manager sorts them topologically
(recipe order breaks ties), fails on cycles, and registers them with pluggy in that order.

How each hook is called follows the convention declared on its spec (engine/hookspecs.py):

- Every hook but the two wrapper hooks goes through a caller written for this run's plan
  (engine/dispatch.py): one direct call per implementation, in plan order, with the results
  combined as the convention says (notify, collect, merge, fold, exclusive, per plugin). pluggy
  checks these implementations when they are registered, but never calls them.
- The wrapper hooks, ``hookmix_optimizer_step`` and ``hookmix_evaluate``, go through pluggy
  (``pm.hook``), which nests the plugins' ``wrapper=True`` implementations around the engine's own
  (:class:`_Builtins`). While no plugin wraps one, the engine's own runs without pluggy.

``HOOKMIX_TRACE=1`` (a line per implementation called) and ``HOOKMIX_PROFILE=1`` (the time of each
hook by plugin: :class:`engine.perf.profile.Profile`) watch both paths the same way: every plugin's
implementation, a written caller's callee or a pluggy wrapper alike, is wrapped once at setup
(:meth:`Manager._watch`), and a run without them calls the plugins' functions themselves.
"""

from __future__ import annotations

import heapq
import os
import sys
from typing import Any, Callable

import pluggy
import torch

from engine import hookspecs
from engine.config.recipe import Recipe
from engine.config.registry import Registry, unknown_declarations
from engine.dispatch import Impl, choose_provider, make_caller
from engine.errors import BadInput, PluginConflict
from engine.plugin import Plugin, base_name, capability_name, hookimpl, offers
from engine.state import State
from engine.step import needs_closure

ENGINE = "engine"


class _Builtins:
    """The engine's own inner implementations of the wrapper hooks."""

    def __init__(self, evaluate: Callable[[torch.nn.Module, Any], dict] | None) -> None:
        self.evaluate = evaluate or (lambda model, state: {})

    @hookimpl
    def hookmix_optimizer_step(self, optimizer, closure):
        _plain_optimizer_step(optimizer, None, closure)

    @hookimpl
    def hookmix_evaluate(self, model, state):
        return self.evaluate(model, state)


def matches(plugins: dict[str, Plugin], target: Any) -> list[str]:
    """Enabled plugins a before/after/conflicts entry designates: the plugin so named, or every provider."""
    return [n for n, p in plugins.items() if offers(n, type(p), target)]


def order_plugins(plugins: dict[str, Plugin]) -> list[str]:
    """Topological order from before/after declarations (names or capabilities); ties keep the recipe order."""
    names = list(plugins)
    index = {n: i for i, n in enumerate(names)}
    succ: dict[str, set[str]] = {n: set() for n in names}
    for n, p in plugins.items():
        for target in p.before:
            succ[n] |= {m for m in matches(plugins, target) if m != n}
        for target in p.after:
            for m in matches(plugins, target):
                if m != n:
                    succ[m].add(n)
    indeg = {n: 0 for n in names}
    for n in names:
        for m in succ[n]:
            indeg[m] += 1
    ready = [(index[n], n) for n in names if indeg[n] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        for m in succ[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                heapq.heappush(ready, (index[m], m))
    if len(order) < len(names):
        raise PluginConflict(
            f"plugin ordering cycle: {' -> '.join(_find_cycle(succ, set(names) - set(order)))}; "
            f"remove one of these before/after declarations"
        )
    return order


def _find_cycle(succ: dict[str, set[str]], left: set[str]) -> list[str]:
    # Walk predecessors: every unsorted node has one among the unsorted nodes, while a node
    # merely downstream of a cycle (e.g. declared `after` a member) may have no successor there.
    pred = {n: sorted(m for m in left if n in succ[m]) for n in left}
    path: list[str] = []
    node = min(left)
    while node not in path:
        path.append(node)
        node = pred[node][0]
    return (path[path.index(node) :] + [node])[::-1]


class Manager:
    """Owns the pluggy manager of one run; one typed method per hook."""

    def __init__(
        self,
        plugins: dict[str, Plugin],
        registry: Registry | None = None,
        *,
        evaluate: Callable[[torch.nn.Module, Any], dict] | None = None,
        profile: bool = False,
    ):
        self.plugins = plugins
        self.order = order_plugins(plugins)
        self._check_declarations(registry)
        self.builtins = _Builtins(evaluate)
        self.pm = pluggy.PluginManager("hookmix")
        self.pm.add_hookspecs(hookspecs)
        self.pm.register(self.builtins, name=ENGINE)
        for name in reversed(self.order):  # pluggy calls the last registered first
            try:
                self.pm.register(plugins[name], name=name)
            except pluggy.PluginValidationError as exc:
                raise BadInput(f"plugin {name!r} has an invalid hook implementation: {exc}; fix the plugin") from None
        self.conventions = hookspecs.conventions()
        self.profile = None  # engine.perf.profile.Profile when profiling (HOOKMIX_PROFILE=1 or profile=True)
        if profile or os.environ.get("HOOKMIX_PROFILE") == "1":
            from engine.perf.profile import Profile

            self.profile = Profile()
        self.trace = os.environ.get("HOOKMIX_TRACE") == "1"
        self._impls: dict[str, list[Impl]] = {}  # the plain implementations of each hook, in plan order
        self._wrapped: dict[str, bool] = {}  # each wrapper hook: whether a plugin wraps the engine's own
        for hook_name, convention in self.conventions.items():
            impls = [i for i in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()) if i.plugin_name != ENGINE]
            wrapper_hook = convention.kind == "wrapper"
            for impl in impls:
                if impl.tryfirst or impl.trylast:
                    raise BadInput(
                        f"plugin {impl.plugin_name!r} uses tryfirst/trylast on {hook_name}; "
                        f"declare before/after on the plugin class instead"
                    )
                if (impl.wrapper or impl.hookwrapper) != wrapper_hook:
                    raise BadInput(
                        f"plugin {impl.plugin_name!r}: {hook_name} must be implemented "
                        f"{'with' if wrapper_hook else 'without'} wrapper=True "
                        f"(see its convention in docs/hooks.md)"
                    )
            if wrapper_hook:  # pluggy calls these: it is handed the watched function
                for impl in impls:
                    impl.function = self._watch(hook_name, impl.plugin_name, impl.function, wrapper=True)
                self._wrapped[hook_name] = bool(impls)
                impls = []
            self._impls[hook_name] = [
                (i.plugin_name, self._watch(hook_name, i.plugin_name, i.function), tuple(i.argnames)) for i in impls
            ]
        # exclusive hooks: one provider; an explicit one replaces a plugin's default (API 1.1), two are refused
        self.replaced: dict[str, list[str]] = {}  # exclusive hook -> the default providers set aside
        defaults = {n: p.default_hooks for n, p in plugins.items()}
        for hook_name in sorted(h for h, c in self.conventions.items() if c.kind == "exclusive"):
            self._impls[hook_name], replaced = choose_provider(hook_name, self._impls[hook_name], defaults)
            if replaced:
                self.replaced[hook_name] = replaced
        # What every other hook call runs: a caller written for this plan (engine.dispatch), one
        # direct call per implementation, combining the results as the hook's convention says.
        self._calls = {
            hook_name: make_caller(
                hook_name, tuple(getattr(self.pm.hook, hook_name).spec.argnames), impls, self.conventions[hook_name]
            )
            for hook_name, impls in self._impls.items()
            if self.conventions[hook_name].kind != "wrapper"
        }
        self._bind_step_hooks()

    def _watch(self, hook_name: str, plugin: str, fn: Callable, wrapper: bool = False) -> Callable:
        """``fn``, ``plugin``'s implementation of ``hook_name``, as the run calls it: timed when profiling,
        announced on stderr when tracing, itself otherwise. ``wrapper``: a generator function that pluggy
        drives (timed over its own code, before and after its ``yield``, not the calls it wraps)."""
        if self.profile is not None:
            fn = (self.profile.timed_wrapper if wrapper else self.profile.timed)(hook_name, plugin, fn)
        if self.trace:
            fn = (_traced_wrapper if wrapper else _traced)(hook_name, plugin, fn)
        return fn

    # --- validation and the plan -------------------------------------------------------------

    def _check_declarations(self, registry: Registry | None) -> None:
        # capability name -> the first plugin (in order) providing it; every plugin provides its own name
        self.capabilities = capability = {}
        for name in self.order:  # an instance (teacher@large) is also the plugin it is an instance of
            for cap in (name, base_name(name), *self.plugins[name].provides):
                capability.setdefault(capability_name(cap), name)
        # names in conflicts/before/after that nothing installed declares do nothing: the plan says so
        self.warnings = unknown_declarations(self.plugins, set(capability), registry)
        self.notes: list[str] = []  # the recipe's notes (build_state): settings dropped or moved
        for name in self.order:
            p = self.plugins[name]
            for req in map(capability_name, p.requires):
                if req not in capability:
                    hint = " or ".join(map(repr, registry.providers_of(req))) if registry else ""
                    raise PluginConflict(
                        f"plugin {name!r} requires {req!r}, which no enabled plugin provides; "
                        f"add {hint or 'a plugin that provides it'} to run.plugins"
                    )
            for bad in p.conflicts:
                others = [o for o in matches(self.plugins, bad) if o != name]
                if others:
                    raise PluginConflict(
                        f"plugins {name!r} and {others[0]!r} conflict ({name} declares "
                        f"conflicts={capability_name(bad)!r}); remove one of them from run.plugins"
                    )

    @staticmethod
    def hook_names() -> list[str]:
        """Every hook, in the order the loop fires them (the order of their specs)."""
        return hookspecs.hook_names()

    def providers(self, hook_name: str) -> list[str]:
        """The plugins whose implementation of ``hook_name`` runs, in order (a replaced default does not)."""
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        replaced = self.replaced.get(hook_name, ())
        return [i.plugin_name for i in reversed(impls) if i.plugin_name not in (ENGINE, *replaced)]

    def plan(self, versions: dict[str, tuple[str, str]], warnings: list[str] = ()) -> str:
        """The lines printed at the start of each run: plugins, distributions, order per hook, warnings."""
        lines = [f"hookmix plan: {len(self.order)} plugins (in order)"]
        width = max(len(n) for n in self.order)
        for name in self.order:
            dist, version = versions.get(name, ("?", "?"))
            lines.append(f"  {name:<{width}}  {dist + ' ' + version:<22} {type(self.plugins[name]).summary()}")
        lines.append("hooks (call order; * = exclusive provider, ~ = wrapper):")
        for hook_name, convention in self.conventions.items():
            if convention.kind == "per plugin":
                continue
            names = self.providers(hook_name)
            if names:
                mark = {"exclusive": "*", "wrapper": "~"}.get(convention.kind, " ")
                yielded = " and ".join(f"{n}'s" for n in self.replaced.get(hook_name, ()))
                replaces = f" (replaces {yielded} default)" if yielded else ""
                lines.append(f"  {mark} {hook_name:<30} {' -> '.join(names)}{replaces}")
        lines += [f"warning: {w}" for w in [*warnings, *self.warnings]] + [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def constraint_overlaps(self, model: torch.nn.Module) -> list[str]:
        """Warnings for weight constraints that touch the same parameters (the later can void the earlier)."""
        from engine.capabilities import WeightConstraint

        claimed: list[tuple[str, set[str]]] = []
        for name in self.order:
            plugin = self.plugins[name]
            if WeightConstraint in plugin.provides:
                claimed.append((name, set(plugin.constrained_parameters(model))))
        out = []
        for i, (a, pa) in enumerate(claimed):
            for b, pb in claimed[i + 1 :]:
                both = sorted(pa & pb)
                if both:
                    out.append(
                        f"weight constraints {a!r} and {b!r} both constrain {len(both)} parameters "
                        f"(e.g. {both[0]}); {b} runs after {a} and can void {a}'s guarantee"
                    )
        return out

    # --- dispatch ----------------------------------------------------------------------------

    def _call(self, hook_name: str, **kwargs) -> Any:
        """Call ``hook_name``'s caller (engine/dispatch.py): every implementation in order, the results
        combined as the hook's convention says (``self.conventions``)."""
        return self._calls[hook_name](**kwargs)

    def _required(self, hook_name: str, what: str, **kwargs) -> Any:
        if not self._impls[hook_name]:
            raise BadInput(
                f"no enabled plugin provides {what} ({hook_name}); add one to run.plugins (see `hookmix plugins`)"
            )
        result = self._call(hook_name, **kwargs)
        if result is None:
            raise BadInput(f"plugin {self._impls[hook_name][0][0]!r} returned nothing from {hook_name}; fix the plugin")
        return result

    def has(self, hook_name: str) -> bool:
        """Whether an enabled plugin implements ``hook_name`` (a wrapper hook: with its plain implementation)."""
        return bool(self._impls[hook_name])

    def wraps(self, hook_name: str) -> bool:
        """Whether a plugin wraps the engine's ``hook_name`` (``hookmix_optimizer_step``, ``hookmix_evaluate``)."""
        return self._wrapped[hook_name]

    def takes(self, hook_name: str, argument: str) -> bool:
        """Whether an enabled plugin's implementation of ``hook_name`` takes ``argument`` (one written for an
        older plugin API leaves a newer argument out: ``closure`` of ``hookmix_optimizer_step``, API 1.1)."""
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        return any(argument in i.argnames for i in impls if i.plugin_name != ENGINE)

    # setup

    def configure(self, state) -> None:
        self._call("hookmix_configure", state=state)

    def data(self, state):
        return self._required("hookmix_data", "data", state=state)

    def model(self, state) -> torch.nn.Module:
        return self._required("hookmix_model", "a model", state=state)

    def setup_model(self, model, state) -> None:
        self._call("hookmix_setup_model", model=model, state=state)

    def param_groups(self, model, state) -> list[tuple[str, dict]]:
        return [
            (name, g) for name, groups in self._call("hookmix_param_groups", model=model, state=state) for g in groups
        ]

    def optimizer(self, param_groups, state):
        return self._required("hookmix_optimizer", "an optimizer", param_groups=param_groups, state=state)

    def lr_scheduler(self, optimizer, state):
        return self._call("hookmix_lr_scheduler", optimizer=optimizer, state=state)

    def on_train_start(self, state) -> None:
        self._call("hookmix_on_train_start", state=state)

    # rollouts

    def generate_rollouts(self, model, batch, state):
        return self._call("hookmix_generate_rollouts", model=model, batch=batch, state=state)

    def rewards(self, rollouts, state) -> dict[str, torch.Tensor]:
        return self._call("hookmix_rewards", rollouts=rollouts, state=state)  # merged: a name twice is an error

    def advantages(self, rollouts, rewards, state):
        return self._call("hookmix_advantages", rollouts=rollouts, rewards=rewards, state=state)

    # forward, loss, backward, step: called every micro-batch, so bound in __init__ to their callers
    # (engine/dispatch.py) instead of methods around them, which would add a Python frame per call
    # (docs/performance.md). Each: (arguments) -> result, and what the engine does with the results.

    forward: Callable[..., dict]  # (model, batch, state) -> outputs; exclusive; default {"logits": model(input)}
    aux_outputs: Callable[..., dict]  # (model, batch, outputs, state) -> outputs; merged into outputs
    transform_logits: Callable[..., torch.Tensor]  # (logits, role, consumer, kind, state) -> logits; fold
    loss_terms: Callable[..., dict]  # (batch, outputs, state) -> {name: term}; merged
    on_train_batch: Callable[..., None]  # (batch, outputs, state); notify, under no_grad, first evaluation only
    before_backward: Callable[..., None]  # (loss, state); notify
    after_backward: Callable[..., None]  # (model, state); notify
    optimizer_step: Callable[..., None]  # (optimizer, state, closure); the plugins' wrappers around the step
    after_optimizer_step: Callable[..., None]  # (model, optimizer, state); notify, under no_grad

    def _bind_step_hooks(self) -> None:
        calls, impls = self._calls, self._impls
        self.forward = calls["hookmix_forward"] if impls["hookmix_forward"] else _default_forward
        self.aux_outputs = calls["hookmix_aux_outputs"]
        self.transform_logits = calls["hookmix_transform_logits"]
        self.loss_terms = calls["hookmix_loss_terms"]
        self.on_train_batch = calls["hookmix_on_train_batch"]
        self.before_backward = calls["hookmix_before_backward"]
        self.after_backward = calls["hookmix_after_backward"]
        if self._wrapped["hookmix_optimizer_step"]:
            wrapped = self.pm.hook.hookmix_optimizer_step

            def optimizer_step(optimizer, state, closure=None) -> None:
                # pluggy: the wrappers around the engine's step (those written for API 1.0 leave closure out)
                wrapped(optimizer=optimizer, state=state, closure=closure)

            self.optimizer_step = optimizer_step
        else:
            self.optimizer_step = _plain_optimizer_step
        post_step = calls["hookmix_after_optimizer_step"]

        def after_optimizer_step(model, optimizer, state) -> None:
            # torch.no_grad()'s switch without its two Python frames and two set_grad_enabled objects
            enabled = torch.is_grad_enabled()
            _set_grad_enabled(False)
            try:
                post_step(model, optimizer, state)
            finally:
                _set_grad_enabled(enabled)

        self.after_optimizer_step = after_optimizer_step if impls["hookmix_after_optimizer_step"] else post_step

    # evaluation and logging

    def evaluate(self, model, state) -> dict:
        if self._wrapped["hookmix_evaluate"]:
            return self.pm.hook.hookmix_evaluate(model=model, state=state)  # pluggy: the wrappers around it
        return self.builtins.evaluate(model, state)

    def eval_metrics(self, model, state) -> dict:
        return self._call("hookmix_eval_metrics", model=model, state=state)  # merged: a name twice is an error

    def on_log(self, metrics, state) -> None:
        self._call("hookmix_on_log", metrics=metrics, state=state)

    def on_train_end(self, state, summary) -> None:
        self._call("hookmix_on_train_end", state=state, summary=summary)

    # checkpoint state (per plugin, keyed by name)

    def plugin_states(self, state) -> dict[str, dict]:
        return dict(self._call("hookmix_plugin_state", state=state))

    def load_plugin_states(self, saved: dict[str, dict], state) -> None:
        for name, fn, argnames in self._impls["hookmix_load_plugin_state"]:
            if name in saved:
                kwargs = {"plugin_state": saved[name], "state": state}
                fn(*[kwargs[a] for a in argnames])


def _default_forward(model, batch, state) -> dict:
    return {"logits": model(batch["input"])}


# torch's C switch of autograd (private API; torch.set_grad_enabled called as a function, its public
# form, does the same through one more Python frame, should a torch release drop the C name)
_set_grad_enabled = getattr(torch._C, "_set_grad_enabled", torch.set_grad_enabled)


def _plain_optimizer_step(optimizer, state, closure=None) -> None:
    # an optimizer that requires the loss closure (LBFGS) gets it; any other steps on the gradients it has
    if closure is not None and needs_closure(optimizer):
        optimizer.step(closure)
    else:
        optimizer.step()


def _traced(hook_name: str, plugin: str, fn: Callable) -> Callable:
    """``fn`` announcing each call on stderr (HOOKMIX_TRACE=1)."""

    def traced(*args):
        print(f"[hookmix trace] {hook_name} -> {plugin}", file=sys.stderr)
        return fn(*args)

    return traced


def _traced_wrapper(hook_name: str, plugin: str, fn: Callable) -> Callable:
    """A wrapper implementation (a generator function pluggy drives) announcing each call on stderr."""

    def traced(*args, **kwargs):
        print(f"[hookmix trace] {hook_name} -> {plugin} (wrapper)", file=sys.stderr)
        return (yield from fn(*args, **kwargs))

    return traced


def build_state(
    recipe: Recipe, registry: Registry, device: torch.device, *, evaluate=None, profile: bool = False
) -> tuple[State, Manager]:
    """The plugins a recipe enables, configured, validated and ordered, behind a fresh ``State``."""
    plugins = {}
    for name in recipe.run.plugins:
        cls = registry.load(name)
        if name == cls.name:
            plugin = cls()
        else:  # an instance, NAME@LABEL (API 1.1): its own object, named before __init__ runs
            plugin = cls.__new__(cls)
            plugin.name = name
            plugin.__init__()
        plugin.config = recipe.plugin_configs.get(name)
        plugins[name] = plugin
    manager = Manager(plugins, registry, evaluate=evaluate, profile=profile)
    manager.notes = list(recipe.notes)
    return State(recipe, manager, device, registry), manager
