"""Knowledge review (Chen, Liu, Zhao & Jia, CVPR 2021): "Distilling knowledge via knowledge review",
as mdistiller's ReviewKD. Not our `kr` (Liu et al.'s knowledge representing), though torchdistill
names this method "KR".

Levels: the compared stages, then the penultimate vector as a 1 x 1 map. The student's levels
(post-ReLU) are fused top-down by attention-based fusion (ABF) modules: each maps its level to a
common width (1x1 conv + BN), mixes in the deeper level's fused map (nearest-upsampled) with two
per-pixel sigmoid weights, resizes to the teacher level's H x W (nearest) and outputs it at the
teacher's width (3x3 conv + BN); the deepest level has nothing to fuse. Each output is compared with
the teacher's level (pre-ReLU stages, then the penultimate vector) by the hierarchical context loss:

    hcl(s, t) = [ mse(s, t) + sum_j w_j mse(pool_l(s), pool_l(t)) ] / (1 + sum_j w_j)

over the pooling sizes l in (4, 2, 1) smaller than the map's H, w_j = 1/2, 1/4, 1/8 for the first,
second, third size used; reviewkd = lam * warm-up(epoch) * sum over levels of hcl, with mdistiller's
linear ramp min(epoch / warmup_epochs, 1) (1-based epoch; `methods.dkd.dkd_warmup`), or the authors'
ramp from a 0-based epoch (`warmup_from` 0: weight 0 in the first epoch; reviewkd_cifar100 uses it).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from methods.base import Distiller, Params, Probe
from methods.common import require_maps, require_pre_relu, stage_indices
from methods.dkd import dkd_warmup

POOL_SIZES = (4, 2, 1)
MAX_FUSION_WIDTH = 512  # mdistiller's MAX_MID_CHANNEL


def hcl_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    total = 0.0
    for s, t in zip(student, teacher):
        loss, weight, weights = F.mse_loss(s, t.float()), 1.0, 1.0
        for size in (l for l in POOL_SIZES if l < s.shape[-1]):
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t.float(), size))
            weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    """One level's attention-based fusion: (output at the teacher's width and size, fused map)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_ch, mid_ch, 1, bias=False), nn.BatchNorm2d(mid_ch))
        self.out = nn.Sequential(nn.Conv2d(mid_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_ch, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.out[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None, out_size) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.attention is not None:
            deeper = F.interpolate(deeper, x.shape[-2:], mode="nearest")
            w = self.attention(torch.cat([x, deeper], dim=1))
            x = x * w[:, :1] + deeper * w[:, 1:]
        if x.shape[-2:] != out_size:
            x = F.interpolate(x, out_size, mode="nearest")
        return self.out(x), x


def levels(features: dict, stages_key: str, indices: list[int]) -> list[torch.Tensor]:
    return [features[stages_key][i] for i in indices] + [features["pre_logits"][:, :, None, None]]


class ReviewKDParams(Params):
    lam: Annotated[float, Field(ge=0, description="weight of the summed HCL")]
    warmup_epochs: Annotated[int, Field(ge=0, description="epochs of the linear warm-up of the weight (0: none)")]
    # a default, so that runs made before the option existed keep their keys (plan.identity_dump)
    warmup_from: Literal[0, 1] = Field(1, description=(
        "the first epoch's count in min(epoch / warmup_epochs, 1): 1 (mdistiller) or 0 (the authors' "
        "train.py: weight 0 in the first epoch)"))


class ReviewKD(Distiller):
    Params = ReviewKDParams
    teacher_features = frozenset({"stages_pre_relu", "pre_logits"})
    student_features = frozenset({"stages", "pre_logits"})
    loss_terms = frozenset({"reviewkd"})

    def __init__(self, params: ReviewKDParams, probe: Probe):
        super().__init__(params, probe)
        self.indices = stage_indices("all", probe)
        require_maps("reviewkd", probe, self.indices)
        require_pre_relu("reviewkd", probe, roles=("teacher",))
        student = levels(probe.student, "stages", self.indices)
        teacher = levels(probe.teacher, "stages_pre_relu", self.indices)
        mid = min(MAX_FUSION_WIDTH, student[-1].shape[1])
        self.out_sizes = [tuple(t.shape[-2:]) for t in teacher][::-1]  # deepest first, as the fusion runs
        self.fusions = nn.ModuleList(ABF(s.shape[1], mid, t.shape[1], fuse=k > 0)
                                     for k, (s, t) in enumerate(zip(student[::-1], teacher[::-1])))
        self.epoch = 0

    def set_epoch(self, epoch: int, main_epochs: int) -> None:
        self.epoch = epoch

    def forward(self, student, teacher, targets):
        outputs, fused = [], None
        for x, fusion, size in zip(levels(student, "stages", self.indices)[::-1], self.fusions, self.out_sizes):
            out, fused = fusion(x, fused, size)
            outputs.insert(0, out)
        weight = self.params.lam * dkd_warmup(self.epoch, self.params.warmup_epochs, self.params.warmup_from)
        return {"reviewkd": weight * hcl_loss(outputs, levels(teacher, "stages_pre_relu", self.indices))}
