"""CPU investigation of the low-bound plateau and the small logits (docs/lipschitz-cpu.md).

    python tests/perf/lipschitz_cpu.py METHOD VALUE STEPS [KEY=VALUE ...] [--eval N] [--jsonl FILE]
    python tests/perf/lipschitz_cpu.py recipe NAME STEPS [KEY=VALUE ...] [--eval N] [--jsonl FILE]
    python tests/perf/lipschitz_cpu.py baselines     # unigram / bigram accuracy and loss on val

The first form trains one setting of ``hookmix lipschitz-sweep`` (the ``shakespeare-lipschitz-cpu``
recipe with METHOD's optimizer/constraint and its swept key = VALUE, e.g. "Muon + spectral soft
cap" 1.0); the second trains any recipe by name or path (e.g. the mix, ``shakespeare-lipschitz-kd-ls``,
run from the directory its ``plugins.teacher.run`` is relative to). Both run STEPS steps on one
thread, with recipe overrides (``plugins.muon.lr=0.4``, ``run.plugins-=logit_std``), and evaluate
every N steps (default STEPS / 5), with the ``logit_probe`` plugin below added. Each evaluation
adds, on the validation batches:

- ``probe/logit_rms``: RMS of the logits over positions and the vocabulary;
- ``probe/logit_std``: the per-position standard deviation over the vocabulary, averaged;
- the RMS the bound allows is the certified bound K itself (``lipschitz/bound``): with no biases
  f(0) = 0, and K bounds tokens -> logits in the max-over-positions RMS norm, so no position's
  logit RMS can exceed K (one-hot tokens have norm 1 in the bound's convention: ‖E‖ is its first
  factor);
- ``probe/max_position_rms``: the largest per-position logit RMS seen (must be <= K);
- ``probe/best_scale``, ``probe/loss_at_best_scale``: the single factor s (on a grid 1/4 .. 64)
  that minimises the validation cross-entropy of s * logits, and that loss: how much of val/loss
  is the logits' scale rather than their order;
- with a ``teacher`` frozen module (distillation recipes): ``probe/teacher_logit_rms`` and
  ``probe/teacher_logit_std``, the same statistics of the teacher's logits (computed once).

Prints one JSON line per evaluation (and appends it to --jsonl): the probe's metrics, val/accuracy,
val/loss, lipschitz/bound, and (recipe mode) the run's own logit_std/* and teacher/* metrics, which
are means over the last log interval of training batches.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

import torch

from engine import Plugin, hookimpl
from engine.config.recipe import apply_overrides, read_recipe, resolve
from engine.config.registry import Registry
from engine.loop import Trainer

#: The factors tried by probe/best_scale: 2^(k/16) from 1/4 to 64.
SCALES = [2 ** (k / 16) for k in range(-32, 97)]


def logit_stats(logits: torch.Tensor) -> tuple[float, float, float]:
    """(RMS over positions and vocabulary, mean per-position std over the vocabulary, largest per-position RMS)."""
    per_position = logits.pow(2).mean(-1)
    return (per_position.mean().sqrt().item(), logits.std(-1).mean().item(), per_position.max().sqrt().item())


class LogitProbe(Plugin):
    """Eval metrics: logit RMS / std over the validation batches, the best single scale, the teacher's."""

    name = "logit_probe"

    def __init__(self) -> None:
        super().__init__()
        self.teacher: dict[str, float] | None = None

    @hookimpl
    def hookmix_eval_metrics(self, model, state):
        with torch.no_grad():
            batches = list(state.data.val_batches())
            logits = torch.cat([model(b["input"]).float().flatten(0, -2) for b in batches])
            target = torch.cat([b["target"].reshape(-1) for b in batches])
            rms, std, worst = logit_stats(logits)
            losses = [torch.nn.functional.cross_entropy(s * logits, target).item() for s in SCALES]
            best = min(range(len(SCALES)), key=losses.__getitem__)
            out = {
                "probe/logit_rms": rms,
                "probe/logit_std": std,
                "probe/max_position_rms": worst,
                "probe/best_scale": SCALES[best],
                "probe/loss_at_best_scale": losses[best],
            }
            teacher = state.frozen_modules.get("teacher")
            if teacher is not None and self.teacher is None:  # frozen: once per run
                t_rms, t_std, _ = logit_stats(torch.cat([teacher(b["input"]).float() for b in batches]))
                self.teacher = {"probe/teacher_logit_rms": t_rms, "probe/teacher_logit_std": t_std}
        return {**out, **(self.teacher or {})}


