"""CPU investigation of the low-bound plateau and the small logits (docs/lipschitz-cpu.md).

    python tests/perf/lipschitz_cpu.py METHOD VALUE STEPS [KEY=VALUE ...] [--eval N] [--jsonl FILE]
    python tests/perf/lipschitz_cpu.py baselines     # unigram / bigram accuracy and loss on val

Trains one setting of ``hookmix lipschitz-sweep`` (the ``shakespeare-lipschitz-cpu`` recipe with
METHOD's optimizer/constraint and its swept key = VALUE, e.g. "Muon + spectral soft cap" 1.0) for
STEPS steps on one thread, with recipe overrides (``plugins.muon.lr=0.4``), and evaluates every N
steps (default STEPS / 5). Each evaluation adds, on the validation batches:

- ``probe/logit_rms``: RMS of the logits over positions and the vocabulary;
- ``probe/logit_std``: the per-position standard deviation over the vocabulary, averaged;
- the RMS the bound allows is the certified bound K itself (``lipschitz/bound``): with no biases
  f(0) = 0, and K bounds tokens -> logits in the max-over-positions RMS norm, so no position's
  logit RMS can exceed K (one-hot tokens have norm 1 in the bound's convention: ‖E‖ is its first
  factor);
- ``probe/max_position_rms``: the largest per-position logit RMS seen (must be <= K).

Prints one JSON line per evaluation (and appends it to --jsonl).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from engine import Plugin, hookimpl
from engine.loop import Trainer
from engine.recipe import apply_overrides, resolve
from engine.registry import Registry


class LogitProbe(Plugin):
    """Eval metrics: logit RMS / std over the validation batches."""

    name = "logit_probe"

    @hookimpl
    def hookmix_eval_metrics(self, model, state):
        sq = std = n = 0.0
        worst = 0.0
        with torch.no_grad():
            for batch in state.data.val_batches():
                logits = model(batch["input"]).float()
                per_position = logits.pow(2).mean(-1)  # mean over the vocabulary
                sq += per_position.sum().item()
                std += logits.std(-1).sum().item()
                n += per_position.numel()
                worst = max(worst, per_position.max().sqrt().item())
        return {"probe/logit_rms": (sq / n) ** 0.5, "probe/logit_std": std / n, "probe/max_position_rms": worst}


def ngram_baselines() -> dict:
    """Unigram and bigram models counted on the train split, scored on every val position:
    argmax accuracy and cross-entropy (add-one smoothing), the ceilings of context-free models."""
    from plugins.core.data import CharText, load_text, DEFAULT_TEXT_URL

    data = CharText(load_text(DEFAULT_TEXT_URL), block_size=64, batch_size=1)
    v = len(data.itos)
    tr, va = data.train_data, data.val_data
    uni = torch.bincount(tr, minlength=v).double() + 1
    bi = torch.zeros(v, v, dtype=torch.float64).index_put_((tr[:-1], tr[1:]), torch.ones(len(tr) - 1, dtype=torch.float64),
                                                          accumulate=True) + 1
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


def main(argv: list[str]) -> int:
    from plugins.lipschitz.sweep import _recipe_raw

    if argv[:1] == ["baselines"]:
        print(json.dumps(ngram_baselines()))
        return 0

    p = argparse.ArgumentParser(prog="lipschitz_cpu.py")
    p.add_argument("method")
    p.add_argument("value", type=float)
    p.add_argument("steps", type=int)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--eval", type=int, default=0)
    p.add_argument("--jsonl", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    raw = _recipe_raw(args.method, args.value, args.steps, 1)
    raw["run"]["eval_interval"] = args.eval or max(1, args.steps // 5)
    raw["run"]["log_interval"] = raw["run"]["eval_interval"]
    raw["run"]["plugins"].append("logit_probe")
    raw = apply_overrides(raw, args.overrides)
    registry = Registry({"logit_probe": LogitProbe})
    trainer = Trainer(resolve(raw["name"], raw, registry), registry, quiet=True)
    every = raw["run"]["eval_interval"]
    trainer.setup()
    t0 = time.process_time()
    while trainer.state.step < args.steps:
        trainer.advance()
        step, m = trainer.state.step, trainer.last
        if step % every == 0 or step == args.steps:  # an evaluation just ran: trainer.last holds it
            row = {"method": args.method, "value": args.value, "steps": args.steps, "overrides": args.overrides,
                   "step": step, "cpu_s": round(time.process_time() - t0, 1),
                   **{k: m[k] for k in ("val/accuracy", "val/loss", "lipschitz/bound", "probe/logit_rms",
                                        "probe/logit_std", "probe/max_position_rms") if k in m}}
            line = json.dumps(row)
            print(line, flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(line + "\n")
    trainer.progress.close()
    trainer.metrics_log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
