"""Several processes of one `radproto train` (torchrun / accelerate, WORLD_SIZE > 1).

Each process takes its share of every step's micro-batches and DDP averages the gradients;
only rank 0 logs and saves. The helpers here reduce plain numbers over the ranks, so that
every rank takes the same decisions (one clock, one stop).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun / accelerate launched us into (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def all_sum(values: list[float], dist_info: Dist) -> list[float]:
    return _all_reduce(values, dist_info, "SUM")


def all_max(values: list[float], dist_info: Dist) -> list[float]:
    return _all_reduce(values, dist_info, "MAX")


def any_rank(flag: bool, dist_info: Dist) -> bool:
    return bool(all_sum([1.0 if flag else 0.0], dist_info)[0]) if dist_info.world > 1 \
        else flag


def _all_reduce(values: list[float], dist_info: Dist, op: str) -> list[float]:
    if dist_info.world <= 1:
        return values
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    return tensor.tolist()


def shutdown(dist_info: Dist) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
