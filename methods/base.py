"""The contract every method keeps.

A Distiller declares which features it reads from the teacher and the student, may own
auxiliary (training-only) modules, and returns a dict of named, already-weighted loss terms.
The student's cross-entropy is added once by `methods.Objective`, so methods combine with
'+' without counting it twice. A method may also read "indices" among its student features: the batch's positions in the
training split, which the engine (not the network) provides. Hyperparameters arrive validated by the method's `Params`
(a pydantic model with no defaults: benchmarks.yaml is the single source of defaults).

A multi-teacher pair gives several teachers. A Distiller that declares `multi_teacher` receives
`teacher` as a list of feature dicts, one per teacher, and runs on multi-teacher pairs only; the
others receive the one teacher's dict and are refused on a multi-teacher pair.

A method that needs a stage before the main training (FitNet's hint training, FSP's
pre-training) declares it with `pre_phases`; the engine runs it, the method never loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

MAIN_PHASE = "main"  # the phase that follows every pre-phase: the recipe's training
# what a Distiller may declare in teacher_features / student_features (harness/models extract_features):
# logits; pre_logits (the penultimate vector); stages (the pair's stage taps, a list); blocks (per stage, its
# input and every block's output, on models with forward_blocks); indices (student only: the batch's
# positions in the training split, given by the engine)
FEATURE_NAMES = ("logits", "pre_logits", "stages", "blocks", "indices")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Probe:
    """What a method may check at set-up: example features of the teacher and the student
    (from a 2-image forward), the stage pairing and the training batch size; `teachers` holds
    every teacher's example features on a multi-teacher pair (the first is `teacher`)."""

    teacher: dict
    student: dict
    hint: int
    batch_size: int
    teachers: tuple[dict, ...] = ()


@dataclass(frozen=True)
class PrePhase:
    """Training before the main phase: `epochs` epochs on the owner's `phase_losses(name, ...)`
    alone (no cross-entropy), at the recipe's base lr times `lr_scale`, with a fresh optimizer."""

    name: str
    epochs: int
    lr_scale: float = 1.0


@dataclass
class ExtraOptimizer:
    """An optimizer a method owns for its auxiliary parameters (KR's aggregation layers, a GAN's
    discriminator): SGD (`momentum`) or Adam (`betas`), stepped after the student's optimizer at
    every iteration of the main phase, lr multiplied by `gamma` at each milestone (fractions of the
    main phase). Its parameters' gradients come from the same backward pass as the student's: a
    method whose owned module plays against the student detaches what each side must not move."""

    name: str
    params: list
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    kind: Literal["sgd", "adam"] = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)

    def build(self) -> torch.optim.Optimizer:
        if self.kind == "adam":
            return torch.optim.Adam(self.params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        return torch.optim.SGD(self.params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


class Distiller(nn.Module):
    Params: ClassVar[type[Params]] = Params
    teacher_features: ClassVar[frozenset[str]] = frozenset()
    student_features: ClassVar[frozenset[str]] = frozenset()
    loss_terms: ClassVar[frozenset[str]] = frozenset()  # the names forward() returns
    multi_teacher: ClassVar[bool] = False  # forward() receives every teacher's features as a list

    def __init__(self, params: Params, probe: Probe):
        super().__init__()
        self.params = params

    def forward(self, student: dict, teacher: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def pre_phases(self, main_epochs: int) -> list[PrePhase]:
        return []

    def ce_weight(self) -> float | None:
        """The weight of the student's cross-entropy where the method's own code sets one (kd_ls: 0.1);
        None: no say (the Objective's default, 1)."""
        return None

    def teacher_mode(self) -> str | None:
        """'eval' (running batch-norm statistics) or 'train' (the batch's: OFD's authors read the teacher
        so) where the method's code sets one; None: no say (the Objective's default, eval)."""
        return None

    def bind_training_set(self, labels: torch.Tensor) -> None:
        """Told the training split's labels (on the device) before training starts and before a
        checkpoint is restored: for state sized by the training set (CRD's memory bank). Such a
        method declares the student feature "indices" (the batch's positions in the split)."""

    def set_epoch(self, epoch: int, main_epochs: int) -> None:
        """Told at the start of every main-phase epoch (0-based, of `main_epochs`), resumed runs
        included: for losses whose weight follows the schedule (DKD's warm-up)."""

    def phase_losses(self, phase: str, student: dict, teacher: dict, targets: torch.Tensor) -> dict:
        raise NotImplementedError(f"{type(self).__name__} declares no phase {phase!r}")

    def extra_optimizers(self) -> list[ExtraOptimizer]:
        """Optimizers for parameters the student's optimizer must not touch."""
        return []

    def extra_parameters(self) -> int:
        """Parameters that exist only for training (regressors, aggregators); the shipped student has none."""
        return sum(p.numel() for p in self.parameters())