def ngram_baselines() -> dict:
    """Unigram and bigram models counted on the train split, scored on every val position:
    argmax accuracy and cross-entropy (add-one smoothing), the ceilings of context-free models."""
    from plugins.core.data import DEFAULT_TEXT_URL, CharText, load_text

    data = CharText(load_text(DEFAULT_TEXT_URL), block_size=64, batch_size=1)
    v = len(data.itos)
    tr, va = data.train_data, data.val_data
    uni = torch.bincount(tr, minlength=v).double() + 1
    bi = (
        torch.zeros(v, v, dtype=torch.float64).index_put_(
            (tr[:-1], tr[1:]), torch.ones(len(tr) - 1, dtype=torch.float64), accumulate=True
        )
        + 1
    )
    prev, nxt = va[:-1], va[1:]
    out = {"vocab": v, "val_positions": len(nxt)}
    out["unigram_acc"] = (nxt == uni.argmax()).double().mean().item()
    out["unigram_ce"] = -(uni / uni.sum()).log()[nxt].mean().item()
    out["bigram_acc"] = (bi.argmax(1)[prev] == nxt).double().mean().item()
    out["bigram_ce"] = -(bi / bi.sum(1, keepdim=True)).log()[prev, nxt].mean().item()
    logp = (bi / bi.sum(1, keepdim=True)).log()  # the bigram's own logits: their RMS per context
    centred = logp - logp.mean(1, keepdim=True)
    out["bigram_logit_rms"] = centred.pow(2).mean(1).sqrt()[prev].mean().item()
    return out


#: The metrics each row prints (those the run has), then every logit_std/* and teacher/* metric.
ROW_KEYS = (
    "val/accuracy",
    "val/loss",
    "lipschitz/bound",
    "probe/logit_rms",
    "probe/logit_std",
    "probe/max_position_rms",
    "probe/best_scale",
    "probe/loss_at_best_scale",
    "probe/teacher_logit_rms",
    "probe/teacher_logit_std",
)
ROW_PREFIXES = ("logit_std/", "teacher/")


def train_with_probe(raw: dict, label: dict, jsonl: str = "") -> None:
    """Train ``raw`` (its run.eval_interval set) with logit_probe added; one JSON row per evaluation."""
    registry = Registry({"logit_probe": LogitProbe})
    trainer = Trainer(resolve(raw["name"], raw, registry), registry, quiet=True)
    run = trainer.recipe.run
    trainer.setup()
    t0 = time.process_time()
    while trainer.state.step < run.steps:
        trainer.advance()
        step, m = trainer.state.step, trainer.last
        if step % run.eval_interval == 0 or step == run.steps:  # an evaluation just ran: trainer.last holds it
            row = {
                **label,
                "step": step,
                "cpu_s": round(time.process_time() - t0, 1),
                **{k: m[k] for k in ROW_KEYS if k in m},
                **{k: v for k, v in sorted(m.items()) if k.startswith(ROW_PREFIXES)},
            }
            line = json.dumps(row)
            print(line, flush=True)
            if jsonl:
                with open(jsonl, "a") as f:
                    f.write(line + "\n")
    trainer._close(failed=False)  # metrics closed, run directory released (as engine.bench does)


def main(argv: list[str]) -> int:
    from plugins.lipschitz.sweep import _recipe_raw

    if argv[:1] == ["baselines"]:
        print(json.dumps(ngram_baselines()))
        return 0

    recipe_mode = argv[:1] == ["recipe"]
    p = argparse.ArgumentParser(prog="lipschitz_cpu.py" + (" recipe" if recipe_mode else ""))
    if recipe_mode:
        argv = argv[1:]
        p.add_argument("recipe", help="a shipped recipe's name or a .toml path")
    else:
        p.add_argument("method")
        p.add_argument("value", type=float)
    p.add_argument("steps", type=int)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--eval", type=int, default=0)
    p.add_argument("--jsonl", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    every = args.eval or max(1, args.steps // 5)
    if recipe_mode:
        name, raw = read_recipe(args.recipe, Registry())
        raw["name"] = name
        raw["run"].update(
            steps=args.steps,
            threads=1,
            eval_interval=every,
            checkpoint_interval=0,
            out=f"memory://lipschitz-cpu-{uuid.uuid4().hex}",
        )  # keeps the recipe's log_interval
        label = {"recipe": name}
    else:
        raw = _recipe_raw(args.method, args.value, args.steps, 1)
        raw["run"].update(eval_interval=every, log_interval=every)
        label = {"method": args.method, "value": args.value}
    raw["run"]["plugins"].append("logit_probe")
    raw = apply_overrides(raw, args.overrides)
    train_with_probe(raw, {**label, "steps": args.steps, "overrides": args.overrides}, args.jsonl)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
