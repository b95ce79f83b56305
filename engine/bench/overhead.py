"""``hookmix bench overhead``: the engine against a plain PyTorch loop (and Lightning), side by side.

Every contestant trains its own copy of the same freshly built model (the engine's, copied before
the first step) on the same batches (the same data object, each with a generator seeded like the
engine's) with the same AdamW (the settings the engine's adamw plugin uses, fused kernel
included), interleaved in one process so that machine noise hits all alike. Each round runs one
step of every contestant, in a new order every round; reported: each one's median step time, and
the median over blocks of 10 consecutive rounds of its time / the plain loop's time in the same
rounds (:func:`block_ratios`). ``--interleave block`` gives every contestant a turn of ``BLOCK``
(10) consecutive steps per round instead, so that a step follows a step of its own loop, as in a
run, rather than another contestant's (whose caches it starts with); measured, it moves no ratio
beyond the noise but is noisier itself (docs/performance.md). The losses of every contestant must
equal the plain loop's at every step (≤ 1e-6; they are bit-identical).

Contestants: ``plain`` (written out below), ``plain copy`` (a second, identical plain loop: its ratio
shows how much two identical loops differ on this machine), ``hookmix`` (``Trainer.advance()``: hook dispatch,
per-term logging, the deferred non-finite check, a metrics record every 10 steps (``BLOCK``) to metrics.jsonl and
TensorBoard in a temporary local run directory, as a real run writes them), ``hookmix+N``
(the same with N no-op plugins implementing every per-step hook), and with ``--against
lightning`` Lightning Fabric and the Lightning Trainer (engine/bench/lightning.py).
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from engine.loop import Trainer
from engine.plugin import Plugin, hookimpl


def _noop_plugin(i: int) -> type[Plugin]:
    class NoOp(Plugin):
        """Implements every per-step hook and does nothing (overhead benchmark)."""

        name = f"noop{i}"

        @hookimpl
        def hookmix_aux_outputs(self, outputs):
            return None

        @hookimpl
        def hookmix_loss_terms(self, outputs):
            return None

        @hookimpl
        def hookmix_before_backward(self, loss):
            return None

        @hookimpl
        def hookmix_after_backward(self, model):
            return None

        @hookimpl
        def hookmix_after_optimizer_step(self, model):
            return None

        @hookimpl
        def hookmix_on_log(self, metrics):
            return None

    return NoOp


class LossProbe(Plugin):
    """Keeps the last micro-batch loss so the benchmark can compare it with the plain loop's."""

    name = "loss_probe"

    @hookimpl
    def hookmix_before_backward(self, loss):
        self.loss = loss  # a reference, no tensor op: read with .item() outside the timed step


WORKLOADS = {
    # the tiny GPT of the shakespeare-gpt recipe
    "gpt": (
        ["tinyshakespeare", "gpt"],
        {"tinyshakespeare": {"block_size": 64, "batch_size": 32}, "gpt": {"n_layer": 3, "n_head": 4, "n_embd": 96}},
    ),
    # an MLP on MNIST-1D: a sub-millisecond step, where per-step framework cost shows
    "mlp": (["mnist1d", "mlp"], {"mnist1d": {"batch_size": 100}, "mlp": {"hidden": [256, 256]}}),
    # a 40->8->10 MLP on 4 samples: almost no arithmetic, so the difference in step time is the
    # framework's own per-step cost in microseconds (not part of "both")
    "tiny": (["mnist1d", "mlp"], {"mnist1d": {"batch_size": 4}, "mlp": {"hidden": [8]}}),
}
ADAMW = {"lr": 1e-3, "schedule": "constant", "weight_decay": 0.0}
BLOCK = 10  # the engine contestants' log interval, and the rounds per ratio (see block_ratios)


def _engine(workload: str, noop: int) -> Trainer:
    """A set-up trainer writing its metrics (jsonl + TensorBoard) to a temporary local run directory,
    as a real run does; :func:`_discard` removes it."""
    base, configs = WORKLOADS[workload]
    noops = {cls.name: cls for cls in (_noop_plugin(i) for i in range(noop))}
    raw = {
        "name": "bench",
        "run": {
            "plugins": [*base, "adamw", "cross_entropy", "loss_probe", *noops],
            "steps": 10**6,
            "log_interval": BLOCK,
            "out": os.path.join(tempfile.mkdtemp(prefix="hookmix-bench-"), "run"),
        },
        "plugins": {**configs, "adamw": ADAMW},
    }
    trainer = Trainer.from_recipe(raw, plugins=[*noops.values(), LossProbe], quiet=True)
    trainer.setup()
    return trainer


def _discard(trainer: Trainer) -> None:
    trainer._close(failed=False)  # metrics closed, run directory released
    shutil.rmtree(os.path.dirname(trainer.recipe.run.out), ignore_errors=True)


