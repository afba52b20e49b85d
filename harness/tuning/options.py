"""What `harness sweep` was asked for (its --trials, --study, --storage, ... flags): read by the
sweep (harness/tuning/sweep.py) and by the study's search space (harness/tuning/study.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class SweepOptions:
    trials: int
    study: str | None  # None: sweep-CELL-HASH, the hash of the objective (harness/tuning/study.py)
    storage: str
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    space: list[str] = dataclasses.field(default_factory=list)
    grid: str | None = None
    final_seeds: int = 0
