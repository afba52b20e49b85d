"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020), as RepDistiller.

Both penultimate vectors go through a linear embedding head and L2 normalisation (d = feat_dim).
Two memory banks hold one embedding per training image: the student's (bank_s) and the teacher's
(bank_t). For a batch image i (its index in the training split), the positive is bank entry i and
the `nce_k` negatives are images of other classes, drawn uniformly, distinct when the other classes
hold at least `nce_k` images and with replacement otherwise (RepDistiller's 'exact' mode and its
`replace = k > len(negatives)`). With the teacher as anchor, scores against the student's bank, and vice versa:

    P = exp(bank[j] . v / nce_t) / Z,   Z = n * mean of exp(...) at the first batch (then fixed)
    NCE (CRD Eq. 18): -(1/b) sum_i [ log(P_i0 / (P_i0 + K/n)) + sum_k log((K/n) / (P_ik + K/n)) ]
    crd = beta * (NCE(student anchor, teacher bank) + NCE(teacher anchor, student bank))

after which each bank's positive rows move to momentum * old + (1 - momentum) * new, renormalised.
The banks and Z are buffers: they checkpoint and resume with the objective's state.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from methods.base import Distiller, Params, Probe

EPS = 1e-7  # RepDistiller's ContrastLoss
SPARSE = 16  # distinct negatives by redrawing repeats where K is at most 1/16 of the candidates


def contrast_scores(bank: torch.Tensor, anchors: torch.Tensor, sample: torch.Tensor, temperature: float) -> torch.Tensor:
    """b x (K + 1): exp(bank[sample[i, k]] . anchors[i] / T), unnormalised (column 0 the positive)."""
    return torch.einsum("bkd,bd->bk", bank[sample], anchors).div(temperature).exp()


def nce_loss(probabilities: torch.Tensor, n_data: int) -> torch.Tensor:
    """CRD Eq. 18 on b x (K + 1) normalised scores, column 0 the positive: noise probability 1/n."""
    k = probabilities.shape[1] - 1
    noise = k / n_data
    log_positive = torch.log(probabilities[:, 0] / (probabilities[:, 0] + noise + EPS))
    log_negatives = torch.log(noise / (probabilities[:, 1:] + noise + EPS))
    return -(log_positive.sum() + log_negatives.sum()) / probabilities.shape[0]


REDRAWS = 12  # rounds of redrawing repeats: one survives all with probability below (1/SPARSE)^12, 4e-15


def distinct_below(high: torch.Tensor, k: int, bounds: tuple[int, int] | None = None) -> torch.Tensor:
    """len(high) x k integers, row i k distinct ones drawn uniformly from [0, high[i]) (high >= k).
    `bounds`: the smallest and largest of `high`, known on the host (no value is then read back from
    the device: a training step never waits for it). Where k is a small part of the range (ImageNet's
    16,384 of 1.28 million) the repeats of a draw with replacement are redrawn, REDRAWS rounds (every
    k-subset stays equally likely: the redraw treats all values alike); otherwise (CIFAR's 16,384 of
    49,500, where redraws would collide a third of the time) each row takes the k smallest of random
    keys over its range, the head of a random permutation."""
    lowest, highest = bounds if bounds is not None else (int(high.min()), int(high.max()))
    if k * SPARSE > lowest:
        keys = torch.rand(len(high), highest, device=high.device)
        inside = torch.arange(highest, device=high.device)[None, :] < high[:, None]
        return torch.where(inside, keys, 2.0).topk(k, dim=1, largest=False, sorted=False).indices
    draw = (torch.rand(len(high), k, device=high.device) * high[:, None]).long()
    for _ in range(REDRAWS):
        ordered, order = draw.sort(dim=1)
        repeat = torch.zeros_like(draw, dtype=torch.bool)
        repeat.scatter_(1, order[:, 1:], ordered[:, 1:] == ordered[:, :-1])
        fresh = (torch.rand(draw.shape, device=high.device) * high[:, None]).long()
        draw = torch.where(repeat, fresh, draw)
    return draw


