"""Factor transfer (Kim, Park & Kwak, NeurIPS 2018): "Paraphrasing complex network".

A paraphraser (three 3x3 convs encoding the teacher's last-stage map into k * C channels, three 3x3
transposed convs decoding it back, LeakyReLU 0.1 after each, no BN) is trained first, in the pre-phase
"ft_paraphraser", to reconstruct the teacher's map: mean((decode(encode(t)) - t)^2); only its own
parameters move (the teacher is frozen, the student gets no gradient). Then, with the paraphraser
frozen, a translator (three 3x3 conv - BN - LeakyReLU layers) on the student's last-stage map is
matched to the teacher's factor (the larger factor map average-pooled to the smaller's H x W):

    ft = beta * mean | phi(translator(s)) - phi(encode(t)) |

phi (`form`): `repdistiller`, F.normalize(mean over channels of f^2, flattened) (RepDistiller's
FactorTransfer, p1 = 2); `paper`, F.normalize(vec(f)) (Eq. 3, the authors' `utils.FT` with nn.L1Loss).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from methods.base import Distiller, Params, PrePhase, Probe
from methods.common import pool_to_smaller, require_maps, stage_indices


def leaky(layer: nn.Module, bn: int | None = None) -> list[nn.Module]:
    return [layer] + ([nn.BatchNorm2d(bn)] if bn else []) + [nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    def __init__(self, channels: int, factors: int):
        super().__init__()
        widths = [channels, channels, factors, factors]
        self.encoder = nn.Sequential(*[m for a, b in zip(widths, widths[1:]) for m in leaky(nn.Conv2d(a, b, 3, 1, 1))])
        back = widths[::-1]
        self.decoder = nn.Sequential(*[m for a, b in zip(back, back[1:])
                                       for m in leaky(nn.ConvTranspose2d(a, b, 3, 1, 1))])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(t))


def translator(channels: int, factors: int) -> nn.Sequential:
    widths = [channels, channels, factors, factors]
    return nn.Sequential(*[m for a, b in zip(widths, widths[1:]) for m in leaky(nn.Conv2d(a, b, 3, 1, 1), bn=b)])


def factor_code(f: torch.Tensor, form: str) -> torch.Tensor:
    return F.normalize((f.pow(2).mean(1) if form == "repdistiller" else f).flatten(1))


def ft_loss(factor_s: torch.Tensor, factor_t: torch.Tensor, form: str) -> torch.Tensor:
    factor_s, factor_t = pool_to_smaller(factor_s, factor_t)
    return (factor_code(factor_s, form) - factor_code(factor_t, form)).abs().mean()


class FTParams(Params):
    rate: Annotated[float, Field(gt=0, le=1, description="k: factor channels / teacher channels")]
    beta: Annotated[float, Field(ge=0, description="weight of the factor loss")]
    form: Literal["repdistiller", "paper"]
    paraphraser_fraction: Annotated[float, Field(gt=0, le=1, description="pre-phase epochs / main epochs")]
    paraphraser_lr_scale: Annotated[float, Field(gt=0, description="pre-phase lr / the recipe's base lr")]


class FT(Distiller):
    Params = FTParams
    teacher_features = frozenset({"stages"})
    student_features = frozenset({"stages"})
    loss_terms = frozenset({"ft"})

    def __init__(self, params: FTParams, probe: Probe):
        super().__init__(params, probe)
        (self.index,) = stage_indices("last", probe)
        require_maps("ft", probe, [self.index])
        channels = probe.teacher["stages"][self.index].shape[1]
        factors = max(1, int(channels * params.rate))
        self.paraphraser = Paraphraser(channels, factors)
        self.translator = translator(probe.student["stages"][self.index].shape[1], factors)

    def pre_phases(self, main_epochs: int) -> list[PrePhase]:
        p = self.params
        return [PrePhase("ft_paraphraser", max(1, round(p.paraphraser_fraction * main_epochs)), p.paraphraser_lr_scale)]

    def phase_losses(self, phase, student, teacher, targets):
        t = teacher["stages"][self.index].float()
        return {"ft_paraphraser": F.mse_loss(self.paraphraser(t), t)}

    def forward(self, student, teacher, targets):
        with torch.no_grad():  # the paraphraser is frozen after its phase
            factor_t = self.paraphraser.encoder(teacher["stages"][self.index].float())
        factor_s = self.translator(student["stages"][self.index])
        return {"ft": self.params.beta * ft_loss(factor_s, factor_t, self.params.form)}
