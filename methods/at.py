"""Attention transfer (Zagoruyko & Komodakis 2017), activation-based.

attention map A(F) = vec(sum_c |f_c|^p) / ||vec(sum_c |f_c|^p)||_2 over the H x W positions;
at_loss = mean over batch and positions of (A(F_S) - A(F_T))^2, the larger map average-pooled
to the smaller's H x W first. Loss term = beta / 2 * sum over the compared stage pairs (the paper's
Eq. 2, `weighting: paper`) or beta * sum (the authors' cifar.py, `weighting: code`).
(Channel sum or channel mean give the same normalised map.)
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from methods.base import Distiller, Params, Probe
from methods.common import pool_to_smaller, require_maps, stage_indices


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    return F.normalize(f.float().abs().pow(p).sum(dim=1).flatten(1), dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    f_s, f_t = pool_to_smaller(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


class ATParams(Params):
    beta: Annotated[float, Field(ge=0)]
    p: Annotated[float, Field(gt=0)]
    layers: Literal["all", "last", "hint"]
    weighting: Literal["paper", "code"] = Field(
        "paper", description="paper: beta/2 * sum (Eq. 2); code: beta * sum (the authors' cifar.py)")


class AT(Distiller):
    Params = ATParams
    teacher_features = frozenset({"stages"})
    student_features = frozenset({"stages"})
    loss_terms = frozenset({"at"})

    def __init__(self, params: ATParams, probe: Probe):
        super().__init__(params, probe)
        self.indices = stage_indices(params.layers, probe)
        require_maps("at", probe, self.indices)

    def forward(self, student, teacher, targets):
        total = sum(at_loss(student["stages"][i], teacher["stages"][i], self.params.p) for i in self.indices)
        weight = self.params.beta / 2 if self.params.weighting == "paper" else self.params.beta
        return {"at": weight * total}
