"""The contract every method keeps.

A Distiller declares which features it reads from the teacher and the student, may own
auxiliary (training-only) modules, and returns a dict of named, already-weighted loss terms.
The student's cross-entropy is added once by `methods.Objective`, so methods combine with
'+' without counting it twice. Hyperparameters arrive validated by the method's `Params`
(a pydantic model with no defaults: benchmarks.yaml is the single source of defaults).
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
    """Example features of the teacher and the student (from a 2-image forward at set-up),
    so a method can size its auxiliary modules and reject a pair it cannot use."""

    teacher: dict
    student: dict


class Distiller(nn.Module):
    Params: ClassVar[type[Params]] = Params
    teacher_features: ClassVar[frozenset[str]] = frozenset()
    student_features: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: Params, probe: Probe):
        super().__init__()
        self.params = params

    def forward(self, student: dict, teacher: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def extra_parameters(self) -> int:
        """Parameters that exist only for training (regressors, aggregators); the shipped student has none."""
        return sum(p.numel() for p in self.parameters())
