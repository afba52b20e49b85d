"""`harness bench`: the harness's own overhead and each method's cost, measured in one process.

For one pair and dataset, each row times `steps` training steps (after `warmup` steps) on the
same device-resident, augmented batches:
- "bare loop": a hand-written PyTorch loop doing the same work as the harness's `kd` step (teacher
  forward under no_grad, student forward, CE + tau^2 KL, backward, SGD step);
- one row per method, through the harness's Trainer step (feature extraction, Objective, guards).
Ratios: the harness's kd step over the bare loop's; every method's step over the plain student's.
"""

from __future__ import annotations

import dataclasses
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from harness.data.data import Batches
from harness.models import build_model
from harness.running.plan import deterministic
from harness.running.runner import Runner
from harness.running.workshare import until_free
from harness.spec.cells import Cell
from harness.spec.options import RunOptions
from harness.tracking.provenance import environment_params
from harness.training.device import autocast, configure_determinism, seed_everything
from harness.training.recipe import build_optimizer


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a CUDA clock reads nothing true before)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_step_seconds(step, plan, steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds per step(plan, i) (batch fetch and augmentation included), each step alone
    between two waits for the device: a host sync inside a step costs it nothing here."""
    times = []
    n = Batches.steps(plan)
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        step(plan, i % n)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def block_step_seconds(step, plan, steps: int, device: torch.device, first: int = 0) -> float:
    """Seconds per step of `steps` steps run back to back (from batch `first`), with one wait for
    the device at the end, between two CUDA events on a GPU: the pace an epoch sees, the host's
    syncs inside the steps included, which the per-step median hides."""
    n = Batches.steps(plan)
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(first, first + steps):
            step(plan, i % n)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / steps
    started = time.perf_counter()
    for i in range(first, first + steps):
        step(plan, i % n)
    return (time.perf_counter() - started) / steps


def profile_steps(step, plan, steps: int) -> str:
    """torch.profiler's table of the operators that take a step's time (CPU time, top 15)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(plan, i % Batches.steps(plan))
    return prof.key_averages().table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=50)


def bench(runner: Runner, dataset: str, pair: str, methods: list[str], opts: RunOptions, steps: int = 20,
          warmup: int = 5, profile: bool = False, batch_size: int | None = None,
          teachers: list | None = None) -> pd.DataFrame:
    """The table; with `profile`, frame.attrs["profiles"] maps each method to its operator table.
    `teachers`: the pair's teacher networks (default: its cached or newly trained teachers)."""
    rows, profiles = [], {}
    teacher = teachers
    for method in ["baseline", "kd"] + [m for m in methods if m not in ("baseline", "kd")]:
        cell = runner.spec.cell(f"{dataset}/{pair}/{method}")
        plan = runner.plan(cell, dataclasses.replace(opts, seed=0, progress=False))
        recipe, device, objective = plan.recipe, plan.device, plan.objective
        # the numerics a run of this plan trains under (cuDNN autotuning and determinism, TF32)
        configure_determinism(deterministic(plan.opts, device), device, plan.opts.tf32)
        if batch_size is not None:
            recipe = plan.recipe = recipe.model_copy(update={"batch_size": batch_size})
        if objective.needs_teacher and teacher is None:
            teacher = until_free(runner.teachers, dataset, runner.spec.pairs[pair], opts)
        trainer = plan.trainer(teacher if objective.needs_teacher else None, eval_splits=(), label=method)
        batches = trainer.batches
        epoch = batches.epoch_plan(recipe.batch_size, torch.Generator().manual_seed(0))
        seconds = median_step_seconds(trainer.step_on, epoch, steps, warmup, device)
        block = block_step_seconds(trainer.step_on, epoch, steps, device)
        if profile:
            profiles[method] = profile_steps(trainer.step_on, epoch, min(steps, 5))
        rows.append({"method": method, "path": "harness", "ms_per_step": 1000 * seconds, "block_ms_per_step": 1000 * block,
                     "images_per_s": recipe.batch_size / seconds, "extra_parameters": objective.extra_parameters()})
        if method == "kd":
            rows.append(_bare_kd_row(runner, cell, plan.opts, teacher[0], batches, epoch, steps, warmup, device, recipe,
                                     objective.parts["kd"].params))
    frame = pd.DataFrame(rows)
    harness_kd = frame[(frame.method == "kd") & (frame.path == "harness")].ms_per_step.item()
    bare_kd = frame[frame.path == "bare loop"].ms_per_step.item()
    plain = frame[(frame.method == "baseline") & (frame.path == "harness")].ms_per_step.item()
    frame["vs_plain_student"] = frame.ms_per_step / plain
    frame["vs_kd"] = frame.ms_per_step / harness_kd
    frame.attrs["harness_over_bare"] = harness_kd / bare_kd
    frame.attrs["profiles"] = profiles
    frame.attrs["device"] = str(device)
    frame.attrs["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return frame


def _bare_kd_row(runner, cell: Cell, opts, teacher, batches, plan, steps, warmup, device, recipe, kd) -> dict:
    """The same KD work, written as a plain loop: the yardstick for the harness's overhead."""
    student = runner.plan(cell, dataclasses.replace(opts, seed=0)).student
    student.to(device)
    if opts.channels_last:
        student.to(memory_format=torch.channels_last)
    forward = torch.compile(student) if opts.compile else student
    teacher_forward = torch.compile(teacher) if opts.compile else teacher
    optimizer = build_optimizer(recipe, student.parameters())
    student.train()

    def step(epoch_plan, i):
        x, y = batches.train_batch(epoch_plan, i)
        if opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, opts.amp):
            with torch.no_grad():
                t = teacher_forward(x)
            s = forward(x)
            soft = F.kl_div(F.log_softmax(s / kd.tau, 1), F.log_softmax(t.float() / kd.tau, 1), log_target=True,
                            reduction="batchmean")
            loss = F.cross_entropy(s, y) + kd.lam * kd.tau**2 * soft
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = median_step_seconds(step, plan, steps, warmup, device)
    block = block_step_seconds(step, plan, steps, device)
    return {"method": "kd", "path": "bare loop", "ms_per_step": 1000 * seconds, "block_ms_per_step": 1000 * block,
            "images_per_s": recipe.batch_size / seconds, "extra_parameters": 0}


