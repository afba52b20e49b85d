"""Similarity-preserving KD (Tung & Mori, ICCV 2019).

Per compared stage, the batch's b x b Gram matrix of flattened features, each row L2-normalised:
G = row_normalise(F F^T); sp_loss = ||G_T - G_S||_F^2 / b^2. Loss term = beta * sum over the
compared stages (the last stage by default, as RepDistiller and mdistiller place it).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from methods.base import Distiller, Params, Probe
from methods.common import stage_indices


def similarity_matrix(f: torch.Tensor) -> torch.Tensor:
    """b x b Gram matrix of the flattened features, each row L2-normalised."""
    flat = f.float().flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """||G_T - G_S||_F^2 / b^2."""
    return (similarity_matrix(f_t) - similarity_matrix(f_s)).pow(2).sum() / f_s.shape[0] ** 2


class SPParams(Params):
    beta: Annotated[float, Field(ge=0, description="weight of the similarity-preserving term")]
    layers: Literal["all", "last", "hint"]


class SP(Distiller):
    Params = SPParams
    teacher_features = frozenset({"stages"})
    student_features = frozenset({"stages"})
    loss_terms = frozenset({"sp"})

    def __init__(self, params: SPParams, probe: Probe):
        super().__init__(params, probe)
        self.indices = stage_indices(params.layers, probe)

    def forward(self, student, teacher, targets):
        total = sum(sp_loss(student["stages"][i], teacher["stages"][i]) for i in self.indices)
        return {"sp": self.params.beta * total}