def sample_contrasts(indices: torch.Tensor, labels: torch.Tensor, by_class: torch.Tensor, starts: torch.Tensor,
                     counts: torch.Tensor, k: int, distinct: bool = True,
                     negatives_range: tuple[int, int] | None = None) -> torch.Tensor:
    """b x (K + 1): each image's own index, then K images of other classes, uniform: with `distinct`,
    distinct where the other classes hold at least K images, else with replacement (RepDistiller's
    CIFAR100InstanceSample: replace = K > the number of negatives). by_class: the training indices sorted by label;
    starts/counts: each class's slice of it; negatives_range: the fewest and most images of other classes
    any anchor has, known on the host (CRD keeps them from binding its training set), so that the step
    reads nothing back from the device, except where K lies between them (some anchors distinct, some not)."""
    classes = labels[indices]
    start, count = starts[classes, None], counts[classes, None]
    negatives = len(labels) - count[:, 0]
    fewest, most = negatives_range if negatives_range is not None else (
        len(labels) - int(counts.max()), len(labels) - int(counts.min()))
    if distinct and fewest >= k:
        draw = distinct_below(negatives, k, (fewest, most))
    else:
        draw = (torch.rand(len(indices), k, device=indices.device) * negatives[:, None]).long()
        if distinct and most >= k:  # K between the classes' sizes: a masked draw (it reads the mask back)
            enough = negatives >= k
            draw[enough] = distinct_below(negatives[enough], k, (k, most))
    position = torch.where(draw < start, draw, draw + count)  # skip the anchor's own class
    return torch.cat([indices[:, None], by_class[position]], dim=1)


def momentum_update(bank: torch.Tensor, indices: torch.Tensor, new: torch.Tensor, momentum: float) -> None:
    mixed = bank[indices] * momentum + new.detach() * (1 - momentum)
    bank[indices] = F.normalize(mixed, dim=1)


class CRDParams(Params):
    beta: Annotated[float, Field(ge=0, description="weight of the contrastive term")]
    feat_dim: Annotated[int, Field(ge=1, description="embedding dimension")]
    nce_k: Annotated[int, Field(ge=1, description="negatives per positive")]
    nce_t: Annotated[float, Field(gt=0, description="temperature")]
    nce_m: Annotated[float, Field(ge=0, lt=1, description="momentum of the memory banks")]
    # a default, so that runs made before the option existed keep their keys (plan.identity_dump)
    negatives: Literal["with_replacement", "distinct"] = Field("with_replacement", description=(
        "distinct: K different images where the other classes hold K or more (RepDistiller), else with "
        "replacement; with_replacement: always (this harness before the option)"))


class CRD(Distiller):
    Params = CRDParams
    teacher_features = frozenset({"pre_logits"})
    student_features = frozenset({"pre_logits", "indices"})
    loss_terms = frozenset({"crd"})

    def __init__(self, params: CRDParams, probe: Probe):
        super().__init__(params, probe)
        d = params.feat_dim
        self.embed_s = nn.Linear(probe.student["pre_logits"].shape[1], d)
        self.embed_t = nn.Linear(probe.teacher["pre_logits"].shape[1], d)

    def bind_training_set(self, labels: torch.Tensor) -> None:
        """Banks of one entry per training image, uniform in [-s, s], s = 1 / sqrt(d / 3) (RepDistiller)."""
        n, d = len(labels), self.params.feat_dim
        spread = 1 / math.sqrt(d / 3)
        generator = torch.Generator().manual_seed(0)  # the same initial banks in every process of a run
        for name in ("bank_s", "bank_t"):
            self.register_buffer(name, (torch.rand(n, d, generator=generator) * 2 - 1).mul(spread).to(labels.device))
        self.register_buffer("z", torch.full((2,), -1.0, device=labels.device))  # set at the first batch
        by_class = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("by_class", by_class, persistent=False)
        self.register_buffer("counts", counts, persistent=False)
        self.register_buffer("starts", torch.cumsum(counts, 0) - counts, persistent=False)
        self.negatives_range = (n - int(counts.max()), n - int(counts.min()))  # on the host, once

    def forward(self, student, teacher, targets):
        p, idx = self.params, student["indices"]
        v_s = F.normalize(self.embed_s(student["pre_logits"]), dim=1)
        v_t = F.normalize(self.embed_t(teacher["pre_logits"]), dim=1)
        sample = sample_contrasts(idx, self.labels, self.by_class, self.starts, self.counts, p.nce_k,
                                  p.negatives == "distinct", self.negatives_range)
        on_student = contrast_scores(self.bank_t.detach(), v_s, sample, p.nce_t)  # student anchor, teacher bank
        on_teacher = contrast_scores(self.bank_s.detach(), v_t, sample, p.nce_t)
        n = len(self.labels)
        with torch.no_grad():
            unset = self.z < 0  # RepDistiller's normalisation constants, from the first batch
            first = torch.stack([on_student.mean(), on_teacher.mean()]) * n
            self.z.copy_(torch.where(unset, first, self.z))
        loss = nce_loss(on_student / self.z[0], n) + nce_loss(on_teacher / self.z[1], n)
        with torch.no_grad():
            momentum_update(self.bank_s, idx, v_s, p.nce_m)
            momentum_update(self.bank_t, idx, v_t, p.nce_m)
        return {"crd": p.beta * loss}
