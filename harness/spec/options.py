"""The options of one run, declared once: each field of `RunOptions` carries its command-line
help (and so becomes a flag of `run`, `teacher`, `sweep` and `bench`) and says whether it names
the run. Free of torch, so that the command line can reason about a run before importing it."""

from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass, field, fields
from typing import Literal

Amp = Literal["off", "bf16", "fp16", "auto"]  # fp16 adds a GradScaler; auto: the fastest safe one here

# `harness perf`'s option sets: name -> the options set over the base run's (compile without
# determinism: deterministic compiled code is slower on CPU; amp auto: the fastest safe precision)
SPEED_OPTION_SETS = {
    "fp32": {},
    "channels-last": {"channels_last": True},
    "compile": {"compile": True, "deterministic": False},
    "amp-auto": {"amp": "auto"},
}

# How an option enters a run's identity (its key): "always", "when_set" (only when not its default, so
# that adding an option orphans no finished run) or not at all (None: it changes no result).
Identity = Literal["always", "when_set", None]


def option(default, help: str, identity: Identity = None, flag: str | None = None):
    """A field that is also a command-line flag (`flag`, default --field-name)."""
    return field(default=default, metadata={"help": help, "identity": identity, "flag": flag})


@dataclass
class RunOptions:
    seed: int = 0  # each command declares its own --seed
    teacher_seed: int = option(0, "the teacher's seed")
    teacher_seeds: Literal["shared", "per-run"] = option(
        "shared", "shared: every student seed distils from the teacher of --teacher-seed; per-run: student seed k "
        "distils from teacher seed k (teacher variance enters the seeds' spread)", identity="when_set")
    smoke: bool = option(False, "tiny subset, 1 epoch (or --epochs): for CI and quick checks", identity="always")
    data_root: str | None = option(None, "dataset directory (default: $KD_HARNESS_DATA or a user cache dir)")
    download: bool = option(False, "let torchvision download missing datasets")
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:N")
    amp: Amp = option("off", "autocast mixed precision (fp16 adds a GradScaler); auto: the fastest safe one here",
                      identity="always")
    channels_last: bool = option(False, "channels-last memory format (CPU and CUDA)", identity="when_set")
    compile: bool = option(False, "torch.compile the forward passes", identity="when_set")
    teacher_cache: bool = option(False, "compute the teacher's features once per training image and keep them on "
                                 "the device (datasets without augmentation only)", identity="when_set")
    tf32: bool = option(False, "TF32 matmuls and convolutions on CUDA (default off: full fp32 numerics; "
                        "PyTorch's own defaults differ between matmuls and cuDNN)", identity="when_set")
    sync_bn: bool = option(False, "under torchrun on CUDA: batch-norm statistics over the global batch "
                           "(SyncBatchNorm) instead of per rank", identity="when_set")
    deterministic: bool | None = option(None, "deterministic algorithms (default: on for CPU, off for CUDA)")
    force: bool = option(False, "train again even if a finished run exists; a cached teacher is kept (delete "
                         "its file under HOME/teachers to retrain it)")
    teacher_epochs: int | None = option(None, "shorten the teacher's recipe")
    progress: bool = option(True, "no progress bar", flag="--no-progress")
    overrides: dict[str, dict] = field(default_factory=dict)  # method -> {hyperparameter: value}
    suite: str | None = None  # the suite's overrides and recipes apply
    epochs: int | None = None  # the student's recipe shortened (each command declares --epochs)
    full_train: bool = False  # train on train + validation, evaluate test only (a sweep's final runs)
    register: str | None = None  # register the trained student in MLflow's model registry under this name
    tags: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """The options that name a student run (beside its seed, cell and recipe)."""
        out = {}
        for f in fields(self):
            value, rule = getattr(self, f.name), f.metadata.get("identity")
            if rule == "always" or (rule == "when_set" and value != f.default):
                out[f.name] = value
        return out


def flag_fields() -> list:
    return [f for f in fields(RunOptions) if "help" in f.metadata]


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Every option with help as a flag, its type and choices read from the field's annotation."""
    hints = typing.get_type_hints(RunOptions)
    for f in flag_fields():
        kind, name = hints[f.name], f.metadata["flag"] or "--" + f.name.replace("_", "-")
        if kind is bool:  # a switch; a default of True makes its flag turn it off (--no-progress)
            parser.add_argument(name, dest=f.name, action="store_false" if f.default else "store_true",
                                help=f.metadata["help"])
        elif kind == bool | None:  # on, off, or the device's default
            group = parser.add_mutually_exclusive_group()
            group.add_argument(name, dest=f.name, action="store_true", default=None, help=f.metadata["help"])
            group.add_argument("--no-" + name[2:], dest=f.name, action="store_false")
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(name, choices=typing.get_args(kind), default=f.default, help=f.metadata["help"])
        else:
            parser.add_argument(name, type=int if int in (kind, *typing.get_args(kind)) else str, default=f.default,
                                help=f.metadata["help"])


def from_flags(args: argparse.Namespace, **extra) -> RunOptions:
    return RunOptions(**{f.name: getattr(args, f.name) for f in flag_fields()}, **extra)
