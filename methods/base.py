"""The contract every method keeps.

A Distiller declares which features it reads from the teacher and the student, may own
auxiliary (training-only) modules, and returns a dict of named, already-weighted loss terms.
The student's cross-entropy is added once by `methods.Objective`, so methods combine with
'+' without counting it twice. Hyperparameters arrive validated by the method's `Params`
(a pydantic model with no defaults: benchmarks.yaml is the single source of defaults).

A method that needs a stage before the main training (FitNet's hint training, FSP's
pre-training) declares it with `pre_phases`; the engine runs it, the method never loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Probe:
    """What a method may check at set-up: example features of the teacher and the student
    (from a 2-image forward), the stage pairing and the training batch size."""

    teacher: dict
    student: dict
    hint: int
    batch_size: int


@dataclass(frozen=True)
class PrePhase:
    """Training before the main phase: `epochs` epochs on the owner's `phase_losses(name, ...)`
    alone (no cross-entropy), at the recipe's base lr times `lr_scale`, with a fresh optimizer."""

    name: str
    epochs: int
    lr_scale: float = 1.0


@dataclass
class ExtraOptimizer:
    """An optimizer a method owns for its auxiliary parameters (KR's aggregation layers): SGD,
    stepped after the student's optimizer at every iteration, lr multiplied by `gamma` at each
    milestone (fractions of the main phase)."""

    name: str
    params: list
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1


class Distiller(nn.Module):
    Params: ClassVar[type[Params]] = Params
    teacher_features: ClassVar[frozenset[str]] = frozenset()
    student_features: ClassVar[frozenset[str]] = frozenset()
    loss_terms: ClassVar[frozenset[str]] = frozenset()  # the names forward() returns

    def __init__(self, params: Params, probe: Probe):
        super().__init__()
        self.params = params

    def forward(self, student: dict, teacher: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def pre_phases(self, main_epochs: int) -> list[PrePhase]:
        return []

    def phase_losses(self, phase: str, student: dict, teacher: dict, targets: torch.Tensor) -> dict:
        raise NotImplementedError(f"{type(self).__name__} declares no phase {phase!r}")

    def extra_optimizers(self) -> list[ExtraOptimizer]:
        """Optimizers for parameters the student's optimizer must not touch."""
        return []

    def extra_parameters(self) -> int:
        """Parameters that exist only for training (regressors, aggregators); the shipped student has none."""
        return sum(p.numel() for p in self.parameters())
