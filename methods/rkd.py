"""Relational KD (Park, Kim, Lu & Cho, CVPR 2019), on the penultimate embeddings.

distance term: d_ij = ||e_i - e_j||, divided by the mean of d over the b(b-1) pairs i != j (each
network by its own mean); rkd_distance = mean over the b^2 entries of smooth_l1(d_S, d_T).
angle term: for every anchor j, cos of the angle at j between e_i and e_k, <u_ji, u_jk> with
u_ji = (e_i - e_j) / ||e_i - e_j|| (0 when i = j); rkd_angle = mean over the b^3 entries of
smooth_l1(cos_S, cos_T). Two loss terms, w_d * rkd_distance and w_a * rkd_angle (RepDistiller's
reductions: entries with i = j, whose values are 0 in both networks, count in the means).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from methods.base import Distiller, Params


def differences(e: torch.Tensor) -> torch.Tensor:
    """b x b x D: entry (j, i) = e_i - e_j (computed directly, without the |a|^2 + |b|^2 - 2ab
    cancellation)."""
    flat = e.float().flatten(1)
    return flat.unsqueeze(0) - flat.unsqueeze(1)


def normalised_distances(e: torch.Tensor) -> torch.Tensor:
    """Pairwise distances over their mean off the diagonal; the diagonal is 0 (and gets no gradient)."""
    b = e.shape[0]
    off_diagonal = 1 - torch.eye(b, device=e.device)
    d = differences(e).pow(2).sum(dim=2).clamp_min(1e-12).sqrt() * off_diagonal
    return d / (d.sum() / (b * (b - 1))).clamp_min(1e-12)


def angle_cosines(e: torch.Tensor) -> torch.Tensor:
    """b x b x b: entry (j, i, k) = cos of the angle at e_j between e_i and e_k."""
    u = F.normalize(differences(e), dim=2)
    return u @ u.transpose(1, 2)


def rkd_distance_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(normalised_distances(e_s), normalised_distances(e_t))


def rkd_angle_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(angle_cosines(e_s), angle_cosines(e_t))


class RKDParams(Params):
    w_d: Annotated[float, Field(ge=0, description="weight of the distance term")]
    w_a: Annotated[float, Field(ge=0, description="weight of the angle term")]


class RKD(Distiller):
    Params = RKDParams
    teacher_features = frozenset({"pre_logits"})
    student_features = frozenset({"pre_logits"})
    loss_terms = frozenset({"rkd_distance", "rkd_angle"})

    def forward(self, student, teacher, targets):
        e_s, e_t = student["pre_logits"], teacher["pre_logits"]
        return {"rkd_distance": self.params.w_d * rkd_distance_loss(e_s, e_t),
                "rkd_angle": self.params.w_a * rkd_angle_loss(e_s, e_t)}
