"""The one training loop, for teachers (objective = CE only, no teacher) and students.

It knows no method by name: it asks the Objective which features to compute, computes the
teacher's once per batch under inference_mode, sums the returned loss terms, and logs each.
State is checkpointed after every epoch and when a stop is requested (SIGTERM/SIGINT);
a resumed run continues bit-for-bit where the checkpoint left it, mid-epoch included.

The Trainer is assembled from its parts, one module each: the step (harness/training/step.py), the
phases and epochs (epoch.py), evaluation and the summary (evaluation.py), its checkpoints
(checkpoint.py) and the non-finite guard (monitor.py); the device's numerics are in device.py and
the recipe's optimizer and schedule in recipe.py.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from harness.data.data import Batches
from harness.models import extract_features
from harness.spec.options import RunOptions
from harness.spec.schema import RecipeSpec
from harness.training import distributed
from harness.training.checkpoint import CheckpointStore, Checkpointing
from harness.training.epoch import Epochs
from harness.training.evaluation import Evaluation
from harness.training.monitor import FiniteGuard, Guarding, Stopwatch
from harness.training.step import Stepping, StudentStep
from methods import Objective


@dataclass
class TrainConfig:
    recipe: RecipeSpec
    seed: int
    teacher_stages: list[int]
    student_stages: list[int]
    # what the engine reads of the run's options: amp (resolved: off, bf16 or fp16), progress,
    # channels_last, compile (the feature extraction, forward_intermediates included), teacher_cache
    options: RunOptions = field(default_factory=RunOptions)
    label: str = "train"
    eval_splits: tuple[str, ...] = ("val", "test")  # a sweep trial evaluates "val" only


class Trainer(Stepping, Epochs, Evaluation, Checkpointing, Guarding):
    """One training (a teacher's, or a student's with its objective): built here, `run()` to the end.
    Its parts: Stepping (step.py), Epochs (epoch.py), Evaluation (evaluation.py), Checkpointing
    (checkpoint.py), Guarding (monitor.py)."""

    def __init__(self, student: nn.Module, objective: Objective, batches: Batches, config: TrainConfig,
                 device: torch.device, teacher: nn.Module | list[nn.Module] | None = None,
                 log: Callable[[dict, int], None] | None = None, checkpoints: CheckpointStore | None = None,
                 stop: threading.Event | None = None, context: distributed.Context = distributed.SINGLE,
                 teacher_cache: dict | None = None):
        """teacher: one network or several (a multi-teacher pair); the objective receives a list of
        feature dicts, one per teacher, in this order.
        teacher_cache: the teachers' features for every training image, as an earlier Trainer of the
        same cell and data computed them (`config.options.teacher_cache`; a sweep's trials share one)."""
        if context.enabled and config.options.sync_bn:  # before any optimizer sees the batch-norm parameters
            nn.SyncBatchNorm.convert_sync_batchnorm(student)
        self.teachers = [] if teacher is None else list(teacher) if isinstance(teacher, list) else [teacher]
        if objective.needs_teacher and not self.teachers:
            raise ValueError("this objective reads teacher features but no teacher was given")
        objective.check_teachers(len(self.teachers))
        self.student, self.objective, self.batches, self.config = student, objective, batches, config
        self.device = device
        self.log = log or (lambda metrics, step: None)
        self.checkpoints, self.stop = checkpoints, stop or threading.Event()
        self.context = context
        self.eval_splits = config.eval_splits if context.is_main else ()  # rank 0 evaluates for all
        self.recipe = config.recipe
        self.phases = objective.phases(self.recipe.epochs)  # [(name, epochs)], MAIN_PHASE last
        self.extra_specs = objective.extra_optimizers()
        self.extra = [s.build() for s in self.extra_specs]
        self.total_epochs = sum(epochs for _, epochs in self.phases)
        objective.bind_training_set(batches.splits["train"].labels.to(device))  # before a restore fills its state
        self.optimizer, self.optimizer_phase = self._new_optimizer(), 0
        self.generator = torch.Generator()
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.options.amp == "fp16")
        self.teacher_cache = teacher_cache
        if config.options.compile:  # dynamo's recompile limit (8) counts the graphs of every earlier Trainer
            torch._dynamo.reset()    # in this process: without a reset, later cells (or perf's methods) ran eager
        self.extract = torch.compile(extract_features) if config.options.compile else extract_features
        if config.options.channels_last:
            for model in [student, *self.teachers]:
                model.to(memory_format=torch.channels_last)
        self.step_module = StudentStep(student, objective, self.extract, config.student_stages)
        if context.enabled:  # a pre-phase (hint training) leaves some parameters unused
            # broadcast_buffers off: each rank keeps its own batch-norm statistics (distributed.py)
            self.step_module = nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=len(self.phases) > 1, broadcast_buffers=False)
        self.history: list[dict] = []
        self.epoch, self.step = 0, 0
        self.epoch_start_generator: torch.Tensor | None = None
        self.partial: dict = {}
        self.teacher_clock = Stopwatch(device)  # the teachers' forward time in the current epoch
        self.guard = FiniteGuard(device)  # the current epoch's first non-finite step
        self.resumed = False
        self.meta: dict = {}  # stored with every checkpoint (the runner puts the MLflow run id here)

    def run(self) -> dict:
        state = self.checkpoints.load_latest() if self.checkpoints is not None else None
        if state is not None:
            self.restore(state)
            print(f"{self.config.label}: resuming from epoch {self.epoch}, step {self.step}", file=sys.stderr)
        else:
            self.generator.manual_seed(self.config.seed)
            self.epoch_start_generator = self.generator.get_state()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.config.options.teacher_cache and self.objective.needs_teacher and self.teacher_cache is None:
            self.teacher_cache = self._cache_teacher_features()
        steps_per_epoch = Batches.steps(self.batches.epoch_plan(self.recipe.batch_size, torch.Generator()))
        if steps_per_epoch == 0:
            raise ValueError(f"batch size {self.recipe.batch_size} is larger than the training set")
        bar = tqdm(total=self.total_epochs * steps_per_epoch, initial=self.epoch * steps_per_epoch + self.step,
                   desc=self.config.label,
                   disable=None if self.config.options.progress and self.context.is_main else True, leave=False, dynamic_ncols=True)
        started = time.perf_counter()
        try:
            while self.epoch < self.total_epochs:
                self._train_epoch(bar)
        finally:
            bar.close()
        return self.summary(time.perf_counter() - started)
