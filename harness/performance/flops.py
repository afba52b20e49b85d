"""The analytic side of `list --estimate`: what one training step costs, counted rather than timed.

Per network, once: its forward (eval, no grad: a teacher's) and its forward and backward (train: a
student's or a teacher's in training) on a batch of two of the dataset's images, counted with
torch.utils.flop_counter (the convolutions' and matrix products' FLOPs) and in aten operations (each
about one kernel launch on a GPU). The model is built on the meta device and materialised
uninitialised on the CPU: the counts need shapes, not values. A target turns the counts into time:
FLOPs / its sustained FLOP/s + operations x its seconds per operation (the host's dispatch, which bounds
small networks on a GPU). A method's own modules and losses, data loading and evaluation are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from harness.models import build_model
from harness.spec.schema import DatasetSpec, ModelSpec

BATCH = 2


@dataclass(frozen=True)
class Target:
    name: str
    flops: float  # sustained FLOP/s on these networks' convolutions and matrix products
    seconds_per_op: float  # per aten operation: launch and dispatch
    source: str


# A GPU's sustained figure is an assumed 15% of its dense TF32 tensor-core peak (PyTorch lets cuDNN's
# convolutions use TF32 by default), and eager PyTorch's ~8 µs per operation: neither was measured
# here (no GPU was lent), so `--for h100` is a plan, within perhaps 2x. The CPU's is measured.
TARGETS = {
    "h100": Target("NVIDIA H100 SXM", 0.15 * 494.7e12, 8e-6,
                   "NVIDIA H100 datasheet: TF32 tensor core 494.7 TFLOP/s dense; 15% of it assumed sustained, "
                   "8 µs per operation assumed"),
    "a100": Target("NVIDIA A100", 0.15 * 156e12, 8e-6,
                   "NVIDIA A100 datasheet: TF32 tensor core 156 TFLOP/s dense; 15% of it assumed sustained, "
                   "8 µs per operation assumed"),
    "cpu": Target("2-core AVX2 CPU (AMD EPYC)", 13.5e9, 0.0,
                  "measured: results/perf/record.md, kd on mnist/resnet32-resnet14 at 789.8 ms per step (fp32, "
                  "2 cores), against this module's count of that step (10.7 GFLOP)"),
}


class OpCount(TorchDispatchMode):
    """Counts the aten operations run under it."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class Cost:
    """Per image: FLOPs and operations (the latter per batch) of a forward, and of a training step."""

    forward_flops: float
    forward_ops: int
    train_flops: float
    train_ops: int


def counted(step) -> tuple[float, int]:
    flops, ops = FlopCounterMode(display=False), OpCount()
    with flops, ops:
        step()
    return flops.get_total_flops() / BATCH, ops.ops


def model_cost(model: ModelSpec, dataset: DatasetSpec) -> Cost:
    with torch.device("meta"):
        net = build_model(model, dataset)
    net = net.to_empty(device="cpu")  # no initialisation computed
    for tensor in [*net.parameters(), *net.buffers()]:
        tensor.detach().zero_()  # defined values: no NaN or denormal slows the count down
    x = torch.zeros(BATCH, dataset.in_chans, dataset.img_size, dataset.img_size)

    def forward():
        net.eval()
        with torch.no_grad():
            net(x)

    def train():
        net.train()
        net(x).sum().backward()

    return Cost(*counted(forward), *counted(train))


def step_seconds(batch_size: int, student: Cost, teachers: list[Cost], target: Target) -> tuple[float, float]:
    """(FLOPs, seconds) of one training step on `target`: the student's forward and backward, each
    teacher's forward."""
    flops = batch_size * (student.train_flops + sum(t.forward_flops for t in teachers))
    ops = student.train_ops + sum(t.forward_ops for t in teachers)
    return flops, flops / target.flops + ops * target.seconds_per_op
