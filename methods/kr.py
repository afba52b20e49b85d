"""Knowledge representing (Liu et al., KR). Both copies of the paper lost every equation; this
is a reading of its text, every choice exposed (docs/methods/kr.md quotes the sentences).

Deep knowledge aggregation (§3.3-3.4, Eq. 9). In each compared teacher stage, the residual
blocks are grouped k at a time; each group gets one aggregation layer (3x3 conv, BN, ReLU:
"one more abstract layer"), trained to reproduce the group's output from the group's input:

    kr_agg = mu * sum_g w_g * mean((A_g(x_g) - y_g)^2),   w_g = std(y_g) / mean_g' std(y_g')

(the L2 transport cost, weighted by a standard-deviation measure, times the penalty mu). These
layers have their own SGD optimizer (lr `agg_lr`, momentum 0.9, weight decay 1e-5, stepped after the
student's at every iteration, x0.1 at the milestones; docs/methods/kr.md).

Prior knowledge for the student (§3.2, Eq. 10). The chained aggregation layers turn the
teacher's stage input into a "summary" s of the stage; the student's stage output, through a
1x1 projection P, is pulled toward it:

    kr = beta * sum_stages mean(SR(P(f_S) - s)^2)

SR is the sparse recoding penalty on the propagated gradient: the identity forward; backward,
each gradient entry g becomes g * (|g| / theta)^p_low below the learnable threshold theta
(smoothed to zero) and enhance * g above it (enhanced; a bounded gain, since a power above the
threshold made training diverge). theta starts at the mean
|g| it first sees (the paper: "initialized with the mean value of parameters distribution");
its surrogate gradient, theta - mean|g|, makes it track the gradient scale as it learns.
`kr_dense` drops SR (KR-Dense in the tables). Posterior terms (KD, NST) come from '+'.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from harness.errors import UserError
from methods.base import Distiller, ExtraOptimizer, Params, Probe
from methods.common import resize


class SparseRecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, theta, p_low, enhance):
        ctx.save_for_backward(theta)
        ctx.shape = (p_low, enhance)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (theta,) = ctx.saved_tensors
        p_low, enhance = ctx.shape
        magnitude = grad.abs()
        mean_magnitude = magnitude.mean()
        # not yet initialised (0): start at the mean gradient magnitude; chosen on the device, since
        # reading theta on the host would wait for the GPU at every step
        theta.data.copy_(torch.where(theta > 0, theta, mean_magnitude.to(theta.dtype)))
        below = magnitude < theta
        gain = power_(magnitude.div_(theta.clamp_min(1e-12)), p_low).masked_fill_(~below, enhance)
        return gain.mul_(grad), (theta - mean_magnitude).reshape(theta.shape), None, None


def power_(x: torch.Tensor, p: float) -> torch.Tensor:
    """x ** p in place; a power of two by repeated squaring (half the time of pow on this CPU)."""
    if p.is_integer() and p >= 1 and int(p) & (int(p) - 1) == 0:
        for _ in range(int(p).bit_length() - 1):
            x.square_()
        return x
    return x.pow_(p)


class SparseRecoding(nn.Module):
    """The gate with its learnable threshold; theta = 0 means "set me from the first gradient"."""

    def __init__(self, p_low: float, enhance: float):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(()))
        self.p_low, self.enhance = p_low, enhance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SparseRecode.apply(x, self.theta, self.p_low, self.enhance)


def sparse_recoding_penalty(projected: torch.Tensor, summary: torch.Tensor, gate: SparseRecoding | None) -> torch.Tensor:
    """mean((projected - summary)^2), SR gating the gradient of the residual (equal to projected's)."""
    return F.mse_loss(gate(projected) if gate is not None else projected, summary)


def aggregation_layer(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


def group_bounds(n_blocks: int, k: int) -> list[tuple[int, int]]:
    """Consecutive groups of k blocks (the last may be shorter): [(start, end)] over block outputs."""
    return [(start, min(start + k, n_blocks)) for start in range(0, n_blocks, k)]


def transport_cost(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 9's weighted L2 cost: groups with more spread (std) weigh more."""
    stds = torch.stack([t.float().std() for t in targets]).detach()
    weights = stds / stds.mean().clamp_min(1e-12)
    return sum(w * F.mse_loss(o, t.float()) for w, o, t in zip(weights, outputs, targets))


class KRParams(Params):
    k: Annotated[int, Field(ge=1, description="teacher blocks aggregated into one layer")]
    mu: Annotated[float, Field(gt=0, description="Eq. 9's penalty on the transport cost")]
    beta: Annotated[float, Field(ge=0, description="Eq. 10's weight of the prior-knowledge term")]
    agg_lr: Annotated[float, Field(gt=0)]
    agg_milestones: list[Annotated[float, Field(gt=0, lt=1)]]
    p_low: Annotated[float, Field(gt=0, description="SR: power below the threshold (smoothing to 0)")]
    enhance: Annotated[float, Field(ge=1, le=100, description="SR: gain on gradients above the threshold")]


class KR(Distiller):
    Params = KRParams
    teacher_features = frozenset({"blocks"})
    student_features = frozenset({"stages"})
    loss_terms = frozenset({"kr", "kr_agg"})
    sparse = True

    def __init__(self, params: KRParams, probe: Probe):
        super().__init__(params, probe)
        if "blocks" not in probe.teacher:
            raise UserError("kr needs a teacher built of residual stages of blocks (a CIFAR ResNet)")
        teacher_blocks, student_stages = probe.teacher["blocks"], probe.student["stages"]
        n_stages = len(student_stages)
        if n_stages > len(teacher_blocks):
            raise UserError(f"kr: the pair compares {n_stages} stages, the teacher has {len(teacher_blocks)}")
        self.stage_ids = list(range(len(teacher_blocks) - n_stages, len(teacher_blocks)))  # the last stages
        self.groups, aggregators, projectors = [], nn.ModuleList(), nn.ModuleList()
        for stage_id, f_s in zip(self.stage_ids, student_stages):
            outputs = teacher_blocks[stage_id]
            n_blocks = len(outputs) - 1
            if params.k > n_blocks:
                raise UserError(f"kr: k={params.k} does not fit the teacher's depth ({n_blocks} blocks per stage)")
            bounds = group_bounds(n_blocks, params.k)
            self.groups.append(bounds)
            aggregators.append(nn.ModuleList(
                aggregation_layer(outputs[a].shape[1], outputs[b].shape[1], outputs[a].shape[-1] // outputs[b].shape[-1])
                for a, b in bounds))
            if f_s.ndim != 4:
                raise UserError("kr needs spatial feature maps from the student")
            projectors.append(nn.Conv2d(f_s.shape[1], outputs[-1].shape[1], 1))
        self.aggregators, self.projectors = aggregators, projectors
        self.gate = SparseRecoding(params.p_low, params.enhance) if self.sparse else None

    def extra_optimizers(self) -> list[ExtraOptimizer]:
        p = self.params
        return [ExtraOptimizer("kr_aggregation", list(self.aggregators.parameters()), p.agg_lr, momentum=0.9,
                               weight_decay=1e-5, milestones=tuple(p.agg_milestones), gamma=0.1)]

    def forward(self, student, teacher, targets):
        cost, prior = 0.0, 0.0
        for stage_id, bounds, layers, project, f_s in zip(self.stage_ids, self.groups, self.aggregators,
                                                           self.projectors, student["stages"]):
            blocks = teacher["blocks"][stage_id]
            # Eq. 9: each layer reproduces its group's output from the group's (teacher) input
            reproduced = [layer(blocks[a]) for layer, (a, b) in zip(layers, bounds)]
            cost = cost + transport_cost(reproduced, [blocks[b] for a, b in bounds])
            with torch.no_grad():  # the summary: the chained layers from the stage input; a target
                summary = reproduced[0].detach()  # the first layer's output from the stage input, as above
                for layer in layers[1:]:
                    summary = layer(summary)
            projected = project(resize(f_s, summary.shape[-2:]))
            prior = prior + sparse_recoding_penalty(projected, summary, self.gate)
        return {"kr": self.params.beta * prior, "kr_agg": self.params.mu * cost}


class KRDense(KR):
    """KR without the sparse recoding penalty (the tables' Proposed-Dense)."""

    sparse = False
