"""Worker of test_muon_update_under_fsdp_equals_unsharded (run by torch.distributed.run, 2 ranks, gloo).

For each shape: one torch.optim.Muon step on a weight row-sharded by fully_shard (a DTensor) and on the
same weight in one process, with the same gradient. The sharded update must equal the unsharded one up
to bfloat16 rounding (Muon's Newton-Schulz runs in bf16; DTensor reduces the partial matmul products
across ranks in another order): at most 10% of the update's largest entry (measured, printed by this
worker: 0.5-5.4%). Orthogonalising each rank's rows on their own, what a
shard-local Muon would do, must differ by at least 20% (measured 23-74%), so the check can fail.
"""

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

SHAPES = [(128, 40), (128, 128), (10, 128), (7, 5)]  # tall, square, wide (the head), uneven rows


def muon_update(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(weight)
    lin.weight.grad = grad.clone()
    torch.optim.Muon(lin.parameters(), lr=0.1, adjust_lr_fn="original").step()
    return lin.weight.detach() - weight


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for shape in SHAPES:
        torch.manual_seed(0)
        weight, grad = torch.randn(shape) * 0.1, torch.randn(shape)
        lin = torch.nn.Linear(shape[1], shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(weight)
        fully_shard(lin)
        assert isinstance(lin.weight, DTensor) and lin.weight.to_local().shape[0] < shape[0]
        lin.weight.grad = distribute_tensor(grad, lin.weight.device_mesh, lin.weight.placements)
        torch.optim.Muon(lin.parameters(), lr=0.1, adjust_lr_fn="original").step()
        sharded = lin.weight.full_tensor() - weight
        full = muon_update(weight, grad)
        per_shard = torch.cat([muon_update(w, g) for w, g in zip(torch.chunk(weight, world), torch.chunk(grad, world))])
        scale = full.abs().max().item()
        diff = (sharded - full).abs().max().item() / scale
        local = (per_shard - full).abs().max().item() / scale
        assert diff <= 0.10, f"{shape}: sharded Muon update differs by {diff:.3f} of the update"
        assert local >= 0.20, f"{shape}: shard-local orthogonalisation differs by only {local:.3f}"
        if rank == 0:
            print(f"shape {shape}: sharded vs unsharded {diff:.4f}, shard-local vs unsharded {local:.4f}", flush=True)
    # both ranks done before either tears its side down (a rank still talking to a peer that exited can
    # abort in gloo's teardown: "terminate called without an active exception"); then release the
    # modules holding the mesh before the group goes
    dist.barrier()
    del lin
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
