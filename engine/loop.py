"""The training loop: where every hook fires.

::

    setup:
        configure(state)                                  # cross-plugin validation
        state.data   = data(state)                        # exclusive
        state.model  = model(state); setup_model(model)   # exclusive; collect-all
        groups       = merge(param_groups(model))         # a parameter in two groups: error
        optimizer    = optimizer(groups); scheduler = lr_scheduler(optimizer)
        [resume: weights, optimizer, scheduler, RNG + data order, plugin_state by name]
        print the plan; write recipe.toml; on_train_start(state)

    for step in start_step .. run.steps - 1:
        for micro in range(run.grad_accum):
            batch = data.train_batch(generator)
            if a rollout provider is enabled:                        # RL
                batch = generate_rollouts(model, batch)               # no_grad, eval mode
                batch["reward"] = sum(rewards(batch))                 # named terms
                batch["advantages"] = advantages(batch, reward)       # exclusive
            with autocast:
                outputs = forward(model, batch)                       # default: model(batch["input"])
                outputs |= aux_outputs(model, batch, outputs)         # teacher logits, features
                terms = loss_terms(batch, outputs)                    # state.logits() -> transform_logits
            loss = sum(terms) / grad_accum                            # terms recorded for the non-finite check
            before_backward(loss); loss.backward(); after_backward(model)
        clip gradients (run.grad_clip)
        optimizer_step(optimizer)                                     # wrappers around optimizer.step()
        step += 1
        with no_grad: after_optimizer_step(model, optimizer)          # constraints, EMA
        scheduler.step(); optimizer.zero_grad()
        log / eval / checkpoint due: non-finite check (one sync; names the first bad step and term)
        every log_interval:        on_log(train metrics + perf/ throughput)
        every eval_interval / end: evaluate(model) -> eval_metrics; on_log
        every checkpoint_interval / end: checkpoint (plugin_state by name)
    on_train_end(state, summary)
"""

from __future__ import annotations

import sys
import time
from typing import IO

import numpy as np
import torch

