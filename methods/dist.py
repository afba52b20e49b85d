"""DIST: knowledge distillation from a stronger teacher (Huang, You, Wang, Qian & Xu, NeurIPS 2022).

With Y = softmax(z / tau) (b x C) and rho the Pearson correlation of two vectors:
    inter = 1 - mean over the b samples of rho(Y^S_i, Y^T_i)     (each sample's class relations)
    intra = 1 - mean over the C classes of rho(Y^S_:c, Y^T_:c)   (each class over the batch)
    dist  = tau^2 * (beta * inter + gamma * intra)
as the authors' image_classification_sota computes it (rho as a cosine of centred vectors, 1e-8
added to the norms' product).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from methods.base import Distiller, Params


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`."""
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)


def dist_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float):
    """(inter, intra): one minus the mean Pearson correlation over samples, and over classes."""
    y_s = F.softmax(student_logits.float() / tau, dim=1)
    y_t = F.softmax(teacher_logits.float() / tau, dim=1)
    return 1 - pearson_rows(y_s, y_t).mean(), 1 - pearson_rows(y_s.t(), y_t.t()).mean()


class DISTParams(Params):
    beta: Annotated[float, Field(ge=0, description="weight of the inter-class relation")]
    gamma: Annotated[float, Field(ge=0, description="weight of the intra-class relation")]
    tau: Annotated[float, Field(gt=0, description="softmax temperature")]


class DIST(Distiller):
    Params = DISTParams
    teacher_features = frozenset({"logits"})
    student_features = frozenset({"logits"})
    loss_terms = frozenset({"dist_inter", "dist_intra"})

    def forward(self, student, teacher, targets):
        inter, intra = dist_terms(student["logits"], teacher["logits"], self.params.tau)
        scale = self.params.tau**2
        return {"dist_inter": scale * self.params.beta * inter, "dist_intra": scale * self.params.gamma * intra}
