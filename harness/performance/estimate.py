"""`harness list --suite S --estimate`: what a suite costs before it is launched.

Its runs (one per cell and seed) and the teachers it would train (those not cached in this runs
home), and device-hours per run: the recipe's optimizer steps (every phase's epochs) times a step's
time. By default the step's time is analytic, for a named target (`--for h100|a100|cpu`,
harness/performance/flops.py): each network's FLOPs and operations counted once, answered in seconds
on any machine. With `--measure`, a few training steps of every cell and of every teacher to train
are timed on this device instead, on synthetic batches of the dataset's shape (the engine's own train
step, harness/performance/bench.py's timer). Compute only: data loading, evaluation and checkpoints
are not counted, nor torch.compile.
"""

from __future__ import annotations

import math
import sys
from dataclasses import astuple, dataclass, replace
from pathlib import Path

import torch

from harness.data.data import Data, Split
from harness.models import build_model
from harness.performance.bench import median_step_seconds, untrained_teachers
from harness.performance import flops
from harness.performance.flops import TARGETS, Cost, Target, model_cost, step_seconds
from harness.running.cache import digest_of, file_digest, read_json, write_json
from harness.running.compat import MODEL_CODE, Keys, pair_probe, signatures_in
from harness.running.plan import resolve_device
from harness.running.protocol import cell_overrides
from harness.running.probe import set_up
from harness.running.runner import Runner
from harness.spec.cells import Cell
from harness.spec.options import RunOptions
from harness.spec.schema import DatasetSpec
from harness.tracking.provenance import cpu_name
from harness.training.device import seed_everything
from harness.training.engine import TrainConfig, Trainer
from methods import Objective

WARMUP, STEPS = 2, 3
# training images of a source before the validation hold-out; image folders: ILSVRC-2012's 1,281,167
SOURCE_IMAGES = {"sklearn_digits": 1797, "torchvision_mnist": 60_000, "torchvision_cifar10": 50_000,
                 "torchvision_cifar100": 50_000, "imagefolder": 1_281_167}


@dataclass
class Row:
    name: str
    steps: int  # optimizer steps of the whole run
    seconds_per_step: float

    @property
    def hours(self) -> float:
        return self.steps * self.seconds_per_step / 3600


def train_images(spec: DatasetSpec) -> int:
    n = SOURCE_IMAGES[spec.source] - spec.val_size - (spec.test_size or 0)
    return min(n, spec.train_size) if spec.train_size else n


def synthetic_data(name: str, spec: DatasetSpec, batch_size: int) -> Data:
    """Random images of the dataset's shape, enough for the timed steps."""
    generator = torch.Generator().manual_seed(0)
    n = batch_size * (WARMUP + STEPS)
    images = torch.randint(0, 256, (n, spec.in_chans, spec.img_size, spec.img_size), dtype=torch.uint8,
                           generator=generator)
    split = Split(images, torch.randint(0, spec.num_classes, (n,), generator=generator))
    return Data(name, spec, split, split.head(1), split.head(1), 255.0, "synthetic")


def timed(trainer: Trainer) -> float:
    plan = trainer.batches.epoch_plan(trainer.recipe.batch_size, torch.Generator().manual_seed(0))
    return median_step_seconds(trainer.step_on, plan, STEPS, WARMUP, trainer.device)


