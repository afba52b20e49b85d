"""Training one cell on several processes with PyTorch's DistributedDataParallel, under torchrun.

    torchrun --nproc-per-node N -m harness run --cell ...

The rules, all explicit:
- The recipe's batch size is the *global* batch: each rank trains on its own contiguous 1/N of
  every batch of the shared epoch plan (a distributed sampler: disjoint shards, one permutation),
  so the learning rate stays the recipe's (no linear scaling is needed: the global batch is kept).
  The batch size must divide by N.
- Batch norm keeps per-rank statistics: every rank normalises with its own batch and keeps its own
  running buffers (DDP's buffer broadcast is off); rank 0's buffers are the ones evaluated and
  checkpointed. `--sync-bn` (CUDA) computes batch statistics over the global batch instead. With
  batch norm, N ranks are not bit-for-bit one process; without it (the MLPs), they are up to rounding.
- The backend follows the device the run resolves: gloo for `--device cpu` (even on a GPU machine),
  nccl for CUDA, each rank on the GPU of its LOCAL_RANK; `--device cuda:N` and a LOCAL_RANK with
  no GPU of its own are refused. Collectives time out (`KD_HARNESS_DIST_TIMEOUT` seconds, default
  1800) instead of hanging, and the process group is destroyed when the command ends.
- Rank 0 alone touches MLflow, writes checkpoints and the teacher cache, and evaluates; every rank
  reads the same checkpoint to resume. An error on rank 0 before it hands the ranks their decision
  is handed to them instead, so that no rank waits for a broadcast that never comes.
- A stop request or a non-finite loss on any rank stops every rank at the same step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

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


def from_environment(device: str = "auto") -> Context:
    """The torchrun context (RANK, WORLD_SIZE, LOCAL_RANK), its process group initialised once, on the
    backend of the device the run asks for (`--device`)."""
    from harness.errors import UserError

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    context = Context(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda:"):
        raise UserError(f"--device {device} under torchrun: each rank takes the GPU of its local rank; "
                        "use --device cuda (or auto) and CUDA_VISIBLE_DEVICES to choose the GPUs")
    on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if on_cuda and context.local_rank >= torch.cuda.device_count():
        raise UserError(f"local rank {context.local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                        "start at most that many processes per node (torchrun --nproc-per-node)")
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("KD_HARNESS_DIST_TIMEOUT", "1800")))
        if on_cuda:
            torch.cuda.set_device(context.local_rank)
            dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", context.local_rank))
        else:
            dist.init_process_group("gloo", timeout=timeout)
    return context


def shutdown() -> None:
    """Destroy the process group (at the end of a torchrun command, whatever its outcome)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
