"""``hookmix lipschitz-check``: a run's certified Lipschitz bound beside empirical lower estimates."""

from __future__ import annotations

import math

import torch

from engine import BadInput


def check_arguments(p) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory of a hookmix run with a checkpoint")
    p.add_argument("--examples", type=int, default=4, help="validation inputs to probe (default 4)")
    p.add_argument("--iters", type=int, default=20, help="ascent / power-iteration steps per probe")
    p.add_argument("--tokens", type=int, default=4, help="transformer: output tokens probed per sequence")
    p.add_argument("--seq-len", type=int, default=32, help="transformer: probe sequence length (<= block size)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def load_run(run_dir_url: str):
    """(recipe table, model with the latest checkpoint's weights, data, step) of a finished/interrupted run."""
    from engine import Registry, open_run

    run = open_run(run_dir_url)
    built = run.build(Registry(), torch.device("cpu"))
    model = built.model
    if not hasattr(model, "certified_bound"):
        raise BadInput(
            f"the model of {run_dir_url} ({type(model).__name__}) has no certified Lipschitz bound; "
            f"use lipschitz_gpt or lipschitz_mlp"
        )
    return built.state.recipe, model.eval(), built.data, run.step


def empirical_estimate(
    model, data, examples: int = 4, iters: int = 20, tokens: int = 4, seq_len: int = 32
) -> dict[str, float]:
    """Empirical lower estimates of the Lipschitz constant, in the norm the certificate is read in.

    Transformer: embedded sequence -> logits, max-over-tokens RMS (certificate without the embedding
    norm). MLP: input -> logits, RMS -> RMS. Returns the largest local Jacobian estimate and the largest
    finite ratio over random pairs."""
    from .empirical import random_pair_ratio, rms_jacobian_norm, sequence_jacobian_norm
    from .models import LipschitzGPT

    batch = next(iter(data.val_batches()))
    x = batch["input"][:examples]
    jac, pairs = 0.0, 0.0
    if isinstance(model, LipschitzGPT):
        for blk in model.blocks:
            blk.attn.attn_impl = "math"  # forward-mode AD (jvp) support on every backend
        x = x[:, : min(seq_len, model.block_size, x.shape[1])]
        fn = model.forward_embedded
        with torch.no_grad():
            emb = model.embed(x)
        T = emb.shape[1]
        probe = sorted({T - 1 - i * max(1, T // max(tokens, 1)) for i in range(tokens)} & set(range(T)))
        for i in range(emb.shape[0]):
            e = emb[i : i + 1].detach()
            jac = max(jac, sequence_jacobian_norm(fn, e, tokens=probe, iters=iters, seed=i))
            pairs = max(pairs, random_pair_ratio(fn, e, n_pairs=16, radius=0.05, seed=i))
        certified = model.certified_bound(include_embedding=False)
        what = "embedded sequence -> logits (max-over-tokens RMS)"
    else:
        x = x.flatten(1).float()
        for i in range(x.shape[0]):
            xi = x[i : i + 1]
            jac = max(jac, rms_jacobian_norm(model, xi, iters=iters, seed=i))
            pairs = max(pairs, random_pair_ratio(model, xi, n_pairs=64, radius=0.05, seed=i))
        certified = model.certified_bound()
        what = "input -> logits (RMS -> RMS)"
    return {"certified": float(certified), "jacobian": jac, "pairs": pairs, "what": what}


def check(args) -> int:
    import warnings

    torch.set_num_threads(max(1, args.threads))
    recipe, model, data, step = load_run(args.run_dir)
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=DeprecationWarning)
    est = empirical_estimate(model, data, args.examples, args.iters, args.tokens, args.seq_len)
    print(f"run {args.run_dir} (recipe {recipe.name}, step {step}, {type(model).__name__})")
    print(f"  norm: {est['what']}")
    print(f"  certified bound (measured norms): {est['certified']:.6g}")
    if hasattr(model, "embed"):
        print(f"  certified bound tokens -> logits (x max embedding row RMS): {model.certified_bound():.6g}")
    print(f"  empirical, local Jacobian (max over probes): {est['jacobian']:.6g}")
    print(f"  empirical, random pairs (max ratio):         {est['pairs']:.6g}")
    emp = max(est["jacobian"], est["pairs"])
    ok = emp <= est["certified"] * (1 + 1e-4)
    ratio = est["certified"] / emp if emp > 0 else math.inf
    print(f"  certified / empirical = {ratio:.4g}  ({'OK: certified >= empirical' if ok else 'VIOLATED'})")
    return 0 if ok else 1


__all__ = ["check", "empirical_estimate", "load_run"]
