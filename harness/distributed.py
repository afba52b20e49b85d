"""Training one cell on several processes with PyTorch's DistributedDataParallel, under torchrun.

    torchrun --nproc-per-node N -m harness run --cell ...

The rules, all explicit:
- The recipe's batch size is the *global* batch: each rank trains on its own contiguous 1/N of
  every batch of the shared epoch plan (a distributed sampler: disjoint shards, one permutation),
  so the learning rate stays the recipe's (no linear scaling is needed: the global batch is kept).
  The batch size must divide by N.
- Batch norm keeps per-rank statistics (no SyncBatchNorm), as DDP does by default: with batch norm,
  N ranks are not bit-for-bit one process; without it (the MLPs), they are up to rounding.
- Rank 0 alone touches MLflow, writes checkpoints and the teacher cache, and evaluates; every rank
  reads the same checkpoint to resume.
- A stop request or a non-finite loss on any rank stops every rank at the same step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def params(self) -> dict:
        if not self.enabled:
            return {}
        return {"distributed.world_size": self.world_size, "distributed.backend": dist.get_backend(),
                "distributed.lr_rule": "recipe batch = global batch; lr unchanged"}


SINGLE = Context()


def from_environment() -> Context:
    """The torchrun context (RANK, WORLD_SIZE, LOCAL_RANK), its process group initialised once."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    context = Context(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend)
    return context


def broadcast(context: Context, value=None):
    """Rank 0's `value`, on every rank."""
    if not context.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(context: Context, *flags: bool, device: torch.device) -> list[bool]:
    """For each flag: is it set on some rank? (one small all-reduce)"""
    if not context.enabled:
        return list(flags)
    values = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def sum_over_ranks(context: Context, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor summed over the ranks (every rank holds the same keys, in the same order)."""
    if not context.enabled or not values:
        return values
    stacked = torch.stack([v.float() for v in values.values()])
    dist.all_reduce(stacked)
    return dict(zip(values, stacked))
