"""FitNet (Romero et al. 2015, "FitNets: hints for thin deep nets").

A regressor r maps the student's guided layer onto the teacher's hint layer;
hint loss = mean over elements of (r(v_S) - u_T)^2.

Two named methods:
- `fitnet`: the paper's schedule. Stage 1 ("hint", a fraction of the main epochs) trains the
  student up to the guided layer, and the regressor, on the hint loss alone (layers past the
  guided layer get no gradient from it). Stage 2 trains the whole student with KD (Romero §2.3).
- `fitnet_hint`: the single-stage variant most libraries use: CE + lam * hint loss.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from methods.base import Distiller, Params, PrePhase, Probe
from methods.common import resize
from methods.kd import kd_loss


def hint_loss(regressed: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over every element (Romero's 1/2 ||.||^2 up to a constant scale)."""
    return (regressed - hint.float()).pow(2).mean()


RegressorOutput = Literal["auto", "relu", "none"]


def regressor_relu(choice: str, hint_example: torch.Tensor) -> bool:
    """Romero §3 gives the regressor the hint layer's own nonlinearity. `auto` reads it off the
    teacher's hint on the probe batch: non-negative everywhere (a ReLU output) -> ReLU; signed
    (maxout, pre-activation or batch-normed outputs) -> none."""
    return bool(hint_example.min() >= 0) if choice == "auto" else choice == "relu"


class Regressor(nn.Module):
    """Student guided features -> teacher hint shape. Maps: resize to the hint's H x W (average
    pooling when larger, bilinear when smaller), then a 3x3 conv. Vectors: a linear layer. Then
    the hint's nonlinearity: ReLU when the hint is a ReLU output, else none (`regressor_relu`)."""

    def __init__(self, student_example: torch.Tensor, teacher_example: torch.Tensor, relu: bool = True):
        super().__init__()
        self.relu = relu
        if student_example.ndim == 4 and teacher_example.ndim == 4:
            self.size = tuple(teacher_example.shape[-2:])
            self.proj = nn.Conv2d(student_example.shape[1], teacher_example.shape[1], 3, padding=1)
        else:
            self.size = None
            self.proj = nn.Linear(student_example.flatten(1).shape[1], teacher_example.flatten(1).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is None:
            out = self.proj(x.flatten(1))
        else:
            if x.shape[-1] > self.size[-1]:
                x = F.adaptive_avg_pool2d(x, self.size)
            out = self.proj(resize(x, self.size))
        return torch.relu(out) if self.relu else out


def _hint_pair(probe: Probe) -> int:
    return probe.hint % len(probe.teacher["stages"])


def build_regressor(probe: Probe, index: int, output: str) -> Regressor:
    hint = probe.teacher["stages"][index]
    return Regressor(probe.student["stages"][index], hint, regressor_relu(output, hint))


def regressed_hint_loss(regressor: Regressor, index: int, student: dict, teacher: dict) -> torch.Tensor:
    hint = teacher["stages"][index]
    return hint_loss(regressor(student["stages"][index]), hint if hint.ndim == 4 else hint.flatten(1))


REGRESSOR_OUTPUT = Field("auto", description="the regressor's output nonlinearity: auto follows the hint "
                         "(ReLU for non-negative hints, none for signed ones), or relu / none")


class HintParams(Params):
    lam: Annotated[float, Field(ge=0, description="weight of the hint loss")]
    regressor_output: RegressorOutput = REGRESSOR_OUTPUT


class FitNetHint(Distiller):
    """Single stage: CE + lam * hint."""

    Params = HintParams
    teacher_features = frozenset({"stages"})
    student_features = frozenset({"stages"})
    loss_terms = frozenset({"hint"})

    def __init__(self, params: HintParams, probe: Probe):
        super().__init__(params, probe)
        self.index = _hint_pair(probe)
        self.regressor = build_regressor(probe, self.index, params.regressor_output)

    def forward(self, student, teacher, targets):
        return {"hint": self.params.lam * regressed_hint_loss(self.regressor, self.index, student, teacher)}


class FitNetParams(Params):
    hint_fraction: Annotated[float, Field(gt=0, le=1, description="hint-stage epochs / main epochs")]
    tau: Annotated[float, Field(gt=0)]
    lam: Annotated[float, Field(ge=0, description="weight of the stage-2 KD term")]
    regressor_output: RegressorOutput = REGRESSOR_OUTPUT


class FitNet(Distiller):
    """Two stages: hint training, then the whole student with KD."""

    Params = FitNetParams
    teacher_features = frozenset({"stages", "logits"})
    student_features = frozenset({"stages"})
    loss_terms = frozenset({"kd"})

    def __init__(self, params: FitNetParams, probe: Probe):
        super().__init__(params, probe)
        self.index = _hint_pair(probe)
        self.regressor = build_regressor(probe, self.index, params.regressor_output)

    def pre_phases(self, main_epochs: int) -> list[PrePhase]:
        return [PrePhase("hint", max(1, round(self.params.hint_fraction * main_epochs)))]

    def phase_losses(self, phase, student, teacher, targets):
        return {"hint": regressed_hint_loss(self.regressor, self.index, student, teacher)}

    def forward(self, student, teacher, targets):
        return {"kd": self.params.lam * kd_loss(student["logits"], teacher["logits"], self.params.tau)}
