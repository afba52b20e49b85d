"""Hinton et al. (2015) knowledge distillation.

loss = CE(y, s) + lam * tau^2 * KL(softmax(t / tau) || softmax(s / tau)), KL summed over
classes and averaged over the batch. Convention: `lam` weights the soft term and CE keeps
weight 1 (as in the NST, NMT and LPL papers' Eq. 2) unless `ce_weight` sets another (the logit-
standardisation authors' and RepDistiller's/mdistiller's KD weigh CE 0.1); the tau^2 factor is explicit, so the
papers' "tau = 4, lambda = 16" (which is tau^2) is lam = 1 here.

`standardize` (default off) first applies the logit standardisation of Sun et al. (CVPR 2024,
"Logit standardization in knowledge distillation") to both logits: z -> (z - mean(z)) / std(z)
over the classes, then the same tau and tau^2 (the `kd_ls` variant in benchmarks.yaml).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from methods.base import Distiller, Params


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Z-score over the classes, (z - mean) / (std + 1e-7), std with Bessel's correction
    (torch.std, as the authors' code computes it)."""
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + 1e-7)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(t / tau) || softmax(s / tau)), batch mean."""
    log_p_student = F.log_softmax(student_logits / tau, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / tau, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    return tau**2 * kl.mean()


class KDParams(Params):
    tau: Annotated[float, Field(gt=0, description="softmax temperature")]
    lam: Annotated[float, Field(ge=0, description="weight of the soft-target term")]
    # a default, so that runs made before the option existed keep their keys (plan.identity_dump)
    standardize: bool = Field(False, description="Z-score both logits first (Sun et al. 2024)")
    ce_weight: float = Field(1.0, ge=0, description="weight of the student's cross-entropy (kd_ls's code: 0.1)")


class KD(Distiller):
    Params = KDParams
    teacher_features = frozenset({"logits"})
    student_features = frozenset({"logits"})
    loss_terms = frozenset({"kd"})

    def forward(self, student, teacher, targets):
        s, t = student["logits"], teacher["logits"]
        if self.params.standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        return {"kd": self.params.lam * kd_loss(s, t, self.params.tau)}

    def ce_weight(self) -> float:
        return self.params.ce_weight