def student_row(runner: Runner, plan) -> Row:
    dataset = runner.spec.datasets[plan.cell.dataset]
    plan.data = synthetic_data(plan.cell.dataset, dataset, plan.recipe.batch_size)  # before first use: no dataset read
    trainer = plan.trainer(untrained_teachers(runner, plan), eval_splits=(), label=plan.cell.id)
    epochs = sum(e for _, e in plan.objective.phases(plan.recipe.epochs))  # pre-phases timed as main steps
    return Row(plan.cell.id, epochs * (train_images(dataset) // plan.recipe.batch_size), timed(trainer))


def teacher_row(runner: Runner, dataset: str, model_name: str, opts: RunOptions) -> Row:
    identity = runner.teacher_identity(dataset, model_name, opts)
    spec = runner.spec.datasets[identity.dataset]
    seed_everything(opts.teacher_seed)
    model = build_model(runner.spec.models[model_name], spec).to(identity.device)
    batches = synthetic_data(identity.dataset, spec, identity.recipe.batch_size).batches(identity.device, ("train",))
    config = TrainConfig(identity.recipe, opts.teacher_seed, [], [], RunOptions(amp=identity.opts.amp),
                         label=f"teacher {model_name}", eval_splits=())
    steps = identity.recipe.epochs * (train_images(spec) // identity.recipe.batch_size)
    return Row(f"teacher {identity.dataset}/{model_name} ({identity.config['recipe_name']})", steps,
               timed(Trainer(model, Objective({}), batches, config, identity.device)))


def estimate(runner: Runner, cells: list[Cell], opts: RunOptions) -> tuple[list[Row], list[Row], int]:
    """Measured: (a row per cell, a row per teacher to train, how many of the suite's teachers are cached)."""
    students, taught = [], []
    for i, cell in enumerate(cells):
        progress(f"timing {cell.id} ({i + 1} of {len(cells)} cells)")
        plan = runner.plan(cell, opts)
        students.append(student_row(runner, plan))
        taught += [cell] if plan.objective.needs_teacher else []
    to_train, cached = teachers_to_train(runner, taught, opts)
    return students, [teacher_row(runner, dataset, name, member) for dataset, name, member in to_train], cached


def teachers_to_train(runner: Runner, taught: list[Cell], opts: RunOptions) -> tuple[list[tuple], int]:
    """((dataset, model, options) of each teacher of the `taught` cells that is not cached, how many are)."""
    needed = {}
    for cell in taught:
        for name, seed in runner.spec.pairs[cell.pair].teacher_members(opts.teacher_seed):
            member = replace(opts, teacher_seed=seed)
            needed[(cell.dataset, name, seed)] = (member, runner.teacher_identity(cell.dataset, name, member).path)
    to_train = [(dataset, name, member) for (dataset, name, _), (member, path) in needed.items() if not path.exists()]
    return to_train, len(needed) - len(to_train)


def analytic(runner: Runner, cells: list[Cell], opts: RunOptions, target: Target) -> tuple[list[Row], list[Row], int]:
    """As `estimate`, each step's time from counted FLOPs and operations (harness/performance/flops.py)."""
    spec, keys = runner.spec, Keys(runner.spec)
    signatures, cache_path = signatures_in(runner.home), runner.home / "flops.json"
    costs, code = read_json(cache_path), file_digest([*MODEL_CODE, Path(flops.__file__)])

    def cost(dataset: str, name: str) -> Cost:  # each network counted once, cached in the runs home
        key = digest_of(code, spec.datasets[dataset].model_dump(mode="json"), spec.models[name].model_dump(mode="json"))
        if key not in costs:
            progress(f"counting the FLOPs of {dataset}/{name}")
            costs[key] = astuple(model_cost(spec.models[name], spec.datasets[dataset]))
        return Cost(*costs[key])

    students, taught, probes = [], [], {}
    for cell in cells:
        pair, dataset = spec.pairs[cell.pair], spec.datasets[cell.dataset]
        _, recipe = spec.recipe_for(cell.dataset, pair.student, suite=opts.suite)
        if (cell.dataset, cell.pair) not in probes:
            probes[(cell.dataset, cell.pair)] = pair_probe(spec, keys, signatures, cell.dataset, cell.pair)
        objective = set_up(spec, cell.method, cell_overrides(spec, cell, opts), probes[(cell.dataset, cell.pair)])
        teachers = [cost(cell.dataset, name) for name, _ in pair.teacher_members(0)] if objective.needs_teacher else []
        _, seconds = step_seconds(recipe.batch_size, cost(cell.dataset, pair.student), teachers, target)
        epochs = sum(e for _, e in objective.phases(recipe.epochs))  # pre-phases counted as main steps
        students.append(Row(cell.id, epochs * (train_images(dataset) // recipe.batch_size), seconds))
        taught += [cell] if objective.needs_teacher else []
    to_train, cached = teachers_to_train(runner, taught, opts)
    teachers = []
    for dataset, name, member in to_train:
        identity = runner.teacher_identity(dataset, name, member)
        recipe, data = identity.recipe, spec.datasets[identity.dataset]
        train = cost(identity.dataset, name)
        seconds = recipe.batch_size * train.train_flops / target.flops + train.train_ops * target.seconds_per_op
        teachers.append(Row(f"teacher {identity.dataset}/{name} ({identity.config['recipe_name']})",
                            recipe.epochs * (train_images(data) // recipe.batch_size), seconds))
    write_json(cache_path, costs)
    return students, teachers, cached


def progress(line: str) -> None:
    print(f"harness list --estimate: {line}", file=sys.stderr, flush=True)


def command_estimate(args, spec, home, cells: list[Cell]) -> int:
    runner = Runner(spec, home, tracking_uri="")  # nothing is tracked
    opts = RunOptions(suite=args.suite, device=args.device, progress=False)
    if args.measure:
        students, teachers, cached = estimate(runner, cells, opts)
        device = resolve_device(args.device)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {cpu_name()}"
        how = f"measured on {where}: {STEPS} steps each after {WARMUP} warm-up, fp32"
    else:
        target = TARGETS[args.target]
        students, teachers, cached = analytic(runner, cells, opts, target)
        how = (f"analytic, for {target.name} (--for {args.target}): FLOPs and operations counted per network, at "
               f"{target.flops / 1e12:.3g} TFLOP/s sustained and {target.seconds_per_op * 1e6:.0f} µs per operation "
               f"({target.source}); --measure times steps on this device instead")
    print(f"{args.suite}: {len(students)} student runs per seed, {len(teachers)} teachers to train ({cached} cached "
          f"in {home}); {how}")
    width = max(len(r.name) for r in students + teachers)
    print(f"  {'run':<{width}}  {'steps':>11}  {'ms/step':>9}  {'hours':>8}")
    for row in students + teachers:
        print(f"  {row.name:<{width}}  {row.steps:>11,}  {1000 * row.seconds_per_step:>9.1f}  {row.hours:>8.2f}")
    student_hours, teacher_hours = (math.fsum(r.hours for r in rows) for rows in (students, teachers))
    print(f"estimated device-hours ({'measured' if args.measure else 'analytic'}): {student_hours:.1f} per seed for "
          f"the students + {teacher_hours:.1f} for the teachers = {student_hours + teacher_hours:.1f} for one seed "
          "(compute only: data loading, evaluation, checkpoints and torch.compile are not counted)")
    return 0
