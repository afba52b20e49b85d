"""Overhaul of feature distillation (Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019).

Per compared stage, the student's map before its last ReLU goes through a connector (1x1 conv + BN)
to the teacher's width; the teacher's pre-ReLU map t goes through the margin ReLU, t' = max(t, m_c),
where m_c = E[x | x < 0] for x ~ N(beta_c, |gamma_c|^2), from the BN (gamma, beta) feeding the
teacher's ReLU (clovaai's and mdistiller's `get_margin_from_BN`; -3 |gamma_c| where Phi(-beta/|gamma|)
<= 0.001). The partial L2 distance skips where the student is already below a negative target:

    ofd_loss(s, t) = sum_{c,h,w} (s - t')^2 [s > t' or t' > 0],  mean over the batch
    ofd            = lam * sum over stages i of 2^(i - n + 1) * ofd_loss

(the teacher's map average-pooled to the student's H x W when larger, as mdistiller).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from harness.errors import UserError
from methods.base import Distiller, Params, Probe
from methods.common import (conv_bn_connector, halving_weights, pool_to_smaller, require_maps, require_pre_relu,
                            stage_indices)

TAIL = 0.001  # below this P(x < 0) the margin is -3 sigma (the authors' get_margin_from_BN)


def bn_margin(gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """E[x | x < 0] for x ~ N(beta, gamma^2), per channel (computed in float64)."""
    std, mean = gamma.double().abs(), beta.double()
    z = mean / std
    below = torch.special.ndtr(-z)  # P(x < 0)
    truncated = mean - std * torch.exp(-z**2 / 2) / math.sqrt(2 * math.pi) / below
    return torch.where(below > TAIL, truncated, -3 * std).float()


def ofd_loss(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Partial L2 between the connected student map and the margin-ReLU'd teacher map, batch mean."""
    target = torch.maximum(target.float(), margin.view(1, -1, 1, 1))
    mask = (source > target) | (target > 0)
    return ((source - target).pow(2) * mask).sum() / source.shape[0]


class OFDParams(Params):
    lam: Annotated[float, Field(ge=0, description="weight of the distillation term (the paper's alpha)")]
    layers: Literal["all", "last", "hint"]
    # a default, so that runs made before the option existed keep their keys (plan.identity_dump)
    teacher_mode: Literal["eval", "train"] = Field("eval", description=(
        "the teacher's batch norm: eval (running statistics) or train (the batch's, as the authors' "
        "train_with_distillation.py and mdistiller run it)"))


class OFD(Distiller):
    Params = OFDParams
    teacher_features = frozenset({"stages_pre_relu", "stages_pre_relu_bn"})
    student_features = frozenset({"stages_pre_relu"})
    loss_terms = frozenset({"ofd"})

    def __init__(self, params: OFDParams, probe: Probe):
        super().__init__(params, probe)
        self.indices = stage_indices(params.layers, probe)
        require_maps("ofd", probe, self.indices)
        require_pre_relu("ofd", probe)
        if "stages_pre_relu_bn" not in probe.teacher:
            raise UserError("ofd reads its margins from the BN feeding the teacher's ReLU, which the teacher's model "
                            "does not name (pre_relu_batchnorms: ShuffleNetV2 has pre-ReLU taps but no such BN)")
        self.connectors = nn.ModuleList(conv_bn_connector(probe.student["stages"][i].shape[1],
                                                          probe.teacher["stages"][i].shape[1]) for i in self.indices)
        self.weights = halving_weights(len(self.indices))

    def teacher_mode(self) -> str:
        return self.params.teacher_mode

    def forward(self, student, teacher, targets):
        total = 0.0
        for i, connect, weight in zip(self.indices, self.connectors, self.weights):
            gamma, beta = teacher["stages_pre_relu_bn"][i][0]  # the same for every sample
            s, t = pool_to_smaller(connect(student["stages_pre_relu"][i]), teacher["stages_pre_relu"][i])
            total = total + weight * ofd_loss(s, t, bn_margin(gamma, beta))
        return {"ofd": self.params.lam * total}