def _plain_step(model: torch.nn.Module, adamw: dict, data, generator: torch.Generator):
    optimizer = torch.optim.AdamW(model.parameters(), **adamw)

    def step() -> torch.Tensor:
        batch = data.train_batch(generator)
        logits = model(batch["input"])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["target"].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def _engine_step(trainer: Trainer):
    def step() -> torch.Tensor:
        trainer.advance()
        return trainer.manager.plugins["loss_probe"].loss

    return step


def compare(
    workload: str,
    steps: int,
    noop: int,
    lightning: bool,
    warmup: int = 5,
    clock=time.perf_counter,
    rotate: bool = False,
    turn: int = 1,
) -> dict:
    """Rounds of turns: in each round every contestant trains ``turn`` consecutive steps, timed; returns
    each one's median step time, its ratios to the plain loop and the loss agreement."""
    engine = _engine(workload, 0)
    state = engine.state
    opt = state.optimizer.defaults  # the adamw plugin's settings, fused kernel included
    adamw = {k: opt[k] for k in ("lr", "betas", "eps", "weight_decay", "fused")}

    def generator() -> torch.Generator:  # the engine seeds its data order like this
        return torch.Generator().manual_seed(state.run.seed + 1)

    engines = [engine] + ([_engine(workload, noop)] if noop else [])
    contestants = {
        "plain": _plain_step(copy.deepcopy(state.model), adamw, state.data, generator()),
        # the same plain loop again: how far two identical loops differ here (the noise floor)
        "plain copy": _plain_step(copy.deepcopy(state.model), adamw, state.data, generator()),
        "hookmix": _engine_step(engine),
    }
    if noop:
        contestants[f"hookmix+{noop}"] = _engine_step(engines[1])
    if lightning:
        from engine.bench.lightning import fabric_step

        contestants["fabric"] = fabric_step(copy.deepcopy(state.model), adamw, state.data, generator())
    times: dict[str, list[float]] = {name: [] for name in contestants}  # seconds per turn, timed rounds
    shuffle = random.Random(0)
    max_diff = {name: 0.0 for name in contestants}
    warm, rounds = -(-warmup // turn), -(-steps // turn)  # rounds holding at least ``warmup`` / ``steps`` steps

    def one_round(i: int, trainer_losses: list[float] | None = None) -> None:
        took, losses = run_round(contestants, i, None if rotate else shuffle, clock, turn)
        if i >= warm:
            for name, seconds in took.items():
                times[name].append(seconds)
        if trainer_losses is not None:
            losses["trainer"] = trainer_losses
        for name, values in losses.items():
            max_diff[name] = max(max_diff.get(name, 0.0), *(abs(a - b) for a, b in zip(values, losses["plain"])))

    if lightning:
        from engine.bench.lightning import run_trainer

        turn_losses: list[float] = []

        def each_trainer_step(i: int, loss: torch.Tensor) -> None:  # the Trainer has its own loop: it drives
            turn_losses.append(loss.item())
            if len(turn_losses) == turn:  # its turn is over: the other contestants' turns
                one_round(i // turn, turn_losses[:])
                turn_losses.clear()

        step_times = run_trainer(
            copy.deepcopy(state.model), adamw, state.data, generator(), (warm + rounds) * turn, each_trainer_step, clock
        )
        times["trainer"] = turn_times(step_times, turn, range(warm, warm + rounds))
    else:
        for i in range(warm + rounds):
            one_round(i)
    for trainer in engines:
        _discard(trainer)
    plain = times["plain"]
    return {
        "workload": workload,
        "ms": {n: 1e3 * statistics.median(t) / turn for n, t in times.items()},
        "ratio": {n: statistics.median(block_ratios(t, plain, max(1, BLOCK // turn))) for n, t in times.items()},
        "max_loss_diff": max(max_diff.values()),
    }


def turn_times(step_times: list[float], turn: int, rounds: range) -> list[float]:
    """The Trainer's time per turn of ``turn`` steps in ``rounds``, from its step times (``step_times[k]``:
    its step k + 1; step 0 has no start mark, so round 0 cannot be timed and is a warm-up round)."""
    assert rounds.start >= 1
    return [sum(step_times[r * turn - 1 : (r + 1) * turn - 1]) for r in rounds]


def run_round(
    contestants: dict, i: int, shuffle: random.Random | None, clock=time.perf_counter, turn: int = 1
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """One turn of every contestant, ``turn`` consecutive steps timed together: (seconds, the turn's
    losses) by name. The order is new every round (``shuffle``), or rotated by ``i`` without one: a
    step runs measurably faster after a step like itself, and in a rotated order each contestant
    always follows the same one (docs/performance.md)."""
    order = list(contestants.items())
    if shuffle is None:
        order = order[i % len(order) :] + order[: i % len(order)]
    else:
        shuffle.shuffle(order)
    took, losses = {}, {}
    for name, step in order:
        t0 = clock()
        values = [step() for _ in range(turn)]
        took[name] = clock() - t0
        losses[name] = [value.item() for value in values]
    return took, losses


def block_ratios(times: list[float], plain: list[float], block: int = BLOCK) -> list[float]:
    """Time over ``block`` consecutive rounds / the plain loop's time over the same rounds, per block.

    Why a log interval (``BLOCK`` steps) per ratio and not one step: every block then holds exactly
    one of the engine's metrics records, so its cost is charged at its true share. A median over
    single steps would drop the record's step as an outlier but still shift the median by an amount
    set by the machine's noise, not by the record's cost (the record's step is 1 in 10: the median
    becomes the 55th percentile of the other steps). With turns of ``BLOCK`` steps a round is such a
    block (``block=1``). Full blocks only (all rounds as one block if there are fewer)."""
    starts = range(0, len(times) - block + 1, block) if len(times) >= block else [0]
    return [sum(times[i : i + block]) / sum(plain[i : i + block]) for i in starts]


def repeated(
    workload: str,
    steps: int,
    noop: int,
    lightning: bool,
    repeats: int,
    clock=time.perf_counter,
    rotate: bool = False,
    turn: int = 1,
) -> dict:
    """``compare`` with fresh contestants ``repeats`` times; the medians over repeats.

    Why: a contestant's step time depends a little (1-3 % on a 2 ms step) on where its model,
    optimizer state and Python objects happen to lie in memory, a bias that more rounds do not
    average out (it is the same in every round) but new instances do."""
    runs = [compare(workload, steps, noop, lightning, clock=clock, rotate=rotate, turn=turn) for _ in range(repeats)]
    names = list(runs[0]["ms"])
    return {
        "workload": workload,
        "ms": {n: statistics.median(r["ms"][n] for r in runs) for n in names},
        "ratio": {n: statistics.median(r["ratio"][n] for r in runs) for n in names},
        "ratios": {n: [r["ratio"][n] for r in runs] for n in names},
        "max_loss_diff": max(r["max_loss_diff"] for r in runs),
    }


def overhead(
    steps: int = 30,
    noop: int = 8,
    workload: str = "both",
    against: str | None = None,
    clock: str = "wall",
    repeats: int = 1,
    order: str = "shuffle",
    interleave: str = "step",
) -> int:
    """Print the table; ``clock="cpu"`` times this thread's CPU time, which ignores time the process
    waits for a core on a loaded machine (valid when torch runs on this one thread). ``repeats``:
    fresh contestants each time (see :func:`repeated`). ``interleave``: "step" (each contestant's turn
    in a round is one step) or "block" (``BLOCK`` consecutive steps, as a run trains them)."""
    lightning = against == "lightning"
    if clock == "cpu" and torch.get_num_threads() != 1:
        from engine.errors import BadInput

        raise BadInput(
            f"--clock cpu times this thread only but torch uses {torch.get_num_threads()} threads; "
            f"set OMP_NUM_THREADS=1 or use --clock wall"
        )
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    if lightning:
        from engine.bench.lightning import require_lightning

        require_lightning()
    turn = BLOCK if interleave == "block" else 1
    rows = [
        repeated(name, steps, noop, lightning, repeats, clock=timer, rotate=order == "rotate", turn=turn)
        for name in (["gpt", "mlp"] if workload == "both" else [workload])
    ]
    names = list(rows[0]["ms"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {clock} clock, {order}d order, turns of "
        f"{turn} step(s), {repeats} repeat(s) of {steps} timed steps after 5 warm-up; each cell: median step ms "
        f"(median over blocks of {BLOCK} steps of the time ratio to plain in the same rounds; with repeats, the "
        f"median over repeats)"
    )
    print("| workload | " + " | ".join(names) + " | max loss diff |")
    print("|---|" + "---|" * (len(names) + 1))
    for r in rows:
        cells = [f"{r['ms'][n]:.3f} ({r['ratio'][n]:.3f}×)" for n in names]
        print(f"| {r['workload']} | " + " | ".join(cells) + f" | {r['max_loss_diff']:.1e} |")
    if repeats > 1:
        for r in rows:
            print(
                f"{r['workload']} ratios per repeat: "
                + "; ".join(f"{n} " + " ".join(f"{x:.3f}" for x in r["ratios"][n]) for n in names if n != "plain")
            )
    ok = all(r["max_loss_diff"] <= 1e-6 for r in rows)
    if not ok:
        print("FAIL: some contestant's losses differ from the plain loop's by more than 1e-6")
    return 0 if ok else 1