from engine import checkpoint
from engine.errors import BadInput, PluginConflict, TrainingFailure
from engine.compilation import compile_model
from engine.finite import FiniteWatch
from engine.manager import Manager
from engine.outputs import MetricsLog, Progress, RunDir
from engine.recipe import Recipe
from engine.registry import Registry
from engine.state import State
from engine.throughput import Throughput


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInput(f"run.device {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"run.device is {name!r} but CUDA is not available; set run.device=cpu")
    return device


def _to_device(value, device: torch.device):
    """Host tensors go through pinned memory so the copy is asynchronous (overlaps with compute)."""
    if not torch.is_tensor(value) or value.device == device:
        return value
    if value.device.type == "cpu" and device.type == "cuda":
        return value.pin_memory().to(device, non_blocking=True)
    return value.to(device, non_blocking=True)


def make_state(recipe: Recipe, registry: Registry, device: torch.device) -> State:
    """The plugins a recipe enables, configured, validated and ordered, behind a fresh ``State``.

    Used by the trainer, and by plugins that rebuild another run's data or model outside its
    training (a distillation teacher, ``lipschitz-check``): they call ``state.manager.data(state)``
    and ``state.manager.model(state)`` on it, with the same state a run's plugins would see.
    """
    plugins = {}
    for name in recipe.run.plugins:
        plugin = registry.load(name)()
        plugin.config = recipe.plugin_configs.get(name)
        plugins[name] = plugin
    state = State(recipe, Manager(plugins, registry), device)
    state.registry = registry  # plugins that rebuild other runs (a teacher) resolve with it
    return state


class Trainer:
    """Runs one recipe. ``setup()``, then ``train_step()`` per step, or ``run()`` for everything."""

    def __init__(self, recipe: Recipe, registry: Registry, *, resume: bool = False,
                 stream: IO[str] | None = None, quiet: bool = False) -> None:
        self.recipe = recipe
        self.registry = registry
        self.resume = resume
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.state: State | None = None
        self.metrics_log: MetricsLog | None = None
        self.last: dict[str, float] = {}
        self.finite = FiniteWatch()
        self.wall_before = 0.0

    # --- setup --------------------------------------------------------------------------------

    def setup(self) -> State:
        run = self.recipe.run
        if run.threads:
            torch.set_num_threads(run.threads)
        device = resolve_device(run.device)
        torch.manual_seed(run.seed)
        np.random.seed(run.seed % 2**32)
        import random
        random.seed(run.seed)

        state = self.state = make_state(self.recipe, self.registry, device)
        manager = self.manager = state.manager
        if not manager.has("hookmix_loss_terms"):
            raise BadInput("no enabled plugin returns loss terms; add a loss plugin (e.g. cross_entropy) to run.plugins")
        manager.builtins.evaluate = self._evaluate

        manager.configure(state)
        state.data = manager.data(state)
        state.model = manager.model(state).to(device)
        manager.setup_model(state.model, state)
        compile_plan = compile_model(state.model, manager) if run.compile else []
        self.throughput = Throughput(state)
        groups = self._merge_param_groups()
        state.optimizer = manager.optimizer(groups, state)
        state.scheduler = manager.lr_scheduler(state.optimizer, state)
        self.params = [p for g in groups for p in g["params"]]

        out = run.out or f"runs/{self.recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        state.run_dir = run_dir = RunDir(out)
        if self.resume:
            self._restore(checkpoint.load_latest(run_dir))
        elif run_dir.exists("recipe.toml"):
            raise BadInput(f"run directory {out} already holds a run; pass --out NEW_DIR, or --resume {out}")
        self.versions = {n: self.registry.info(n).version for n in manager.order}
        self.progress = Progress(run.steps, state.start_step, self.stream, self.quiet or not state.is_main)
        self.progress.print("\n".join([manager.plan(self.versions), *compile_plan, self.throughput.plan]))
        if state.is_main:  # everything above validated: only now is anything written
            run_dir.makedirs()
            run_dir.write_text_atomic("recipe.toml", self.recipe.to_toml())
            self.metrics_log = MetricsLog(run_dir, state.start_step if self.resume else None)
        self.progress.print(f"run directory: {run_dir.url()}")
        manager.on_train_start(state)
        self.t0 = time.perf_counter()
        return state

    def _merge_param_groups(self) -> list[dict]:
        state = self.state
        names = {id(p): n for n, p in state.model.named_parameters()}
        names.update({id(p): f"<{n}>" for n, p in state.modules.named_parameters()})
        owner: dict[int, tuple[str, str]] = {}
        groups, group_names = [], set()
        for plugin, group in self.manager.param_groups(state.model, state):
            gname = group.get("name")
            if not gname or gname in group_names:
                raise PluginConflict(f"plugin {plugin!r} returned a param group with a missing or repeated name "
                                     f"{gname!r}; give each group a unique 'name'")
            group_names.add(gname)
            for p in group["params"]:
                if id(p) in owner:
                    g0, p0 = owner[id(p)]
                    raise PluginConflict(f"parameter {names.get(id(p), '?')} is in param group {g0!r} ({p0}) and "
                                         f"{gname!r} ({plugin}); a parameter may be in one group only")
                owner[id(p)] = (gname, plugin)
            groups.append(dict(group, params=list(group["params"])))
        rest = [p for p in [*state.model.parameters(), *state.modules.parameters()]
                if p.requires_grad and id(p) not in owner]
        if rest:
            groups.append({"name": "default", "params": rest})
        return groups

    # --- checkpointing ------------------------------------------------------------------------

    def _payload(self) -> dict:
        state = self.state
        return {
            "model": state.model.state_dict(),
            "modules": state.modules.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
            "rng": checkpoint.capture_rng(state.generator),
            "plugins": self.manager.plugin_states(state),
            "plugin_versions": dict(self.versions),
            "pending_metrics": {k: torch.stack([v.float().reshape(()) for v in vs]).cpu()
                                for k, vs in state._pending.items()},
            "wall_seconds": self.wall_before + time.perf_counter() - self.t0,
        }

    def _restore(self, payload: dict) -> None:
        state = self.state
        missing = [n for n in payload.get("plugin_versions", {}) if n not in state.plugins]
        if missing:
            raise BadInput(f"checkpoint was written with plugin {missing[0]!r}, which this run does not enable; "
                           f"add it to run.plugins (resume needs the same plugins)")
        try:
            state.model.load_state_dict(payload["model"])
            state.modules.load_state_dict(payload["modules"])
            state.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise BadInput(f"checkpoint does not match the model/optimizer of this recipe "
                           f"({str(exc).splitlines()[0][:200]}); resume with the run's own recipe") from None
        if state.scheduler is not None and payload.get("scheduler") is not None:
            state.scheduler.load_state_dict(payload["scheduler"])
        checkpoint.restore_rng(payload["rng"], state.generator)
        self.manager.load_plugin_states(payload.get("plugins", {}), state)
        state._pending = {k: list(v.unbind()) for k, v in payload["pending_metrics"].items()}
        state.step = state.start_step = int(payload["step"])
        state.resumed = True
        self.wall_before = float(payload.get("wall_seconds", 0.0))
        if state.start_step >= self.recipe.run.steps:
            raise BadInput(f"the run already finished {state.start_step} of run.steps={self.recipe.run.steps}; "
                           f"raise it to continue, e.g. run.steps={state.start_step * 2}")

    def save_checkpoint(self) -> None:
        state = self.state
        if state.is_main:
            checkpoint.save(state.run_dir, state.step, self._payload(), self.recipe.run.keep_checkpoints)

    # --- one step -----------------------------------------------------------------------------

    def train_step(self) -> None:
        state, manager, model, run = self.state, self.manager, self.state.model, self.recipe.run
        if not model.training:  # train() walks every submodule: ~0.1 ms, too much per step on small models
            model.train()
        step = state.step + 1
        for micro in range(run.grad_accum):
            state.micro = micro
            batch = state.data.train_batch(state.generator)
            self.throughput.count(batch)
            if state.device.type != "cpu":  # pinned host memory: the copy overlaps with compute
                batch = {k: _to_device(v, state.device) for k, v in batch.items()}
            if manager.has("hookmix_generate_rollouts"):
                batch = self._rollouts(batch)
            with state.autocast():
                outputs = manager.forward(model, batch, state)
                outputs = manager.aux_outputs(model, batch, outputs, state)
                terms = manager.loss_terms(batch, outputs, state)
            if not terms:
                raise TrainingFailure(f"step {step}: no plugin returned a loss term for this batch; "
                                      f"check the loss plugins' conditions")
            loss = sum(terms.values()) if len(terms) > 1 else next(iter(terms.values()))
            logged = {name: term.detach() for name, term in terms.items()}
            self.finite.record(step, logged)  # checked when metrics are read: no host sync per step
            for name, term in logged.items():
                state.log(f"train/loss/{name}", term)
            state.log("train/loss", loss)
            if run.grad_accum > 1:
                loss = loss / run.grad_accum
            manager.before_backward(loss, state)
            loss.backward()
            manager.after_backward(model, state)
        if run.grad_clip > 0:
            state.log("train/grad_norm", torch.nn.utils.clip_grad_norm_(self.params, run.grad_clip))
        manager.optimizer_step(state.optimizer, state)
        state.step = step
        manager.after_optimizer_step(model, state.optimizer, state)
        if state.scheduler is not None:
            state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)

    def _rollouts(self, batch: dict) -> dict:
        state, manager, model = self.state, self.manager, self.state.model
        model.eval()
        with torch.no_grad(), state.autocast():
            rollouts = manager.generate_rollouts(model, batch, state)
        model.train()
        terms = manager.rewards(rollouts, state)
        if not terms:
            raise BadInput("a rollout plugin is enabled but no plugin returns rewards; add a reward plugin")
        reward = sum(terms.values())
        for name, term in terms.items():
            state.log(f"train/reward/{name}", term.float().mean())
        state.log("train/reward", reward.float().mean())
        rollouts["reward"] = reward
        advantages = manager.advantages(rollouts, reward, state)
        rollouts["advantages"] = reward if advantages is None else advantages
        return rollouts

    # --- evaluation and logging ---------------------------------------------------------------

    def _evaluate(self, model: torch.nn.Module, state: State) -> dict:
        """The engine's inner evaluation: val/loss and val/accuracy, plus hookmix_eval_metrics."""
        from torchmetrics.aggregation import MeanMetric

        was_training = model.training
        model.eval()
        metrics: dict[str, float] = {}
        loss_mean, acc_mean = MeanMetric(), MeanMetric()
        seen = 0
        with torch.no_grad():
            for batch in state.data.val_batches():
                if state.device.type != "cpu":
                    batch = {k: v.to(state.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                with state.autocast():
                    logits = self.manager.forward(model, batch, state)["logits"]
                logits = logits.float().reshape(-1, logits.shape[-1])
                target = batch["target"].reshape(-1)
                keep = target != -100  # the ignore index of cross-entropy: padding, prompts
                logits, target = logits[keep], target[keep]
                if target.numel():
                    loss_mean.update(torch.nn.functional.cross_entropy(logits, target), weight=target.numel())
                    acc_mean.update((logits.argmax(-1) == target).float().mean(), weight=target.numel())
                    seen += 1
            if seen:
                metrics["val/loss"] = loss_mean.compute().item()
                metrics["val/accuracy"] = acc_mean.compute().item()
            metrics.update(self.manager.eval_metrics(model, state))
        model.train(was_training)
        return metrics

    def _record(self, record: dict) -> None:
        self.last.update({k: v for k, v in record.items() if k != "step"})
        if self.metrics_log is not None:
            self.metrics_log.write(record)
        self.manager.on_log(record, self.state)
        self.progress.update(record["step"], record)

    def log_train(self) -> None:
        state = self.state
        record = {"step": state.step, **state.pop_logged()}
        record.update(self.throughput.metrics())  # after pop_logged, which waited for the device
        groups = state.optimizer.param_groups
        if groups and "lr" in groups[0]:
            record["train/lr"] = float(groups[0]["lr"])
        self._record(record)

    def evaluate(self) -> dict:
        metrics = self.manager.evaluate(self.state.model, self.state)
        self._record({"step": self.state.step, **metrics})
        return metrics

    # --- the whole run ------------------------------------------------------------------------

    def advance(self, stop_at: int | None = None) -> None:
        """One step of the run: train, then log / evaluate / checkpoint when they are due."""
        self.train_step()
        run, step = self.recipe.run, self.state.step
        last = step == run.steps
        log = step % run.log_interval == 0 or last
        evaluate = (run.eval_interval and step % run.eval_interval == 0) or last
        save = (run.checkpoint_interval and step % run.checkpoint_interval == 0) or last or step == stop_at
        if log or evaluate or save:
            self.finite.check()  # before any metric or checkpoint: never save non-finite weights
        if log:
            self.log_train()
        else:
            self.progress.update(step)
        if evaluate or save:
            self.throughput.pause()  # evaluation and checkpoint time is not training time
            if evaluate:
                self.evaluate()
            if save:
                self.save_checkpoint()
            self.throughput.resume()

    def run(self, stop_at: int | None = None) -> dict:
        """Train to ``run.steps`` (or stop after ``stop_at`` with a checkpoint, as if interrupted)."""
        if self.state is None:
            self.setup()
        state, run = self.state, self.recipe.run
        try:
            while state.step < min(run.steps, stop_at or run.steps):
                self.advance(stop_at)
        finally:
            self.progress.close()
            if self.metrics_log is not None:
                self.metrics_log.close()
        summary = {
            "steps": state.step,
            "wall_seconds": round(self.wall_before + time.perf_counter() - self.t0, 3),
            "plugins": dict(self.versions),
            "metrics": dict(self.last),
        }
        if state.is_main:
            import json
            state.run_dir.write_text_atomic("summary.json", json.dumps(summary, indent=2) + "\n")
        self.manager.on_train_end(state, summary)
        return summary
