"""Neuron manifold transfer ("Knowledge distill via learning neuron manifold", ICLR 2019
submission), Eq. 5-7.

A regressor maps the student's features onto the teacher's (its parameters are extra
parameters). Both feature sets, flattened per sample, are projected onto their manifolds by
moving least squares (methods/mls.py): the manifold points m_T (teacher, no gradient) and m_S
(regressed student). Eq. 7:

    loss = CE + lam / 2 * d(M_T, M_S),   d = 1/k sum_i ||m_T,i - m_S,i||_p

Choices the paper leaves open (see docs/methods/nmt.md): the manifold's points are the
mini-batch's samples (one point per image, paired with the same image's point in the other
network; k = the batch size); intrinsic dimension `dim`; `neighbours` nearest points form each
local fit; `iterations` fixed; theta(s) = 1 / (s^2 + eps) in units of the mean neighbour
distance; the student's local geometry (neighbours, weights, basis) carries no gradient.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from harness.errors import UserError
from methods.base import Distiller, Params, Probe
from methods.common import stage_indices
from methods.fitnet import Regressor
from methods.mls import mls_project


def nmt_distance(f_s: torch.Tensor, f_t: torch.Tensor, dim: int, neighbours: int, iterations: int, degree: int,
                 p: float) -> torch.Tensor:
    """Eq. 7's d(M_T, M_S) between two n x D feature sets (rows paired by sample). Non-finite
    features (a diverging student) make the eigensolver fail: the distance is then NaN, which the
    engine reports as a diverged loss term instead of a linear-algebra traceback."""
    try:  # both sets in one batched projection (the teacher's carries no gradient: its features have none)
        m_t, m_s = mls_project(torch.stack([f_t.detach().float(), f_s.float()]), dim, neighbours, iterations, degree)
    except torch.linalg.LinAlgError:
        return f_s.new_full((), float("nan")) * f_s.sum()  # NaN, still attached to the graph
    return (m_t - m_s).norm(p=p, dim=1).mean()


class NMTParams(Params):
    lam: Annotated[float, Field(ge=0, description="Eq. 7's lambda; the term is lam / 2 * d")]
    dim: Annotated[int, Field(ge=1, description="intrinsic dimension d of the manifold")]
    neighbours: Annotated[int, Field(ge=2, description="points in each local MLS fit")]
    iterations: Annotated[int, Field(ge=1, le=100)]
    degree: Literal[1, 2]
    p: Annotated[float, Field(ge=1, description="the norm in Eq. 7")]
    layer: Literal["hint", "last"]


class NMT(Distiller):
    Params = NMTParams
    teacher_features = frozenset({"stages"})
    student_features = frozenset({"stages"})
    loss_terms = frozenset({"nmt"})

    def __init__(self, params: NMTParams, probe: Probe):
        super().__init__(params, probe)
        (self.index,) = stage_indices(params.layer, probe)
        teacher = probe.teacher["stages"][self.index]
        features = teacher[0].numel()
        if params.dim >= min(features, params.neighbours):
            raise UserError(f"nmt: intrinsic dimension {params.dim} must be smaller than the feature dimension "
                            f"({features}) and the number of neighbours ({params.neighbours})")
        if params.neighbours > probe.batch_size:
            raise UserError(f"nmt: {params.neighbours} neighbours need a batch at least that large "
                            f"(batch size {probe.batch_size})")
        self.regressor = Regressor(probe.student["stages"][self.index], teacher)

    def forward(self, student, teacher, targets):
        p = self.params
        f_s = self.regressor(student["stages"][self.index]).flatten(1)
        f_t = teacher["stages"][self.index].flatten(1)
        return {"nmt": p.lam / 2 * nmt_distance(f_s, f_t, p.dim, p.neighbours, p.iterations, p.degree, p.p)}
