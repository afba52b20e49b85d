"""Hinton et al. (2015) knowledge distillation.

loss = CE(y, s) + lam * tau^2 * KL(softmax(t / tau) || softmax(s / tau)), KL summed over
classes and averaged over the batch. Convention: `lam` weights the soft term and CE keeps
weight 1 (as in the NST, NMT and LPL papers' Eq. 2); the tau^2 factor is explicit, so the
papers' "tau = 4, lambda = 16" (which is tau^2) is lam = 1 here.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from methods.base import Distiller, Params


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(t / tau) || softmax(s / tau)), batch mean."""
    log_p_student = F.log_softmax(student_logits / tau, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / tau, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    return tau**2 * kl.mean()


class KDParams(Params):
    tau: Annotated[float, Field(gt=0, description="softmax temperature")]
    lam: Annotated[float, Field(ge=0, description="weight of the soft-target term")]


class KD(Distiller):
    Params = KDParams
    teacher_features = frozenset({"logits"})
    student_features = frozenset({"logits"})
    loss_terms = frozenset({"kd"})

    def forward(self, student, teacher, targets):
        return {"kd": self.params.lam * kd_loss(student["logits"], teacher["logits"], self.params.tau)}
