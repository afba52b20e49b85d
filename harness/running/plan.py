"""A student run resolved once: `make_plan(runner, cell, options) -> RunPlan`.

The plan holds the recipe, device, student, objective, the config a run logs and the identity
that names it (its run key). Building it reads no data and trains nothing: the methods' set-up
checks see a random batch of the dataset's shape (harness/running/probe.py). `run`, sweep trials, bench
and the Python API all start from a plan.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Protocol

import torch

from harness.data.data import Data
from harness.errors import UserError
from harness.models import build_model
from harness.running.probe import PROBE_BATCH, make_probe, probe_batch
from harness.running.protocol import cell_overrides, shortened_schedules, with_protocol
from harness.spec.cells import Cell
from harness.spec.options import RunOptions
from harness.spec.schema import PairSpec, RecipeSpec
from harness.spec.spec import Spec
from harness.training import distributed
from harness.training.device import resolve_amp, seed_everything
from harness.training.engine import TrainConfig, Trainer
from methods import Objective, build_objective


class Provider(Protocol):
    """What a plan asks of whoever runs it (the Runner, harness/running/runner.py): the spec, the
    torchrun context, a dataset's data, and the pair's teachers (trained first if needed) or only
    their keys and files."""

    spec: Spec
    context: distributed.Context

    def data(self, dataset: str, opts: RunOptions) -> Data: ...

    def teachers(self, dataset: str, pair: PairSpec, opts: RunOptions) -> list[torch.nn.Module]: ...

    def teacher_keys(self, dataset: str, pair: PairSpec, opts: RunOptions) -> dict: ...


@dataclass
class RunPlan:
    """One student run, resolved and validated once. Its data loads on first use, its teachers on
    `teachers()`; `trainer(...)` assembles the engine."""

    runner: Provider
    cell: Cell
    opts: RunOptions  # amp resolved for the device
    recipe_name: str
    recipe: RecipeSpec
    device: torch.device
    student: torch.nn.Module
    objective: Objective
    config: dict  # every resolved value: what the run logs
    identity: dict  # what names the run: its key
    teacher_info: dict  # teacher.key, teacher.path ({} when no part reads a teacher)
    cache_bytes_per_image: int = 0  # --teacher-cache: the teachers' features it keeps per training image

    @property
    def pair(self) -> PairSpec:
        return self.runner.spec.pairs[self.cell.pair]

    @property
    def run_key(self) -> str:
        return config_key(self.identity)

    @cached_property
    def data(self) -> Data:
        data = self.runner.data(self.cell.dataset, self.opts)
        data = data.merged_train() if self.opts.full_train else data
        check_cache_fits(self.cache_bytes_per_image, len(data.train), self.device)
        return data

    def teachers(self) -> list[torch.nn.Module] | None:
        """The pair's trained teachers (cached, or trained now), or None when no part reads one."""
        if not self.objective.needs_teacher:
            return None
        return self.runner.teachers(self.cell.dataset, self.pair, self.opts)

    def trainer(self, teachers: list | None, eval_splits: tuple[str, ...] | None = None, label: str | None = None,
                **engine) -> Trainer:
        """The engine for this plan, with the student and objective on the device. `eval_splits`:
        what each epoch evaluates (default: val and test; test only for a train+val run); `label`:
        the progress line's name; `engine`: Trainer keywords (log, checkpoints, stop, ...)."""
        if eval_splits is None:
            eval_splits = ("test",) if self.opts.full_train else ("val", "test")
        splits = ("train", "val", "test") if "test" in eval_splits else ("train", *eval_splits)
        self.student.to(self.device)
        self.objective.to(self.device)
        context = self.runner.context
        batches = self.data.batches(self.device, splits, shard=(context.rank, context.world_size))
        config = TrainConfig(self.recipe, self.opts.seed, self.pair.stages.teacher, self.pair.stages.student,
                             self.opts, label=label or self.cell.id, eval_splits=eval_splits)
        return Trainer(self.student, self.objective, batches, config, self.device, teacher=teachers,
                       context=context, **engine)


