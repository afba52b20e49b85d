"""Neuron selectivity transfer (Huang & Wang 2017), all of §4.2.

Each channel's map f^k (a row of F in R^{C x HW}) is l2-normalised, and the teacher's and the
student's sets of normalised maps are compared by MMD^2 (Eq. 4), per sample, averaged over the
batch:

    MMD^2 = 1/C_T^2 sum k(t_i, t_i') + 1/C_S^2 sum k(s_j, s_j') - 2/(C_T C_S) sum k(t_i, s_j)

Kernels: linear x.y, polynomial (x.y + c)^d with d = 2, c = 0, Gaussian exp(-||x-y||^2 / 2 s^2)
with s^2 the mean squared distance over the distinct pairs of the sample's maps, teacher's and
student's together (detached). The
teacher-teacher term is kept (it is constant for the student but makes the value a true MMD^2).
When spatial sizes differ the student's maps are bilinearly interpolated to the teacher's (§3.1).
Vector features (MLPs) have no spatial positions: there each unit is a "channel" and its
activations over the mini-batch are its map, one MMD^2 per batch.

Loss term = lam / 2 * sum over the compared stage pairs of MMD^2 (Eq. 3).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from methods.base import Distiller, Params, Probe
from methods.common import resize, stage_indices


def channel_maps(f: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x C x HW; N x D -> 1 x D x N (units over the batch). Rows l2-normalised."""
    maps = f.float().flatten(2) if f.ndim == 4 else f.float().t().unsqueeze(0)
    return F.normalize(maps, dim=2)


def _squared_frobenius_of_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a b^T||_F^2 per sample for a: N x Ca x P, b: N x Cb x P, through the cheaper of the
    Ca x Cb product or the P x P Grams: ||a b^T||^2 = trace((a^T a)(b^T b))."""
    ca, cb, p = a.shape[1], b.shape[1], a.shape[2]
    if ca * cb <= p * p:
        return torch.bmm(a, b.transpose(1, 2)).pow(2).sum(dim=(1, 2))
    return (torch.bmm(a.transpose(1, 2), a) * torch.bmm(b.transpose(1, 2), b)).sum(dim=(1, 2))


def nst_mmd2(f_s: torch.Tensor, f_t: torch.Tensor, kernel: str = "poly") -> torch.Tensor:
    """Batch mean of MMD^2 between the student's and teacher's normalised channel maps.

    Cost per sample (C channels, P = HW positions): linear O(C P); poly O(min(C^2 P, P^2 C)),
    through ||F_a F_b^T||_F^2 without forming any kernel matrix elementwise; gaussian O(C^2 P)
    (it needs every pairwise distance).
    """
    if f_s.ndim == 4 and f_s.shape[-2:] != f_t.shape[-2:]:
        f_s = resize(f_s, f_t.shape[-2:])
    s, t = channel_maps(f_s), channel_maps(f_t)
    cs, ct = s.shape[1], t.shape[1]
    if kernel == "linear":  # Eq. 5: the squared distance of the mean normalised maps
        return (t.mean(dim=1) - s.mean(dim=1)).pow(2).sum(dim=1).mean()
    if kernel == "poly":  # d = 2, c = 0; Eq. 9's Gram-matrix form, computed cheaply
        tt = _squared_frobenius_of_product(t, t) / ct**2
        ss = _squared_frobenius_of_product(s, s) / cs**2
        ts = _squared_frobenius_of_product(t, s) / (ct * cs)
        return (tt + ss - 2 * ts).mean()
    if kernel == "gauss":
        joint = torch.cat([t, s], dim=1)
        sq = torch.cdist(joint, joint).pow(2)
        n = joint.shape[1]  # sigma^2: mean over the n (n - 1) distinct ordered pairs
        sigma2 = (sq.detach().sum(dim=(1, 2), keepdim=True) / (n * (n - 1))).clamp_min(1e-12)
        k = torch.exp(-sq / (2 * sigma2))
        return (k[:, :ct, :ct].mean(dim=(1, 2)) + k[:, ct:, ct:].mean(dim=(1, 2))
                - 2 * k[:, :ct, ct:].mean(dim=(1, 2))).mean()
    raise ValueError(f"unknown NST kernel {kernel!r}")


class NSTParams(Params):
    lam: Annotated[float, Field(ge=0, description="Eq. 3's lambda; the term is lam / 2 * MMD^2")]
    layers: Literal["last", "all", "hint"]


class NST(Distiller):
    """Eq. 3's MMD^2 between the students' and teachers' channel maps; the kernel is the subclass's."""

    Params = NSTParams
    kernel: ClassVar[str]
    teacher_features = frozenset({"stages"})
    student_features = frozenset({"stages"})
    loss_terms = frozenset({"nst"})

    def __init__(self, params: NSTParams, probe: Probe):
        super().__init__(params, probe)
        self.indices = stage_indices(params.layers, probe)

    def forward(self, student, teacher, targets):
        mmd2 = sum(nst_mmd2(student["stages"][i], teacher["stages"][i], self.kernel) for i in self.indices)
        return {"nst": self.params.lam / 2 * mmd2}


class NSTLinear(NST):
    kernel = "linear"


class NSTPoly(NST):
    kernel = "poly"


class NSTGauss(NST):
    kernel = "gauss"