def log_bench(runner: Runner, table: pd.DataFrame, dataset: str, pair: str, params: dict, device) -> str:
    """The table as an MLflow run (role=bench): every step time a metric, the table and profiles as files."""
    tracker = runner.tracker
    run_id = tracker.create(f"bench {dataset}/{pair}", {"role": "bench", "dataset": dataset, "pair": pair})
    tracker.log_params(run_id, params | environment_params(device))
    metrics = {"harness_over_bare": table.attrs["harness_over_bare"]}
    for _, row in table.iterrows():
        metrics[f"{row.method}.{row.path.replace(' ', '_')}.ms_per_step"] = row.ms_per_step
    tracker.log_metrics(run_id, metrics, step=0)
    tracker.log_text(run_id, table.to_csv(index=False), "bench.csv")
    for method, operators in table.attrs["profiles"].items():
        tracker.log_text(run_id, operators, f"profile-{method}.txt")
    tracker.finish(run_id, "FINISHED")
    return run_id


# a loader's workers decode `prefetch_factor` batches each ahead of the consumer (DataLoader's default 2);
# the clock starts once as many batches as they hold were drawn, and times STEADY_FACTOR times as many
PREFETCH_FACTOR, STEADY_FACTOR = 2, 4


def steady_window(workers: int) -> tuple[int, int]:
    """(warm-up, timed) batches for a loader of `workers` processes: the warm-up drains what they
    decoded before the first draw (start-up included), and the timed batches are decoded under the
    clock, not before it."""
    ahead = max(1, workers) * PREFETCH_FACTOR
    return ahead, STEADY_FACTOR * ahead


def steady_images_per_s(next_batch, batch_size: int, warmup: int, timed: int, device: torch.device) -> float:
    """images/s of `timed` calls of next_batch() after `warmup` untimed ones."""
    for _ in range(warmup):
        next_batch()
    sync(device)
    started = time.perf_counter()
    for _ in range(timed):
        next_batch()
    sync(device)
    return timed * batch_size / (time.perf_counter() - started)


def folder_throughput(spec, device: str, images: int) -> dict:
    """images/s of the image-folder training path (decode, random-resized crop, flip, to the device) on
    `images` synthetic 400x350 JPEGs (ImageNet's typical size), in batches of the size that gives the
    loader's workers a steady window (steady_window): the loader's bound, not a model's."""
    from PIL import Image

    from harness.data.folder_data import default_workers, load_folder_data

    workers = default_workers()
    warmup, timed = steady_window(workers)
    root = Path(tempfile.mkdtemp(prefix="acceptance-folder-"))
    rng = np.random.default_rng(0)
    jpegs = []  # a few distinct files' bytes, written under many names: decoding costs the same
    for _ in range(16):
        pixels = (rng.random((8, 8, 3)) * 255).astype(np.uint8)  # smooth content: ImageNet-like JPEG sizes
        buffer = io.BytesIO()
        Image.fromarray(pixels).resize((400, 350), Image.BILINEAR).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    for split, count in (("train", images), ("val", 20)):
        for i in range(count):
            folder = root / "synthetic" / split / f"n{i % 10:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.JPEG").write_bytes(jpegs[i % len(jpegs)])
    dataset = spec.datasets["imagenet"].model_copy(update={"folder": "synthetic", "num_classes": 10, "val_size": 10})
    data = load_folder_data("synthetic", dataset, root)
    batch_size = min(256, len(data.train) // (warmup + timed))
    if batch_size < 1:
        raise ValueError(f"the folder timing needs over {warmup + timed} training images for {workers} loader workers")
    batches = data.batches(torch.device(device), ("train",))
    plan = batches.epoch_plan(batch_size, torch.Generator().manual_seed(0))
    steps = iter(range(Batches.steps(plan)))
    per_s = steady_images_per_s(lambda: batches.train_batch(plan, next(steps)), batch_size, warmup, timed,
                                torch.device(device))
    return {"images_per_s": per_s, "workers": workers, "cpu_count": os.cpu_count(), "batch_size": batch_size,
            "batches_warmup_timed": [warmup, timed], "image": "400x350 JPEG -> 224 crop",
            "bound": f"JPEG decode on {workers} loader workers"}


def untrained_teachers(runner: Runner, plan) -> list | None:
    """The pair's teachers, seeded but untrained, frozen on the plan's device (no MLflow, no data): a
    step takes as long with any weights, and every process of a run builds the same ones."""
    if not plan.objective.needs_teacher:
        return None
    teachers = []
    for name, seed in plan.pair.teacher_members(plan.opts.teacher_seed):
        seed_everything(seed)
        model = build_model(runner.spec.models[name], runner.spec.datasets[plan.cell.dataset]).to(plan.device)
        teachers.append(model.requires_grad_(False).eval())
    return teachers
