"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), on the penultimate embeddings.

Cosine-similarity kernel K_ij = (cos(e_i, e_j) + 1) / 2 (in [0, 1]); conditional densities
p_{j|i} = K_ij / sum_k K_ik over the batch (the diagonal included, as in the authors' code);
pkt_loss = mean over i of KL(p^T_{.|i} || p^S_{.|i}) (summed over j). Loss term = lam * pkt_loss.
RepDistiller's PKT averages over the b^2 entries instead: its value is pkt_loss / b, so its weight
(-b 30000) is lam = 30000 / b here, which depends on the batch. `lam_batch` ties lam to the batch
it was converted at: at the recipe's batch b the term is lam * lam_batch / b * pkt_loss, the same
weight on RepDistiller's mean at every batch.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from methods.base import Distiller, Params, Probe


def conditional_densities(e: torch.Tensor) -> torch.Tensor:
    """b x b, row i = p_{.|i} from the cosine-similarity kernel."""
    u = F.normalize(e.float().flatten(1), dim=1)
    kernel = (u @ u.t() + 1) / 2
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(p^T_{.|i} || p^S_{.|i})."""
    p_t, p_s = conditional_densities(e_t), conditional_densities(e_s)
    kl = p_t * (p_t.clamp_min(1e-12).log() - p_s.clamp_min(1e-12).log())
    return kl.sum(dim=1).mean()


class PKTParams(Params):
    lam: Annotated[float, Field(ge=0, description="weight of the PKT term (at batch lam_batch, when set)")]
    # a default, so that runs made before the option existed keep their keys (plan.identity_dump)
    lam_batch: int | None = Field(None, ge=1, description=(
        "the batch size lam was converted at from RepDistiller's mean over b^2 entries: lam scales by "
        "lam_batch / the recipe's batch; none: lam as given at every batch"))


class PKT(Distiller):
    Params = PKTParams
    teacher_features = frozenset({"pre_logits"})
    student_features = frozenset({"pre_logits"})
    loss_terms = frozenset({"pkt"})

    def __init__(self, params: PKTParams, probe: Probe):
        super().__init__(params, probe)
        self.weight = params.lam * (params.lam_batch / probe.batch_size if params.lam_batch else 1.0)

    def forward(self, student, teacher, targets):
        return {"pkt": self.weight * pkt_loss(student["pre_logits"], teacher["pre_logits"])}
