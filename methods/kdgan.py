"""KDGAN (Wang, Zhang, Sun & Qi, "KDGAN: knowledge distillation with generative adversarial
networks", NeurIPS 2018), as the KR paper's "KDGAN" baseline, with the harness's frozen teacher.

The student is KDGAN's classifier C. A discriminator D(x, y) judges whether a label distribution
y is the true label of image x; x enters D through the teacher's penultimate features (fixed: D
trains no backbone of its own). Labels sampled from C and from the teacher T are relaxed by the
Gumbel-softmax (temperature `gumbel_tau`) so that D's verdict on C's sample has a gradient:
    kdgan_kd  = lam * tau^2 * KL(softmax(t / tau) || softmax(s / tau))       (C distils T)
    kdgan_adv = lam_adv(step) * BCE(D(x, y_C), true)                         (C fools D)
    kdgan_d   = BCE(D(x, onehot(y)), true) + alpha * BCE(D(x, y_C), false)
                + (1 - alpha) * BCE(D(x, y_T), false)                         (D's own loss)
One backward pass serves both sides (docs/methods/adv.md explains the detaching). Departure from
the original: T is frozen (the harness's teachers are trained once and shared), so T's own
distillation and adversarial updates are left out; docs/methods/kdgan.md lists the rest.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from methods.adv import generator_loss
from methods.base import Distiller, ExtraOptimizer, Params, Probe
from methods.common import Discriminator, judge_frozen, ramp
from methods.kd import kd_loss


def kdgan_discriminator_loss(true_logits: torch.Tensor, student_logits: torch.Tensor,
                             teacher_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """D's loss on D's logits for (x, true label), (x, C's sample) and (x, T's sample)."""
    def bce(logits, target):
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))

    return bce(true_logits, 1.0) + alpha * bce(student_logits, 0.0) + (1 - alpha) * bce(teacher_logits, 0.0)


class KDGANParams(Params):
    tau: Annotated[float, Field(gt=0, description="temperature of the distillation term")]
    lam: Annotated[float, Field(ge=0, description="weight of the distillation term (KDGAN's beta)")]
    lam_adv: Annotated[float, Field(ge=0, description="weight of the student's adversarial term once warmed up")]
    alpha: Annotated[float, Field(ge=0, le=1, description="share of the student's samples among D's fakes")]
    gumbel_tau: Annotated[float, Field(gt=0, description="Gumbel-softmax temperature of the label samples")]
    warmup_steps: Annotated[int, Field(ge=0, description="steps over which lam_adv ramps from 0")]
    hidden: Annotated[int, Field(ge=1, description="width of the discriminator's hidden layers")]
    d_lr: Annotated[float, Field(gt=0, description="the discriminator's Adam learning rate")]


class KDGAN(Distiller):
    Params = KDGANParams
    teacher_features = frozenset({"logits", "pre_logits"})
    student_features = frozenset({"logits"})
    loss_terms = frozenset({"kdgan_kd", "kdgan_adv", "kdgan_d"})

    def __init__(self, params: KDGANParams, probe: Probe):
        super().__init__(params, probe)
        self.num_classes = probe.teacher["logits"].shape[1]
        self.discriminator = Discriminator(probe.teacher["pre_logits"].shape[1] + self.num_classes, params.hidden)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, student, teacher, targets):
        p = self.params
        if torch.is_grad_enabled():
            self.steps += 1
        image = teacher["pre_logits"].float()
        s_logits, t_logits = student["logits"].float(), teacher["logits"].float()
        y_student = F.gumbel_softmax(s_logits, tau=p.gumbel_tau)
        y_teacher = F.gumbel_softmax(t_logits, tau=p.gumbel_tau)
        y_true = F.one_hot(targets, self.num_classes).float()

        def pair(y):
            return torch.cat([image, y], dim=1)

        d = self.discriminator
        d_loss = kdgan_discriminator_loss(d(pair(y_true)), d(pair(y_student.detach())), d(pair(y_teacher)), p.alpha)
        fooled = generator_loss(judge_frozen(self.discriminator, pair(y_student)))
        return {"kdgan_kd": p.lam * kd_loss(s_logits, t_logits, p.tau),
                "kdgan_adv": p.lam_adv * ramp(self.steps, p.warmup_steps) * fooled,
                "kdgan_d": d_loss}

    def extra_optimizers(self) -> list[ExtraOptimizer]:
        return [ExtraOptimizer("kdgan_discriminator", list(self.discriminator.parameters()), self.params.d_lr,
                               weight_decay=0.0, kind="adam", betas=(0.5, 0.999))]
