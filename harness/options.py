"""The options of one run (seed, speed switches, shortened recipes, ...), free of torch so that
the command line can reason about a run before importing it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunOptions:
    seed: int = 0
    teacher_seed: int = 0
    smoke: bool = False
    data_root: str | None = None
    download: bool = False
    device: str = "auto"
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    teacher_cache: bool = False
    deterministic: bool | None = None  # None: on for CPU, off for CUDA
    force: bool = False
    overrides: dict[str, dict] = field(default_factory=dict)
    suite: str | None = None
    epochs: int | None = None
    teacher_epochs: int | None = None
    progress: bool = True
    full_train: bool = False  # train on train + validation, evaluate test only (a sweep's final runs)
    register: str | None = None  # register the trained student in MLflow's model registry under this name
    tags: dict = field(default_factory=dict)
