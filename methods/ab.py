"""Activation boundaries (Heo, Lee, Yun & Choi, AAAI 2019): "Knowledge transfer via distillation of
activation boundaries formed by hidden neurons".

A pre-phase ("ab", a fraction of the main epochs, no cross-entropy) trains the student and a
connector per compared stage so that each student neuron is on where the teacher's is, by a margin,
on the responses before the ReLU (x = connector(pre-ReLU student map), t = the teacher's):

    ab_loss(x, t) = sum over elements of  (x - m)^2 [t > 0 and x <= m] + (x + m)^2 [t <= 0 and x > -m]
    ab           = lam * sum over stages i of 2^(i - n + 1) * ab_loss / batch

The main phase is the student's cross-entropy alone (RepDistiller's `-a 0`); `ab+kd` adds KD.
The connector is the identity where the shapes agree (RepDistiller), else a 1x1 conv + BN after
resizing the student's map to the teacher's H x W.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from methods.base import Distiller, Params, PrePhase, Probe
from methods.common import conv_bn_connector, halving_weights, require_maps, require_pre_relu, resize, stage_indices


def ab_loss(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """The margin-based alternative to the activation-boundary (XOR) loss, summed over elements."""
    on = target.float() > 0
    below = (source - margin).pow(2) * (on & (source <= margin))
    above = (source + margin).pow(2) * (~on & (source > -margin))
    return (below + above).sum()


class Connector(nn.Module):
    """Identity for equal shapes; else the student's map resized to the teacher's, then 1x1 conv + BN."""

    def __init__(self, student_example: torch.Tensor, teacher_example: torch.Tensor):
        super().__init__()
        self.size = tuple(teacher_example.shape[-2:])
        same = student_example.shape[1:] == teacher_example.shape[1:]
        self.proj = nn.Identity() if same else conv_bn_connector(student_example.shape[1], teacher_example.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > self.size[-1]:
            x = F.adaptive_avg_pool2d(x, self.size)
        return self.proj(resize(x, self.size))


class ABParams(Params):
    init_fraction: Annotated[float, Field(gt=0, le=1, description="pre-phase epochs / main epochs")]
    margin: Annotated[float, Field(gt=0, description="m: how far past the boundary a response is pushed")]
    lam: Annotated[float, Field(gt=0, description="scale of the pre-phase loss (its lr's partner)")]
    layers: Literal["all", "last", "hint"]


class AB(Distiller):
    Params = ABParams
    teacher_features = frozenset({"stages_pre_relu"})
    student_features = frozenset({"stages_pre_relu"})
    loss_terms = frozenset()  # the main phase is cross-entropy alone

    def __init__(self, params: ABParams, probe: Probe):
        super().__init__(params, probe)
        self.indices = stage_indices(params.layers, probe)
        require_maps("ab", probe, self.indices)
        require_pre_relu("ab", probe)
        student, teacher = probe.student["stages_pre_relu"], probe.teacher["stages_pre_relu"]
        self.connectors = nn.ModuleList(Connector(student[i], teacher[i]) for i in self.indices)
        self.weights = halving_weights(len(self.indices))

    def pre_phases(self, main_epochs: int) -> list[PrePhase]:
        return [PrePhase("ab", max(1, round(self.params.init_fraction * main_epochs)))]

    def phase_losses(self, phase, student, teacher, targets):
        total = 0.0
        for i, connect, weight in zip(self.indices, self.connectors, self.weights):
            x, t = connect(student["stages_pre_relu"][i]), teacher["stages_pre_relu"][i]
            total = total + weight * ab_loss(x, t, self.params.margin) / x.shape[0]
        return {"ab": self.params.lam * total}

    def forward(self, student, teacher, targets):
        return {}
