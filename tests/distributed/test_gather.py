"""``state.all_gather``: the differentiable gather of batch-coupled losses (plugin API 1.1), on 2 real gloo ranks.

What is checked, and the factor docs/distributed.md ("Batch-coupled losses") states:

- order and shapes: rank 0's rows first, ranks may hold different numbers of rows; world size 1: the identity;
- the backward is the gather's adjoint: rank r's rows receive the sum, over every rank, of the gradient that
  rank's loss sends to them;
- the factor: every rank computes the loss of the gathered (global) batch, so each rank's rows get W identical
  gradients (x W), and DDP averages over the W ranks (/ W): the DDP gradient is the 1-process gradient with no
  rescaling of the loss (factor 1). A home-made gather that keeps only the rank's own rows differentiable (the
  common "replace my slice" trick) gives 1/W of it: such a loss must be multiplied by W. Both are measured here
  in float64 (agreement to 1e-12), and the loss of the rank's share alone is shown to be a different gradient;
- through the engine: a toy batch-coupled loss trained on 2 ranks follows the 1-rank run within 1e-5 (toy SGD in
  float32: the ranks' gradient sum is rounded differently from one batch's; measured 5e-7), while the same
  loss on each rank's share only is off by more than 1e-3 (the control).

The script part (``python -m torch.distributed.run ... test_gather.py OUT``) is the 2-rank worker of the first
three checks.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import attrs
import pytest
import torch

from engine import Plugin, field, hookimpl
from engine.testing import TOY, train
from engine.testing.distributed import assert_close_results, max_difference, run_distributed

W = 2
ROWS = [2, 3]  # rows held by rank 0 and rank 1: unequal on purpose


def coupled(z: torch.Tensor) -> torch.Tensor:
    """A loss that couples the rows of a batch: per-class spread of the probabilities, plus a batch log-sum-exp."""
    return z.softmax(1).std(0).sum() + torch.logsumexp(z.sum(1), 0)


# --- the 2-rank worker (a script under torch.distributed.run) ------------------------------------------------


def _worker(out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from engine.distributed.env import read_env
    from engine.distributed.group import Group

    gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
    group = Group(read_env(), "gloo", 60.0)
    r = group.rank
    res: dict = {}
    try:
        # order, unequal rows, adjoint: rank r's loss weighs the gathered rows by (r + 1) * w
        x = (torch.arange(ROWS[r] * 3, dtype=torch.float64).reshape(-1, 3) + 100 * r).requires_grad_()
        g = group.all_gather(x)
        w = torch.arange(g.numel(), dtype=torch.float64).reshape(g.shape)
        (g * w * (r + 1)).sum().backward()
        res["gathered"], res["grad"] = g.detach(), x.grad

        # the factor under DDP: the same global batch, each rank its contiguous share
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3).double()
        inputs = torch.randn(8, 4, dtype=torch.float64)
        share = inputs[r * 4 : (r + 1) * 4]
        ddp = DistributedDataParallel(model)

        def grads_of(loss_of_share) -> list[torch.Tensor]:
            ddp.zero_grad()
            loss_of_share(ddp(share)).backward()
            return [p.grad.clone() for p in model.parameters()]

        def own_rows_only(z: torch.Tensor) -> torch.Tensor:
            whole = z.new_empty((W * z.shape[0], *z.shape[1:]))
            gather_into(whole, z.detach().contiguous())
            return torch.cat([whole[: r * 4], z, whole[(r + 1) * 4 :]])

        res["adjoint"] = grads_of(lambda z: coupled(group.all_gather(z)))
        res["own_rows_only"] = grads_of(lambda z: coupled(own_rows_only(z)))
        res["share_only"] = grads_of(coupled)
        model.zero_grad()
        coupled(model(inputs)).backward()  # one process: the whole batch, no DDP
        res["one_process"] = [p.grad.clone() for p in model.parameters()]
        torch.save(res, os.path.join(out, f"rank{r}.pt"))
        # the DDP reducer holds the group and its threads: release it before the group goes (as the engine
        # does), or the process may abort at exit ("terminate called without an active exception")
        ddp = None
        gc.collect()
    finally:
        group.close(sync=True)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("gather")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([root, *sys.path]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(W)]
    proc = subprocess.run([*cmd, os.path.abspath(__file__), str(out)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(W)]


def test_rows_are_concatenated_in_rank_order_with_unequal_counts(ranks):
    expected = torch.cat(
        [torch.arange(n * 3, dtype=torch.float64).reshape(-1, 3) + 100 * r for r, n in enumerate(ROWS)]
    )
    for res in ranks:
        assert torch.equal(res["gathered"], expected)


def test_each_rank_gets_the_sum_over_ranks_of_its_rows_gradients(ranks):
    w = torch.arange(sum(ROWS) * 3, dtype=torch.float64).reshape(-1, 3)
    total = sum(r + 1 for r in range(W))  # rank r's loss weighs by (r + 1) * w
    for r, res in enumerate(ranks):
        lo = sum(ROWS[:r])
        assert torch.equal(res["grad"], total * w[lo : lo + ROWS[r]])


def test_a_loss_on_the_gathered_batch_needs_no_rescaling_under_ddp(ranks):
    one = ranks[0]["one_process"]
    for res in ranks:  # DDP leaves the same averaged gradient on every rank
        for got, want in zip(res["adjoint"], one):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)  # factor 1
        for got, want in zip(res["own_rows_only"], one):
            torch.testing.assert_close(got * W, want, rtol=1e-12, atol=1e-12)  # such a gather needs a factor W
        worst = max((got - want).abs().max().item() for got, want in zip(res["share_only"], one))
        assert worst > 1e-3  # the loss of each rank's share is another function: no factor repairs it


def test_world_size_one_is_the_identity():
    result = train(TOY, steps=1)
    t = torch.randn(3, 2, requires_grad=True)
    assert result.state.all_gather(t) is t
    with pytest.raises(ValueError, match="at least one dimension"):
        result.state.all_gather(torch.tensor(1.0))
    with pytest.raises(ValueError, match="at most 8 dimensions"):  # refused alike on any world size
        result.state.all_gather(torch.zeros([1] * 9))


# --- through the engine: a toy batch-coupled loss plugin -----------------------------------------------------


@attrs.define
class CoupledConfig:
    gather: bool = field(True, "compute the loss on the global batch (state.all_gather); false: on this rank's share")


class Coupled(Plugin):
    """Test loss term `coupled`: a batch-coupled function of the student's logits."""

    name = "coupled"
    Config = CoupledConfig

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        z = outputs["logits"]
        return {"coupled": coupled(state.all_gather(z) if self.config.gather else z)}


STEPS = 4
RUN = {"threads": 1, "eval_interval": 2}


def test_a_batch_coupled_loss_on_two_ranks_follows_the_one_rank_run():
    cases = [
        dict(plugins=[*TOY, Coupled], config={"coupled": {"gather": gather}}, steps=STEPS, **RUN)
        for gather in (True, False)
    ]
    gathered, share = run_distributed(cases, nproc=W)
    single = train([*TOY, Coupled], {"coupled": {"gather": True}}, STEPS, **RUN)
    one = {"model": single.model.state_dict(), "modules": single.state.modules.state_dict(), "metrics": single.metrics}
    assert gathered["checks"] == share["checks"] == STEPS  # weights bit-identical on both ranks after every step
    assert_close_results(gathered, one, 1e-5)
    assert max_difference(share, one)[0] > 1e-3


if __name__ == "__main__":
    _worker(sys.argv[1])
