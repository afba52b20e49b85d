"""FSP, the flow of solution procedure (Yim et al. 2017).

G(F1, F2) = F1 F2^T / (H W): the C1 x C2 matrix between two layers' maps (the larger map
average-pooled to the smaller's H x W). The pairs are consecutive entries of the pair's stage
list. fsp_loss = sum over the pairs of the mean over batch and entries of (G_S - G_T)^2.
As in the original method, FSP is a pre-training stage ("fsp", a fraction of the main epochs);
the main stage then trains on cross-entropy alone. It needs the teacher's and the student's
channel counts to be equal at every compared layer.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from harness.errors import UserError
from methods.base import Distiller, Params, PrePhase, Probe
from methods.common import pool_to_smaller, require_maps


def fsp_matrix(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    f1, f2 = pool_to_smaller(f1.float(), f2.float())
    hw = f1.shape[-1] * f1.shape[-2]
    return torch.bmm(f1.flatten(2), f2.flatten(2).transpose(1, 2)) / hw


def fsp_loss(student_stages: list[torch.Tensor], teacher_stages: list[torch.Tensor]) -> torch.Tensor:
    return sum((fsp_matrix(s1, s2) - fsp_matrix(t1, t2)).pow(2).mean()
               for s1, s2, t1, t2 in zip(student_stages, student_stages[1:], teacher_stages, teacher_stages[1:]))


class FSPParams(Params):
    pretrain_fraction: Annotated[float, Field(gt=0, le=1, description="FSP-stage epochs / main epochs")]
    pretrain_lr_scale: Annotated[float, Field(gt=0, le=1, description="FSP-stage lr / the recipe's base lr")] = 1.0


class FSP(Distiller):
    Params = FSPParams
    teacher_features = frozenset({"stages"})
    student_features = frozenset({"stages"})

    def __init__(self, params: FSPParams, probe: Probe):
        super().__init__(params, probe)
        n = len(probe.teacher["stages"])
        if n < 2:
            raise UserError("fsp needs at least two stages in the pair to form a flow matrix")
        require_maps("fsp", probe, list(range(n)))
        for i in range(n):
            c_t, c_s = probe.teacher["stages"][i].shape[1], probe.student["stages"][i].shape[1]
            if c_t != c_s:
                raise UserError(f"fsp needs equal channel counts; stage {i} has {c_t} (teacher) vs {c_s} (student)")

    def pre_phases(self, main_epochs: int) -> list[PrePhase]:
        return [PrePhase("fsp", max(1, round(self.params.pretrain_fraction * main_epochs)),
                         self.params.pretrain_lr_scale)]

    def phase_losses(self, phase, student, teacher, targets):
        return {"fsp": fsp_loss(student["stages"], teacher["stages"])}

    def forward(self, student, teacher, targets):
        return {}
