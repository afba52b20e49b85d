"""Adversarial learning of portable student networks (Wang, Xu, Xu & Tao, AAAI 2018), as the LPL
paper's "Adversarial Learning" baseline.

A discriminator D (a small MLP, trained by its own Adam optimizer) tells the teacher's penultimate
features from the student's; the student, as the generator, learns to make its features pass:
    adv   = lam(step) * BCE(D(P(f_S)), real)          (the non-saturating generator loss)
    adv_d = 1/2 [BCE(D(f_T), real) + BCE(D(P(f_S)), fake)]
P is a linear projection of the student's features to the teacher's width (identity when the
widths agree; it trains with the student). Both terms come from one backward pass: `adv` reaches
D through a detached copy of D's parameters and `adv_d` sees the student's features detached, so
each side moves only on its own loss (the student's and D's steps in one iteration). lam ramps
linearly from 0 over `warmup_steps` steps.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from methods.base import Distiller, ExtraOptimizer, Params, Probe
from methods.common import Discriminator, judge_frozen, ramp


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """1/2 [BCE(real, 1) + BCE(fake, 0)], means over the batch."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return (real + fake) / 2


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE(fake, 1): the student wants D to call its features the teacher's."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


class AdvParams(Params):
    lam: Annotated[float, Field(ge=0, description="weight of the adversarial term once warmed up")]
    warmup_steps: Annotated[int, Field(ge=0, description="steps over which the weight ramps from 0 to lam")]
    hidden: Annotated[int, Field(ge=1, description="width of the discriminator's hidden layers")]
    d_lr: Annotated[float, Field(gt=0, description="the discriminator's Adam learning rate")]


class Adversarial(Distiller):
    Params = AdvParams
    teacher_features = frozenset({"pre_logits"})
    student_features = frozenset({"pre_logits"})
    loss_terms = frozenset({"adv", "adv_d"})

    def __init__(self, params: AdvParams, probe: Probe):
        super().__init__(params, probe)
        width_s = probe.student["pre_logits"].shape[1]
        width_t = probe.teacher["pre_logits"].shape[1]
        self.projection = nn.Identity() if width_s == width_t else nn.Linear(width_s, width_t)
        self.discriminator = Discriminator(width_t, params.hidden)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, student, teacher, targets):
        p = self.params
        if torch.is_grad_enabled():
            self.steps += 1
        fake = self.projection(student["pre_logits"].float())
        real = teacher["pre_logits"].float()
        weight = p.lam * ramp(self.steps, p.warmup_steps)
        return {"adv": weight * generator_loss(judge_frozen(self.discriminator, fake)),
                "adv_d": discriminator_loss(self.discriminator(real), self.discriminator(fake.detach()))}

    def extra_optimizers(self) -> list[ExtraOptimizer]:
        return [ExtraOptimizer("adv_discriminator", list(self.discriminator.parameters()), self.params.d_lr,
                               weight_decay=0.0, kind="adam", betas=(0.5, 0.999))]