def make_plan(runner: Provider, cell: Cell, opts: RunOptions) -> RunPlan:
    """Resolve and validate everything a student run needs: no data is read, nothing trains and no
    run is created."""
    spec = runner.spec
    opts = with_protocol(spec, opts)
    pair = spec.pairs[cell.pair]
    recipe_name, full_recipe = spec.recipe_for(cell.dataset, pair.student, suite=opts.suite)
    recipe = shortened(full_recipe, opts.epochs, opts.smoke)
    device = resolve_device(opts.device, runner.context)
    opts = resolved_amp(opts, device)
    check_device_options(opts, device, runner.context)
    if recipe.batch_size % runner.context.world_size:
        raise UserError(f"batch size {recipe.batch_size} (recipe {recipe_name}) does not divide into "
                        f"{runner.context.world_size} processes: the recipe's batch is the global batch")
    dataset_spec = spec.datasets[cell.dataset]
    if opts.teacher_cache and dataset_spec.augment != "none":
        raise UserError(f"--teacher-cache needs a dataset trained without augmentation; {cell.dataset} "
                        f"uses augment={dataset_spec.augment}, so each epoch shows the teacher new images")
    teacher_archs = [build_model(spec.models[name], dataset_spec)
                     for name, _ in pair.teacher_members(opts.teacher_seed)]
    seed_everything(opts.seed)
    student = build_model(spec.models[pair.student], dataset_spec)
    probe = make_probe(teacher_archs, student, probe_batch(dataset_spec), pair, cell.pair, recipe.batch_size)
    overrides, schedule = shortened_schedules(spec, cell.method, cell_overrides(spec, cell, opts), opts.overrides,
                                              full_recipe.epochs, recipe.epochs)
    objective = build_objective(spec, cell.method, overrides, probe)
    objective.check_teachers(len(teacher_archs))
    if opts.teacher_cache and objective.teacher_mode == "train":
        raise UserError(f"--teacher-cache keeps features computed once; {cell.method} reads the teacher in train mode "
                        "(each batch's batch-norm statistics): run it without --teacher-cache")
    if runner.context.enabled and objective.reads_indices:
        raise UserError(f"{cell.method} keeps state per training image (a memory bank) that the ranks of torchrun "
                        "would each update with their own shard: run it in one process")
    teacher_info = runner.teacher_keys(cell.dataset, pair, opts) if objective.needs_teacher else {}
    code, recorded = spec.outside(list(objective.parts))  # outside methods' code names the run

    def describe(dump):
        return {
            "role": "student", "cell": cell.id, "dataset": cell.dataset, "pair": cell.pair,
            "teacher": pair.teacher, "student": pair.student, "method": cell.method, "seed": opts.seed,
            "method_params": {name: dump(part.params) for name, part in objective.parts.items()},
            "recipe_name": recipe_name, "recipe": dump(recipe), "dataset_spec": dump(dataset_spec),
            "models": {"teacher": dump(spec.models[pair.teacher]), "student": dump(spec.models[pair.student])}
            | ({"more_teachers": [dump(m) for m in pair.more_teachers]} if pair.more_teachers else {}),
            "stages": dump(pair.stages), "hint": pair.hint, "teacher_seed": opts.teacher_seed,
            "deterministic": deterministic(opts, device), "phases": dict(objective.phases(recipe.epochs)),
            "train_on": "train+val" if opts.full_train else "train",
        } | ({"schedule_shortened": schedule} if schedule else {}) | opts.identity() | device_identity(device) \
            | world_size(runner.context) | {"teacher_key": teacher_info.get("teacher.key", "")} \
            | ({"method_code": code} if code else {})

    cache_bytes = feature_bytes(probe.teachers or (probe.teacher,), objective.teacher_features) // PROBE_BATCH \
        if opts.teacher_cache and objective.needs_teacher else 0
    return RunPlan(runner, cell, opts, recipe_name, recipe, device, student, objective,
                   describe(full_dump) | recorded, describe(identity_dump), teacher_info, cache_bytes)


def feature_bytes(teachers: tuple[dict, ...], kinds: frozenset[str]) -> int:
    """Bytes of the named features of every teacher (tensors, or lists of them, nested)."""
    def size(value) -> int:
        return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else sum(map(size, value))

    return sum(size(features[kind]) for features in teachers for kind in kinds if kind in features)


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_cache_fits(bytes_per_image: int, images: int, device: torch.device) -> None:
    """--teacher-cache holds every training image's teacher features on the device: refuse, before
    anything trains, a cache that would take more than half of the free memory."""
    needed = bytes_per_image * images
    if not needed:
        return
    free = available_memory(device)
    if needed > free / 2:
        raise UserError(f"--teacher-cache would keep {needed / 2**30:.1f} GiB of teacher features "
                        f"({bytes_per_image / 2**10:.0f} KiB per image x {images} images) on {device.type}, more than "
                        f"half of the {free / 2**30:.1f} GiB free: run without --teacher-cache")


