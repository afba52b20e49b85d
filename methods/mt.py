"""Learning from multiple teachers (You, Xu, Xu & Tao, "Learning from multiple teacher networks",
KDD 2017), as the LPL paper's "Multiple Teachers" baseline.

Two terms besides the student's cross-entropy:
- soft targets: the teachers' softened outputs averaged, p = 1/M sum_m softmax(t_m / tau);
  mt_kd = lam * tau^2 * KL(p || softmax(s / tau)), batch mean.
- relative dissimilarity on an intermediate layer: for every triplet (i, j, k) of distinct images of
  the batch, each teacher votes whether j or k lies closer to i in its own feature space; the
  majority names the positive (a tie drops the triplet), and the student pays the triplet hinge
  mt_rd = lam_rd * mean over voted triplets of max(0, d_S(i, pos) - d_S(i, neg) + margin).
  Distances compare each network with itself only, so teacher and student widths may differ and no
  regressor is needed. d is the Euclidean distance between flattened, L2-normalised features (the
  normalisation, which keeps the margin scale-free, is our choice: docs/methods/mt.md).

All B^3 triplets of a batch are used (no sampling): deterministic, and cheap at B = 128 (2M).
"""

from __future__ import annotations

import functools

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from methods.base import Distiller, Params, Probe
from methods.common import stage_indices


def averaged_soft_targets_loss(student_logits: torch.Tensor, teacher_logits: list[torch.Tensor],
                               tau: float) -> torch.Tensor:
    """tau^2 * KL(mean_m softmax(t_m / tau) || softmax(s / tau)), batch mean."""
    p_teachers = torch.stack([F.softmax(t.float() / tau, dim=1) for t in teacher_logits]).mean(0)
    log_p_student = F.log_softmax(student_logits.float() / tau, dim=1)
    kl = (p_teachers * (p_teachers.clamp_min(1e-12).log() - log_p_student)).sum(dim=1)
    return tau**2 * kl.mean()


def _distances(features: torch.Tensor) -> torch.Tensor:
    f = F.normalize(features.flatten(1).float(), dim=1)
    return torch.cdist(f, f)


@functools.lru_cache(maxsize=8)
def distinct_triplets(n: int, device: torch.device) -> torch.Tensor:
    """[i, j, k]: True where i, j, k are three different samples (one mask per batch size)."""
    idx = torch.arange(n, device=device)
    return (idx[:, None, None] != idx[None, :, None]) & (idx[:, None, None] != idx[None, None, :]) \
        & (idx[None, :, None] != idx[None, None, :])


def relative_dissimilarity_loss(student: torch.Tensor, teachers: list[torch.Tensor],
                                margin: float) -> torch.Tensor:
    """Mean triplet hinge over the triplets (i, j, k) whose positive j the teachers' majority names."""
    n = student.shape[0]
    with torch.no_grad():
        votes = sum(torch.sign(d[:, None, :] - d[:, :, None]) for d in map(_distances, teachers))
        # votes[i, j, k] > 0: more teachers put j closer to i than k
        voted = (votes > 0) & distinct_triplets(n, student.device)
    d_s = _distances(student)
    hinge = F.relu(d_s[:, :, None] - d_s[:, None, :] + margin)  # [i, j, k]: j the positive, k the negative
    return hinge[voted].sum() / voted.sum().clamp_min(1)


class MTParams(Params):
    tau: Annotated[float, Field(gt=0, description="softmax temperature of the averaged soft targets")]
    lam: Annotated[float, Field(ge=0, description="weight of the averaged soft-target term")]
    lam_rd: Annotated[float, Field(ge=0, description="weight of the relative-dissimilarity term")]
    margin: Annotated[float, Field(ge=0, description="triplet margin on distances of L2-normalised features")]
    layer: Literal["hint", "last"]


class MultipleTeachers(Distiller):
    Params = MTParams
    teacher_features = frozenset({"logits", "stages"})
    student_features = frozenset({"logits", "stages"})
    loss_terms = frozenset({"mt_kd", "mt_rd"})
    multi_teacher = True

    def __init__(self, params: MTParams, probe: Probe):
        super().__init__(params, probe)
        (self.index,) = stage_indices(params.layer, probe)

    def forward(self, student, teacher, targets):
        p = self.params
        return {
            "mt_kd": p.lam * averaged_soft_targets_loss(student["logits"], [t["logits"] for t in teacher], p.tau),
            "mt_rd": p.lam_rd * relative_dissimilarity_loss(
                student["stages"][self.index], [t["stages"][self.index] for t in teacher], p.margin),
        }
