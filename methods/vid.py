"""Variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019).

Per compared stage, a regressor mu (1x1 conv - ReLU - 1x1 conv - ReLU - 1x1 conv, no biases) maps the
student's map s to a mean for the teacher's map t (the larger map average-pooled to the smaller's
H x W first); t is modelled as Gaussian around mu(s) with a learned variance per teacher channel,
sigma_c^2 = softplus(alpha_c) + eps:

    vid = beta * sum over stages of mean_{n,c,h,w} 1/2 [ (t - mu(s))^2 / sigma_c^2 + log sigma_c^2 ]

(the negative log-likelihood less its constant log(2 pi) / 2: RepDistiller's and mdistiller's VIDLoss).
alpha starts where sigma^2 = init_variance. The regressors and alphas train with the student.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from methods.base import Distiller, Params, Probe
from methods.common import pool_to_smaller, require_maps, stage_indices

VARIANCE_FLOOR = 1e-5  # eps: RepDistiller's and mdistiller's VIDLoss


def vid_loss(mean: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Gaussian NLL (less its constant) of `target` around `mean`, per-channel variance softplus(alpha) + eps."""
    variance = (F.softplus(alpha) + VARIANCE_FLOOR).view(1, -1, 1, 1)
    return 0.5 * ((mean - target.float()).pow(2) / variance + variance.log()).mean()


def regressor(in_ch: int, mid_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, mid_ch, 1, bias=False), nn.ReLU(), nn.Conv2d(mid_ch, mid_ch, 1, bias=False),
                         nn.ReLU(), nn.Conv2d(mid_ch, out_ch, 1, bias=False))


class VIDParams(Params):
    beta: Annotated[float, Field(ge=0, description="weight of the summed per-stage NLL")]
    init_variance: Annotated[float, Field(gt=VARIANCE_FLOOR, description="each sigma_c^2 at the start")]
    layers: Literal["all", "last", "hint"]


class VID(Distiller):
    Params = VIDParams
    teacher_features = frozenset({"stages"})
    student_features = frozenset({"stages"})
    loss_terms = frozenset({"vid"})

    def __init__(self, params: VIDParams, probe: Probe):
        super().__init__(params, probe)
        self.indices = stage_indices(params.layers, probe)
        require_maps("vid", probe, self.indices)
        widths = [(probe.student["stages"][i].shape[1], probe.teacher["stages"][i].shape[1]) for i in self.indices]
        self.regressors = nn.ModuleList(regressor(s, t, t) for s, t in widths)  # mid = teacher width (RepDistiller)
        start = math.log(math.expm1(params.init_variance - VARIANCE_FLOOR))  # softplus^-1
        self.alphas = nn.ParameterList(nn.Parameter(torch.full((t,), start)) for _, t in widths)

    def forward(self, student, teacher, targets):
        total = 0.0
        for i, mu, alpha in zip(self.indices, self.regressors, self.alphas):
            s, t = pool_to_smaller(student["stages"][i], teacher["stages"][i])
            total = total + vid_loss(mu(s), t, alpha)
        return {"vid": self.params.beta * total}