def resolve_device(name: str, context: distributed.Context = distributed.SINGLE) -> torch.device:
    if name == "auto":  # under torchrun, each rank takes the GPU of its local rank
        if torch.cuda.is_available():
            return torch.device(f"cuda:{context.local_rank}")
        warn_unusable_gpu()
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available here")
    return device


def check_device_options(opts: RunOptions, device: torch.device, context: distributed.Context) -> None:
    if opts.tf32 and device.type != "cuda":
        raise UserError(f"--tf32 sets CUDA's matmul and cuDNN precision; this run is on {device.type}")
    if opts.sync_bn and not (context.enabled and device.type == "cuda"):
        raise UserError("--sync-bn synchronises batch norm over torchrun's ranks on CUDA (SyncBatchNorm has "
                        "no CPU kernel); without it each rank keeps its own batch-norm statistics")


def device_identity(device: torch.device) -> dict:
    """The device type names a run, except the CPU's (so that CPU runs keep their keys): a CUDA run
    never matches a CPU run's key, and reports never average the two."""
    return {} if device.type == "cpu" else {"device_type": device.type}


@functools.cache
def warn_unusable_gpu() -> None:
    """--device auto falls back to the CPU: say so loudly when nvidia-smi sees a GPU torch cannot use
    (a CPU-only torch build, a driver older than its CUDA), instead of training on the CPU in silence."""
    from harness.tracking.provenance import nvidia_smi

    gpus = [line for line in nvidia_smi("-L") if line.startswith("GPU ")]
    if gpus:
        print(f"harness: warning: nvidia-smi sees {len(gpus)} GPU(s) ({gpus[0]}) but torch {torch.__version__} "
              f"cannot use them (CUDA build: {torch.version.cuda or 'none'}): training on the CPU; "
              "install a CUDA build of torch that this driver supports, or pass --device cpu", file=sys.stderr)


def resolved_amp(opts: RunOptions, device: torch.device) -> RunOptions:
    """--amp auto made concrete for the device: the run's identity names what it trained with."""
    amp = resolve_amp(opts.amp, device.type)
    return opts if amp == opts.amp else replace(opts, amp=amp)


def deterministic(opts: RunOptions, device: torch.device) -> bool:
    return opts.deterministic if opts.deterministic is not None else device.type == "cpu"


def shortened(recipe: RecipeSpec, epochs: int | None, smoke: bool) -> RecipeSpec:
    """The recipe with --smoke's one short epoch, then --epochs (an explicit count wins over smoke's 1)."""
    if smoke:
        recipe = recipe.model_copy(update={"epochs": 1, "batch_size": min(recipe.batch_size, 32),
                                           "eval_batch_size": 128})
    if epochs is not None:
        recipe = recipe.model_copy(update={"epochs": epochs})
    return recipe


def world_size(context: distributed.Context) -> dict:
    """In a run's identity only when distributed, so that single-process runs keep their keys."""
    return {"world_size": context.world_size} if context.enabled else {}


def full_dump(model) -> dict:
    """Every resolved value: what a run logs."""
    return model.model_dump()


def identity_dump(model) -> dict:
    """What identifies a run: values that differ from the schema's defaults, so that a field added
    to the schema later (with a default) leaves the keys of finished runs unchanged."""
    return model.model_dump(exclude_defaults=True)


def config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def configuration_key(identity: dict) -> str:
    """The run key without the seed: runs that share it are seeds of one configuration."""
    return config_key({k: v for k, v in identity.items() if k != "seed"})


def run_name(cell: Cell, seed: int, departures: dict) -> str:
    """Method first (the MLflow UI cuts long names at the end), then any override, setting and seed."""
    changed = " [" + " ".join(f"{k}={v}" for k, v in sorted(departures.items())) + "]" if departures else ""
    return f"{cell.method}{changed} · {cell.dataset}/{cell.pair} · seed {seed}"


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
