"""Decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022).

With p = softmax(z / tau) and the target class y:
    TCKD = KL([p_y, 1 - p_y]^T || [p_y, 1 - p_y]^S)            (target vs. the rest)
    NCKD = KL(p^T_{-y} || p^S_{-y}), p_{-y} = softmax over the non-target classes only
    dkd  = tau^2 * (alpha * TCKD + beta * NCKD), batch mean (mdistiller's dkd_loss).
Computed in log space (log(1 - p_y) as a log-sum-exp over the non-target logits), so no
probability underflows to log(0). `standardize` applies the logit standardisation of Sun et al.
(2024) to both logits first (`standardize_logits` in methods/kd.py).

mdistiller ramps the weight in linearly, min(epoch / warmup, 1) with epoch counted from 1
(`dkd_warmup`); the engine tells the method each main-phase epoch (`Distiller.set_epoch`).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from methods.base import Distiller, Params
from methods.kd import standardize_logits


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _binary_log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """b x 2: log p_y and log(1 - p_y) of softmax(logits)."""
    log_p = F.log_softmax(logits, dim=1)
    is_target = F.one_hot(target, logits.shape[1]).bool()
    log_rest = torch.logsumexp(logits.masked_fill(is_target, float("-inf")), dim=1) - torch.logsumexp(logits, dim=1)
    return torch.stack([log_p[is_target], log_rest], dim=1)


def _non_target_log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """b x (C - 1): log-softmax over the non-target classes."""
    keep = ~F.one_hot(target, logits.shape[1]).bool()
    return F.log_softmax(logits[keep].view(logits.shape[0], -1), dim=1)


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             alpha: float, beta: float, tau: float) -> torch.Tensor:
    s, t = student_logits.float() / tau, teacher_logits.float() / tau
    tckd = _kl(_binary_log_probs(t, target), _binary_log_probs(s, target))
    nckd = _kl(_non_target_log_probs(t, target), _non_target_log_probs(s, target))
    return tau**2 * (alpha * tckd + beta * nckd).mean()


def dkd_warmup(epoch: int, warmup_epochs: int, first: int = 1) -> float:
    """mdistiller's ramp, min(epoch / warmup, 1) for its 1-based epoch (`first` 1), at our 0-based
    `epoch`; `first` 0 counts from 0 (ReviewKD's own train.py: weight 0 in the first epoch)."""
    return min((epoch + first) / warmup_epochs, 1.0) if warmup_epochs else 1.0


class DKDParams(Params):
    alpha: Annotated[float, Field(ge=0, description="weight of TCKD (target vs. non-target)")]
    beta: Annotated[float, Field(ge=0, description="weight of NCKD (among the non-target classes)")]
    tau: Annotated[float, Field(gt=0, description="softmax temperature")]
    standardize: Annotated[bool, Field(description="Z-score both logits first (Sun et al. 2024)")]
    warmup_epochs: Annotated[int, Field(ge=0, description="epochs of the linear warm-up of the weight (0: none)")]


class DKD(Distiller):
    Params = DKDParams
    teacher_features = frozenset({"logits"})
    student_features = frozenset({"logits"})
    loss_terms = frozenset({"dkd"})

    def __init__(self, params: DKDParams, probe):
        super().__init__(params, probe)
        self.epoch = 0

    def set_epoch(self, epoch: int, main_epochs: int) -> None:
        self.epoch = epoch

    def forward(self, student, teacher, targets):
        s, t = student["logits"], teacher["logits"]
        if self.params.standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        p = self.params
        weight = dkd_warmup(self.epoch, p.warmup_epochs)
        return {"dkd": weight * dkd_loss(s, t, targets, p.alpha, p.beta, p.tau)}
