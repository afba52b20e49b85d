"""Locality preserving loss (Chen, Wang, Xu, Xu, Tao, "Learning student networks via feature
embedding", Eq. 4-9).

alpha_ij = exp(-||f_T^i - f_T^j||^2 / sigma^2) for j among the k nearest neighbours of i in the
teacher's feature space within the mini-batch (i itself excluded), else 0 (Eq. 5).
lpl_loss = 1/m sum_ij alpha_ij ||f_S^i - f_S^j||^2, the term of Eq. 8 (twice Eq. 6's L_LP).

sigma: a fixed number, or (sigma = None) the scale-free rule sigma^2 = mean squared teacher
distance from each sample to its k neighbours, detached.
gradient: "eq9" holds the neighbour f_S^j constant, so that the gradient of L_LP is exactly
Eq. 9, (1/m) sum_j alpha_ij (f_S^i - f_S^j); "full" differentiates Eq. 6 in both arguments,
giving (1/m) sum_j (alpha_ij + alpha_ji)(f_S^i - f_S^j).
Features are flattened to m x d. Cost O(m^2 (d_S + d_T)) (Proposition 1); no parameters.

The Distiller adds Eq. 8's soft-target term, lam * H(softmax(t / tau), softmax(s / tau)),
computed as the KL divergence (equal to H up to the teacher's entropy, a constant).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from harness.errors import UserError
from methods.base import Distiller, Params, Probe
from methods.common import stage_indices
from methods.kd import kd_loss


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2 * a @ b.t()).clamp_min(0)


def locality_weights(f_t: torch.Tensor, k: int, sigma: float | None = None) -> torch.Tensor:
    """Eq. 5's alpha (m x m), from the teacher's features; no gradient."""
    with torch.no_grad():
        f_t = f_t.flatten(1).float()
        d = _squared_distances(f_t, f_t)
        d.fill_diagonal_(float("inf"))
        nearest, index = d.topk(k, dim=1, largest=False)
        sigma2 = nearest.mean().clamp_min(1e-12) if sigma is None else sigma**2
        return torch.zeros_like(d).scatter_(1, index, torch.exp(-nearest / sigma2))


def lpl_loss(f_s: torch.Tensor, f_t: torch.Tensor, k: int, sigma: float | None = None,
             gradient: str = "eq9") -> torch.Tensor:
    alpha = locality_weights(f_t, k, sigma)
    f_s = f_s.flatten(1).float()
    neighbours = f_s.detach() if gradient == "eq9" else f_s
    return (alpha * _squared_distances(f_s, neighbours)).sum() / len(f_s)


class LPLParams(Params):
    k: Annotated[int, Field(ge=1, description="neighbours per sample in the mini-batch")]
    gamma: Annotated[float, Field(ge=0)]
    sigma: Annotated[float, Field(gt=0)] | None = Field(description="None: the scale-free rule")
    lam: Annotated[float, Field(ge=0, description="weight of Eq. 8's soft-target term")]
    tau: Annotated[float, Field(gt=0, description="softmax(a / tau) as in Eq. 1")]
    layer: Literal["hint", "last"]
    gradient: Literal["eq9", "full"]


class LPL(Distiller):
    Params = LPLParams
    teacher_features = frozenset({"stages", "logits"})
    student_features = frozenset({"stages"})
    loss_terms = frozenset({"lpl", "lpl_kd"})

    def __init__(self, params: LPLParams, probe: Probe):
        super().__init__(params, probe)
        if params.k >= probe.batch_size:
            raise UserError(f"lpl: k={params.k} neighbours need a batch larger than k (batch size {probe.batch_size})")
        (self.index,) = stage_indices(params.layer, probe)

    def forward(self, student, teacher, targets):
        p = self.params
        losses = {"lpl": p.gamma * lpl_loss(student["stages"][self.index], teacher["stages"][self.index],
                                            p.k, p.sigma, p.gradient)}
        if p.lam > 0:
            losses["lpl_kd"] = p.lam * kd_loss(student["logits"], teacher["logits"], p.tau) / p.tau**2
        return losses
