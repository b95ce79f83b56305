"""The training loop: where every hook fires.

::

    setup:
        configure(state)                                  # cross-plugin validation
        state.data   = data(state)                        # exclusive
        state.model  = model(state); setup_model(model)   # exclusive; notify
        groups       = merge(param_groups(model))         # a parameter in two groups: error
        optimizer    = optimizer(groups); scheduler = lr_scheduler(optimizer)
        [main process: lock the run directory (one writer); engine/rundir/claim.py]
        [resume: weights, optimizer, scheduler, RNG + data order, plugin_state by name]
        print the plan; on_train_start(state); write recipe.toml

    for step in start_step .. run.steps - 1:
        for micro in range(run.grad_accum):
            batch = data.train_batch(generator)
            if a rollout provider is enabled:                        # RL: all micro-batches first, then
                batch = generate_rollouts(model, batch)               # batch["step_totals"] (engine/step.py)
                batch["reward"] = sum(rewards(batch))                 # named terms; no_grad, eval mode
                batch["advantages"] = advantages(batch, reward)       # exclusive
            with autocast:
                outputs = forward(model, batch)                       # default: model(batch["input"])
                outputs |= aux_outputs(model, batch, outputs)         # teacher logits, features
                terms = loss_terms(batch, outputs)                    # state.logits() -> transform_logits
                on_train_batch(batch, outputs)                        # observers; no_grad; first evaluation only
            loss = sum(terms) / grad_accum                            # terms recorded for the non-finite check
            before_backward(loss); loss.backward(); after_backward(model)
        clip gradients (run.grad_clip)
        optimizer_step(optimizer, closure); step += 1                 # wrappers; closure() re-runs the micro-batches
        with no_grad: after_optimizer_step(model, optimizer)          # constraints, EMA
        scheduler.step(); optimizer.zero_grad()
        log / eval / checkpoint due: non-finite check (one sync, shared with the log's; names the first bad step and term)
        every log_interval:        on_log(train metrics + perf/ throughput)
        every eval_interval / end: evaluate(model) -> eval_metrics; on_log
        every checkpoint_interval / end: checkpoint (plugin_state by name)
    on_train_end(state, summary)
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time
from typing import IO, TYPE_CHECKING, Callable

import numpy as np
import torch

from engine.config.recipe import Recipe
from engine.config.registry import Registry
from engine.distributed import ddp
from engine.distributed.env import pick_backend, pin_device, read_env, resolve_device
from engine.distributed.group import Group, mean_over_ranks
from engine.errors import BadInput, HookmixError, Interrupted
from engine.evaluation import evaluate_model
from engine.failures import interrupts
from engine.failures.blame import setup_failure, training_failure
from engine.manager import Manager, build_state
from engine.param_groups import merge_param_groups
from engine.perf.compile import compile_model
from engine.perf.throughput import Throughput
from engine.rundir import checkpoint
from engine.rundir.claim import Claim, open_location, record_recipe_change
from engine.rundir.directory import RunDir
from engine.rundir.lock import write_error
from engine.rundir.metrics_log import MetricsLog, metrics_to_keep
from engine.rundir.progress import Progress
from engine.state import State
from engine.step import bind_step

if TYPE_CHECKING:
    from engine.distributed.fsdp import Sharded


def _not_set_up() -> None:
    raise RuntimeError("Trainer.train_step() before Trainer.setup(): set the trainer up first")


class Trainer:
    """Runs one recipe. ``setup()``, then ``train_step()`` per step, or ``run()`` for everything."""

    def __init__(
        self,
        recipe: Recipe,
        registry: Registry,
        *,
        resume: bool = False,
        stream: IO[str] | None = None,
        quiet: bool = False,
        profile: bool = False,
    ) -> None:
        self.recipe = recipe
        self.registry = registry
        self.resume = resume  # continue from the run directory's last checkpoint
        self.stream = stream or sys.stdout  # where the plan and the progress are printed
        self.quiet = quiet
        self.profile_hooks = profile  # per-hook timing (also HOOKMIX_PROFILE=1): see Trainer.profile
        # --- built by setup() ---
        self.group: Group | None = None  # the process group (inactive in one process)
        self.state: State | None = None  # what the hooks see
        self.manager: Manager | None = None  # the enabled plugins, ordered, and their hook callers
        self.versions: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
        self.wrapper: torch.nn.Module | Sharded | None = None  # DDP or FSDP over model + plugin modules
        self.sharded: Sharded | None = None  # run.strategy='fsdp': the FSDP2 modules
        self.gather = False  # a plugin needs full weights: post-step hooks run in state.full_weights()
        self.compile_plan: list[str] = []  # run.compile: the plan's lines on what was compiled
        self.throughput: Throughput | None = None  # counts each micro-batch for the perf/ metrics
        self.params: list[torch.nn.Parameter] = []  # every optimized parameter (gradient clipping)
        self.resuming = False  # setup restores a checkpoint of the run directory
        self.resume_changes: list[str] = []  # what differs from the checkpoint's run (printed on resume)
        self.kept_metrics: list[str] | None = None  # on resume: metrics.jsonl's records up to the checkpoint
        self.progress: Progress | None = None  # the progress display (quiet but on the main process)
        self.claim: Claim | None = None  # the main process's hold on the run directory (its lock)
        self.metrics_log: MetricsLog | None = None  # metrics.jsonl and TensorBoard (main process)
        self.train_step: Callable[[], None] = _not_set_up  # one optimizer step of this run (engine/step.py)
        # --- while training ---
        self.t0 = 0.0  # perf_counter() at the end of setup: wall_seconds counts from it
        self.wall_before = 0.0  # wall seconds spent before the resumed checkpoint
        self.last: dict[str, float] = {}  # the latest value of every metric (summary.json)
        self.saved_step: int | None = None  # step of the newest checkpoint on disk
        self.next_due = 0  # the next step at which a log, evaluation or checkpoint may be due (advance)

    @classmethod
    def from_recipe(cls, recipe=None, *overrides: str, **options) -> Trainer:
        """A trainer for ``recipe`` with ``overrides``, for step-by-step control: ``setup()``, then
        ``advance()`` (or ``train_step()``) per step, or ``run()``. The arguments are :func:`engine.train`'s
        (``plugins``, ``out``, ``resume``, ``quiet``, ``stream``, ``profile``, ``registry``); bad input
        raises :class:`engine.BadInput` here or in ``setup()``, before anything is written."""
        from engine.api import make_trainer

        return make_trainer(cls, recipe, *overrides, **options)

    # --- setup --------------------------------------------------------------------------------

    def setup(self) -> State:
        """Build everything, claim the run directory, restore a checkpoint; on failure leave nothing."""
        run = self.recipe.run
        try:
            if run.threads:
                torch.set_num_threads(run.threads)
            env = read_env()
            interrupts.check()
            device = pin_device(resolve_device(run.device), env)
            backend = pick_backend(run.dist_backend, device) if env.launched else ""
            self.group = Group(env, backend, run.dist_timeout)
            return self._setup(run, device)
        except BaseException:
            self._close(failed=True)
            if self.group is not None:
                self._close_group()
            raise

    def _setup(self, run, device: torch.device) -> State:
        group = self.group
        torch.manual_seed(run.seed)
        np.random.seed(run.seed % 2**32)
        random.seed(run.seed)

        try:  # everything that can be bad input, on every rank; then every rank agrees (distributed.Group.agree)
            self._build(run, device)
            interrupts.check()  # a start-up signal, at the agreement: every rank stops here together
            error = None
        except (BadInput, Interrupted) as exc:
            error = exc
        group.agree(error)
        state, run_dir = self.state, self.state.run_dir
        if group.rank > 0 and not state._resumed:  # rank 0 continues the 1-process torch stream (dropout, noise)
            torch.manual_seed(ddp.rank_seed(run.seed, group.rank))
        if group.active:
            self.wrapper = self.sharded or ddp.wrap(state.model, state.modules, device, run.grad_accum)
            devices = ", ".join(f"rank {r} {d}" for r, d in enumerate(group.gather(str(device))))
            self.progress.print(
                f"distributed: world size {group.world_size}, backend {group.backend}, "
                f"strategy {run.strategy}; {devices}"
            )
        if state.is_main:  # everything above validated: only now is anything written
            try:
                if self.resuming:
                    record_recipe_change(run_dir, self.recipe.to_toml(), state.start_step)
                run_dir.write_text_atomic("recipe.toml", self.recipe.to_toml())
                self.metrics_log = MetricsLog(run_dir, state.start_step if self.resuming else None, self.kept_metrics)
            except OSError as exc:
                raise write_error(run_dir.url(), exc) from None
        self.progress.print(f"run directory: {run_dir.url()}")
        self.train_step = bind_step(self)  # everything it uses is built now, the DDP/FSDP wrapper included
        self.t0 = time.perf_counter()
        return state

    def _build(self, run, device: torch.device) -> State:
        state, manager = build_state(
            self.recipe, self.registry, device, evaluate=self._evaluate, profile=self.profile_hooks
        )
        self.state, self.manager = state, manager
        state._use_group(self.group)
        if not manager.has("hookmix_loss_terms"):
            raise BadInput(
                "no enabled plugin returns loss terms; add a loss plugin (e.g. cross_entropy) to run.plugins"
            )
        self.versions = {n: (self.registry.info(n).dist, self.registry.info(n).version) for n in manager.order}
        if self.group.active and not run.out:  # a timestamp differs between ranks and restarts
            raise BadInput(
                "a distributed run needs its run directory named: pass --out DIR (or run.out); "
                "every rank and every elastic restart uses it"
            )
        out = run.out or f"runs/{self.recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        state.run_dir = run_dir = open_location(out) if state.is_main else RunDir(out)
        if run.strategy == "fsdp" and self.group.active:
            from engine.distributed import sharded_checkpoint  # FSDP/DCP: imported only by runs that shard

            sharded_checkpoint.check_location(run_dir)

        hook = self._setup_hook
        hook("check the plugin set", manager.configure, state)
        state.data = hook("build the data", manager.data, state)
        state.model = hook("build the model", lambda s: manager.model(s).to(device), state)
        hook("set up the model", manager.setup_model, state.model, state)
        if run.strategy == "fsdp" and self.group.active:  # before the optimizer: it must hold the shards
            from engine.distributed import fsdp

            self.sharded, self.gather = hook(
                "shard the model (run.strategy=fsdp)", fsdp.setup, state, manager, run.precision
            )
        self.compile_plan = compile_model(state.model, manager) if run.compile else []
        self.throughput = Throughput(state)
        groups = hook(
            "build the param groups", lambda: merge_param_groups(manager.param_groups(state.model, state), state)
        )
        state.optimizer = hook("build the optimizer", manager.optimizer, groups, state)
        state.scheduler = hook("build the LR scheduler", manager.lr_scheduler, state.optimizer, state)
        self.params = [p for g in groups for p in g["params"]]
        if state.world_size > 1:  # the global batch must split evenly; probe with a copy of the data generator
            probe = torch.Generator().set_state(state.generator.get_state())
            ddp.check_divisible(state.data.train_batch(probe), state.world_size)

        # an elastic restart of a launch that claimed this directory continues it (its last checkpoint, or
        # step 0 when it has none); any other command means what it says, restarted or not
        restart = self.group.claimed(run_dir.url())
        resume = (self.resume or restart) and bool(checkpoint.list_steps(run_dir))
        if state.is_main:  # one writer per run directory; everything below runs under its lock
            interrupts.check()  # the last moment a start-up signal leaves nothing behind
            self.claim = Claim(run_dir)
            resume = self.claim.take(self.resume or restart)
            self.group.record_claim(run_dir.url())
        self.resuming = resume
        if resume:
            self._restore(checkpoint.load_latest(run_dir, check=True))
            self.saved_step = state.start_step
        self.kept_metrics = metrics_to_keep(run_dir, state.start_step) if resume and state.is_main else None
        self.progress = Progress(run.steps, state.start_step, self.stream, self.quiet or not state.is_main)
        for line in self.resume_changes:
            self.progress.print(f"resume: {line}")
        plan = manager.plan(self.versions, manager.constraint_overlaps(state.model))
        self.progress.print("\n".join([plan, *self.compile_plan, self.throughput.plan]))
        hook("start training", manager.on_train_start, state)
        return state

    @property
    def profile(self):
        """The per-hook timing (``engine.perf.profile.Profile``: ``seconds(hook, plugin)``, ``reset()``,
        ``table()``) when the trainer was made with ``profile=True`` or HOOKMIX_PROFILE=1, else None."""
        return self.manager.profile

    def _setup_hook(self, what: str, call, *args):
        """``call(*args)``; an error that is not already one line becomes bad input naming the plugin."""
        interrupts.check()  # between start-up phases: a signal recorded in the last one stops here
        try:
            return call(*args)
        except HookmixError:
            raise
        except Exception as exc:
            raise setup_failure(exc, what, self.manager.plugins) from None

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
            "plugin_versions": {n: f"{d} {v}" for n, (d, v) in self.versions.items()},
            "plugin_configs": self.recipe.to_dict().get("plugins", {}),
            "pending_metrics": state._train_log.pending(),
            "wall_seconds": self.wall_before + time.perf_counter() - self.t0,
        }

    def _restore(self, payload: dict) -> None:
        state = self.state
        if "sharded" in payload or self.sharded is not None:
            from engine.distributed import sharded_checkpoint
        if "sharded" in payload:  # an FSDP checkpoint: its tensors are in a DCP directory
            sharded_checkpoint.load(state.run_dir, payload, state.model, state.modules, self.sharded)
        elif self.sharded is not None:  # a one-file checkpoint (1 process, DDP): this rank's rows of each tensor
            sharded_checkpoint.shard_full(payload, state.model, state.modules, state.optimizer)
        missing = [n for n in payload.get("plugin_versions", {}) if n not in self.manager.plugins]
        if missing:
            raise BadInput(
                f"checkpoint was written with plugin {missing[0]!r}, which this run does not enable; "
                f"add it to run.plugins (resume needs the same plugins)"
            )
        try:
            state.model.load_state_dict(payload["model"])
            state.modules.load_state_dict(payload["modules"])
            state.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise BadInput(
                f"checkpoint does not match the model/optimizer of this recipe "
                f"({str(exc).splitlines()[0][:200]}); resume with the run's own recipe"
            ) from None
        try:
            if state.scheduler is not None and payload.get("scheduler") is not None:
                state.scheduler.load_state_dict(payload["scheduler"])
            checkpoint.restore_rng(payload["rng"], state.generator)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadInput(
                f"checkpoint scheduler or random state is damaged ({type(exc).__name__}); "
                f"delete the newest checkpoint to resume from the previous one"
            ) from None
        self._setup_hook(
            "restore its checkpoint state", self.manager.load_plugin_states, payload.get("plugins", {}), state
        )
        state._train_log.restore(payload["pending_metrics"])
        self.resume_changes = checkpoint.resume_changes(payload, self.versions, self.recipe)
        ddp.restore_rank(state, self.manager, payload.get("ranks"), int(payload["step"]))
        state.step = state.start_step = int(payload["step"])
        state._resumed = True
        self.wall_before = float(payload.get("wall_seconds", 0.0))
        if state.start_step >= self.recipe.run.steps:
            raise BadInput(
                f"the run already finished {state.start_step} of run.steps={self.recipe.run.steps}; "
                f"raise it to continue, e.g. run.steps={state.start_step * 2}"
            )

    def save_checkpoint(self) -> None:
        self.state._train_log.read()  # the non-finite check: a checkpoint never holds weights trained on one
        if self.metrics_log is not None:  # the records up to this step survive a kill (later ones are replayed)
            self.metrics_log.flush()
        state = self.state
        ranks = self.group.gather(ddp.rank_payload(state, self.manager)) if self.group.world_size > 1 else None
        if self.sharded is not None:  # every rank writes its shards (DCP); rank 0 then commits the .pt
            from engine.distributed import sharded_checkpoint

            payload = {**self._payload(), "ranks": ranks} if state.is_main else None
            trained = (state.model, state.modules, state.optimizer, self.sharded)
            sharded_checkpoint.save(state.run_dir, state.step, payload, self.recipe.run.keep_checkpoints, *trained)
        elif state.is_main:
            payload = self._payload()
            if ranks is not None:
                payload["ranks"] = ranks
            checkpoint.save(state.run_dir, state.step, payload, self.recipe.run.keep_checkpoints)
        self.saved_step = state.step

    # --- evaluation and logging ---------------------------------------------------------------

    def _evaluate(self, model: torch.nn.Module, state: State) -> dict:
        """The engine's inner evaluation (engine.evaluation), handed to the manager as the wrapped hook's core."""
        return evaluate_model(model, state, self.manager)

    def _record(self, record: dict) -> None:
        self.last.update(record)
        del self.last["step"]
        if self.metrics_log is not None:
            self.metrics_log.write(record)
        self.manager.on_log(record, self.state)
        self.progress.update(record["step"], record)

    def log_train(self) -> None:
        state = self.state
        logged = state._train_log.pop_means()  # the one host read of the interval; raises on a non-finite loss term
        if self.group.world_size > 1:  # one collective per log interval: the mean over ranks of each metric
            logged = mean_over_ranks(self.group.gather(logged))
        record = {"step": state.step, **logged}
        record.update(self.throughput.metrics())  # after pop_means, which waited for the device
        groups = state.optimizer.param_groups
        if groups and "lr" in groups[0]:
            record["train/lr"] = float(groups[0]["lr"])
        self._record(record)

    def evaluate(self) -> dict:
        self.state._train_log.read()  # the non-finite check: no evaluation record for weights trained on one
        metrics = self.manager.evaluate(self.state.model, self.state)
        self._record({"step": self.state.step, **metrics})
        return metrics

    # --- the whole run ------------------------------------------------------------------------

    def advance(self, stop_at: int | None = None) -> None:
        """One step of the run: train, then log / evaluate / checkpoint when they are due."""
        self.train_step()
        step = self.state.step
        if step < self.next_due and step != stop_at:  # nothing due (most steps): one comparison
            if self.progress.tty:  # a terminal's bar moves every step (drawn at most 10 times a second)
                self.progress.update(step)
            return
        run = self.recipe.run
        self.next_due = min(
            step // k * k + k for k in (run.log_interval, run.eval_interval, run.checkpoint_interval, run.steps) if k
        )
        last = step == run.steps
        log = step % run.log_interval == 0 or last
        evaluate = (run.eval_interval and step % run.eval_interval == 0) or last
        save = (run.checkpoint_interval and step % run.checkpoint_interval == 0) or last or step == stop_at
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
        with interrupts.deferred() as pending:  # SIGINT/SIGTERM: finish the step, checkpoint, stop
            try:
                summary = self._train(stop_at, pending)
            except BaseException:
                self._close_group()  # peers blocked on this rank fail fast instead of waiting for the timeout
                raise
            finally:
                self._close(failed=False)
            self.manager.on_train_end(self.state, summary)
        if self.manager.profile is not None:
            print(self.manager.profile.table(), file=sys.stderr)
        self._close_group(sync=True)
        if pending.signum is not None:  # it came after the last step: the run finished first
            raise Interrupted(
                f"interrupted by {pending.name} after the last step; the run is complete ({self.state.run_dir.url()})",
                pending.signum,
            )
        return summary

    def _close_group(self, sync: bool = False) -> None:
        self.wrapper = None  # the DDP/FSDP wrapper holds the process group: release it before the group goes
        gc.collect()
        self.group.close(sync)

    def _train(self, stop_at: int | None, pending: interrupts.Pending) -> dict:
        state, run = self.state, self.recipe.run
        try:
            while (running := state.step + 1) <= (last := min(run.steps, stop_at or run.steps)):
                self.advance(stop_at)
                if (agreed := self.group.first_signal(pending.signum)) and state.step < run.steps:  # at the end: finish
                    pending.signum = agreed  # the same on every rank: one landing after the agreement waits a step
                    if self.saved_step != state.step:
                        self.save_checkpoint()
                    raise Interrupted(
                        f"interrupted by {pending.name} at step {state.step}; checkpoint saved: "
                        f"continue with `hookmix train --resume {state.run_dir.url()}`",
                        pending.signum,
                    )
            return self._finish()
        except Exception as exc:  # named: the step being run (hooks after its optimizer step see it counted)
            failure = training_failure(exc, state, self.manager, self.saved_step, min(running, last))
            if failure is None:
                raise
            raise failure from (None if isinstance(exc, (HookmixError, OSError)) else exc)

    def _finish(self) -> dict:
        """After the last step: the metrics closed, summary.json written."""
        state = self.state
        if self.metrics_log is not None:
            self.metrics_log.close()
            self.metrics_log = None
        summary = {
            "steps": state.step,
            "wall_seconds": round(self.wall_before + time.perf_counter() - self.t0, 3),
            "plugins": {n: {"distribution": d, "version": v} for n, (d, v) in self.versions.items()},
            "metrics": dict(self.last),
        }
        if state.is_main:
            state.run_dir.write_text_atomic("summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def _close(self, failed: bool) -> None:
        """Close the progress display and metrics; release the run directory (after a failed
        setup, also remove the directory the claim created)."""
        if self.progress is not None:
            self.progress.close()
            self.progress.quiet = True  # closed: a second close() draws nothing
        if self.metrics_log is not None:
            try:
                self.metrics_log.close()
            except OSError:
                pass  # already failing; the message names the cause
            self.metrics_log = None
        if self.claim is not None:
            self.claim.release(failed=failed)
            self.claim = None
