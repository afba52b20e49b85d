"""Correlation congruence (Peng et al., ICCV 2019), on embeddings of the penultimate features.

Each network's penultimate vector goes through its own linear embedding head (to `dim`, trained with
the student; RepDistiller's LinearEmbed), then is L2-normalised. The correlation matrix is the
Gaussian kernel exp(-gamma ||x_i - x_j||^2) through its order-P Taylor expansion, which on unit
vectors reads
    k(x_i, x_j) = exp(-2 gamma) * sum_{p=0..P} (2 gamma)^p / p! * (x_i . x_j)^p.
cc_loss = ||K_T - K_S||_F^2 / b^2; loss term = lam * cc_loss. The heads are training-only
parameters (`extra_parameters`), as FitNet's regressor is.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from methods.base import Distiller, Params, Probe


def taylor_gaussian_kernel(x: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """b x b: the order-`order` Taylor expansion of exp(-gamma ||x_i - x_j||^2) for unit rows x."""
    similarity = x @ x.t()
    series = sum((2 * gamma) ** p / math.factorial(p) * similarity.pow(p) for p in range(order + 1))
    return math.exp(-2 * gamma) * series


def cc_loss(x_s: torch.Tensor, x_t: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """||K_T - K_S||_F^2 / b^2 of the kernels of the L2-normalised embeddings."""
    k_s = taylor_gaussian_kernel(F.normalize(x_s.float(), dim=1), gamma, order)
    k_t = taylor_gaussian_kernel(F.normalize(x_t.float(), dim=1), gamma, order)
    return (k_t - k_s).pow(2).sum() / x_s.shape[0] ** 2


class CCParams(Params):
    lam: Annotated[float, Field(ge=0, description="weight of the correlation-congruence term")]
    gamma: Annotated[float, Field(gt=0, description="the Gaussian kernel's gamma")]
    order: Annotated[int, Field(ge=1, description="P, the order of the Taylor expansion")]
    dim: Annotated[int, Field(ge=1, description="width of the embedding heads")]


class CC(Distiller):
    Params = CCParams
    teacher_features = frozenset({"pre_logits"})
    student_features = frozenset({"pre_logits"})
    loss_terms = frozenset({"cc"})

    def __init__(self, params: CCParams, probe: Probe):
        super().__init__(params, probe)
        self.embed_student = nn.Linear(probe.student["pre_logits"].shape[1], params.dim)
        self.embed_teacher = nn.Linear(probe.teacher["pre_logits"].shape[1], params.dim)

    def forward(self, student, teacher, targets):
        p = self.params
        x_s, x_t = self.embed_student(student["pre_logits"]), self.embed_teacher(teacher["pre_logits"])
        return {"cc": p.lam * cc_loss(x_s, x_t, p.gamma, p.order)}
