"""The one training loop, for teachers (objective = CE only, no teacher) and students.

It knows no method by name: it asks the Objective which features to compute, computes the
teacher's once per batch under inference_mode, sums the returned loss terms, and logs each.
State is checkpointed after every epoch and when a stop is requested (SIGTERM/SIGINT);
a resumed run continues bit-for-bit where the checkpoint left it, mid-epoch included.
"""

from __future__ import annotations

import functools
import math
import os
import random
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from harness.data.data import Batches
from harness.models import count_parameters, extract_features
from harness.spec.options import RunOptions
from harness.spec.schema import RecipeSpec
from harness.training import distributed
from harness.training.checkpoint import CheckpointStore
from harness.training.monitor import GUARD_EVERY, FiniteGuard, MethodFailed, NonFiniteLoss, Stopwatch
from methods import MAIN_PHASE, Objective


class Interrupted(Exception):
    """A stop was requested (SIGTERM/SIGINT); a checkpoint of the current step was written."""


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_determinism(enabled: bool, device: torch.device, tf32: bool = False) -> None:
    """The numerics switches a run (and `harness bench`) trains under. TF32 is off unless asked for
    (`--tf32`): PyTorch's own defaults differ between matmuls (off) and cuDNN convolutions (on)."""
    if enabled and device.type == "cuda":  # cuBLAS needs this for deterministic matmuls
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=device.type == "cuda")
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def build_optimizer(recipe: RecipeSpec, params) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                               weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.RMSprop(params, lr=recipe.lr, alpha=recipe.alpha, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay)


def lr_factor(recipe: RecipeSpec, epoch: int) -> float:
    """Multiplier of the base lr during `epoch` (per-epoch schedules)."""
    s = recipe.schedule
    if s.kind == "multistep":
        return s.gamma ** sum(epoch >= round(m * recipe.epochs) for m in s.milestones)
    if s.kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / recipe.epochs))
    return 1.0


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches, split: str, batch_size: int, amp: str) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) of `model` on a split."""
    model.eval()
    hits1 = hits5 = total = 0  # counts stay on the device until the split is done: one host read
    for x, y in batches.eval_batches(split, batch_size):
        with autocast(x.device, amp):
            logits = model(x)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == y[:, None]
        hits1 = hits1 + hits[:, 0].sum()
        hits5 = hits5 + hits.any(dim=1).sum()
        total += len(y)
    correct1, correct5 = torch.stack([hits1, hits5]).tolist()
    return 100.0 * correct1 / total, 100.0 * correct5 / total


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def speed_features() -> list[str]:
    """The CPU features that decide which speed options pay (vector width, native bf16)."""
    flags = cpu_flags()
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]


def resolve_amp(amp: str, device_type: str) -> str:
    """`auto` -> the fastest safe option for the device: bf16 on CUDA with bf16 support and on CPUs
    with native bf16 (AVX-512 BF16 or AMX), else off. bf16 on a CPU without it is emulated: on an
    AVX2-only AMD EPYC a ResNet KD step ran 10x slower than fp32, so it is said loudly."""
    if amp == "auto" and device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "auto" or (amp == "bf16" and device_type == "cpu"):  # the CPU's flags decide (read only then)
        native_cpu = bool(cpu_flags() & set(NATIVE_BF16_FLAGS))
        if amp == "auto":
            return "bf16" if native_cpu else "off"
        if not native_cpu:
            _warn_emulated_bf16()
    return amp


@functools.cache
def _warn_emulated_bf16() -> None:  # once per process, not once per planned run
    print("harness: warning: --amp bf16 on a CPU without native bf16 (no avx512_bf16 / amx_bf16): "
          "emulated, measured up to 10x slower than fp32 here; --amp auto picks what is fast", file=sys.stderr)


def autocast(device: torch.device, amp: str):
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES.get(amp), enabled=amp in AMP_DTYPES)


def machine_load() -> float:
    """The 1-minute load average (this process's own threads included); 0 where the OS has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def as_fp32(value):
    """Every floating tensor of a feature tree (dicts, lists) in fp32; other values as they are."""
    if isinstance(value, dict):
        return {k: as_fp32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(as_fp32(v) for v in value)
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


class StudentStep(nn.Module):
    """The student's forward and the objective's loss terms as one module: what DistributedDataParallel
    wraps, so that the gradients of the student and of the method's own parameters are both averaged.

    Autocast covers the networks, never a method's arithmetic: the objective runs with autocast off
    on fp32 copies of the features (bf16 distances and Gram matrices lose the small differences the
    losses measure, fp16 overflows past 65,504, and solvers such as eigh have no half kernels)."""

    def __init__(self, student: nn.Module, objective: Objective, extract: Callable, stages: list[int]):
        super().__init__()
        self.student, self.objective, self.extract, self.stages = student, objective, extract, stages

    def forward(self, x, teacher_features, y, phase: str, indices: torch.Tensor | None = None):
        features = self.extract(self.student, x, self.objective.student_features - {"indices"}, self.stages)
        if self.objective.reads_indices:
            if indices is None:
                raise ValueError("this objective reads the batch's indices in the training split; none were given")
            features["indices"] = indices
        with torch.autocast(x.device.type, enabled=False):
            losses = self.objective(as_fp32(features), as_fp32(teacher_features), y, phase)
        return losses, features["logits"]


class Trainer:
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

    # ---- state -----------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "epoch": self.epoch, "step": self.step,
            "student": self.student.state_dict(), "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(), "optimizer_phase": self.optimizer_phase,
            "extra_optimizers": [opt.state_dict() for opt in self.extra],
            "grad_scaler": self.scaler.state_dict(),
            "epoch_start_generator": self.epoch_start_generator,
            "torch_rng": torch.get_rng_state(),
            # the training device's generator only: a run resumes on a machine with fewer GPUs
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "python_rng": random.getstate(),
            "numpy_rng": _plain(np.random.get_state(legacy=False)),
            "history": self.history, "partial": self.partial, "meta": self.meta,
        }

    def restore(self, state: dict) -> None:
        self.epoch, self.step = state["epoch"], state["step"]
        self.student.load_state_dict(state["student"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer, self.optimizer_phase = self._new_optimizer(), state["optimizer_phase"]
        self.optimizer.load_state_dict(state["optimizer"])
        for opt, opt_state in zip(self.extra, state["extra_optimizers"]):
            opt.load_state_dict(opt_state)
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.epoch_start_generator = state["epoch_start_generator"]
        torch.set_rng_state(state["torch_rng"])
        if isinstance(state["cuda_rng"], torch.Tensor) and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        random.setstate(_as_tuple(state["python_rng"]))
        numpy_state = dict(state["numpy_rng"])
        numpy_state["state"] = dict(numpy_state["state"], key=np.asarray(numpy_state["state"]["key"], np.uint32))
        np.random.set_state(numpy_state)
        self.history, self.partial = state["history"], state["partial"]
        self.resumed = True

    def _new_optimizer(self) -> torch.optim.Optimizer:
        owned = {id(p) for spec in self.extra_specs for p in spec.params}
        params = [p for p in list(self.student.parameters()) + list(self.objective.parameters()) if id(p) not in owned]
        return build_optimizer(self.recipe, params)

    def phase_at(self, epoch: int) -> tuple[int, str, int]:
        """(phase index, phase name, the phase's first epoch) of a global epoch."""
        start = 0
        for index, (name, epochs) in enumerate(self.phases):
            if epoch < start + epochs:
                return index, name, start
            start += epochs
        raise ValueError(f"epoch {epoch} is past the last phase")

    def _save(self) -> None:
        if self.checkpoints is not None and self.context.is_main:
            self.checkpoints.save(self.state())

    # ---- the loop --------------------------------------------------------------------------
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

    def _train_epoch(self, bar) -> None:
        epoch_started = time.perf_counter() - self.partial.get("seconds", 0.0)
        cpu_started = time.process_time() - self.partial.get("cpu_seconds", 0.0)
        self.teacher_clock = Stopwatch(self.device, self.partial.get("teacher_seconds", 0.0))
        self.guard = FiniteGuard(self.device)
        self.generator.set_state(self.epoch_start_generator)
        plan = self.batches.epoch_plan(self.recipe.batch_size, self.generator)
        phase_index, phase, phase_start = self.phase_at(self.epoch)
        if phase_index != self.optimizer_phase:  # each phase starts with a fresh optimizer
            self.optimizer, self.optimizer_phase = self._new_optimizer(), phase_index
        factor = lr_factor(self.recipe, self.epoch - phase_start) if phase == MAIN_PHASE \
            else self.objective.phase_lr_scale(phase, self.recipe.epochs)
        if phase == MAIN_PHASE:
            self.objective.set_epoch(self.epoch - phase_start, self.recipe.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = self.recipe.lr * factor
        for spec, opt in zip(self.extra_specs, self.extra):
            passed = sum(self.epoch - phase_start >= round(m * self.recipe.epochs) for m in spec.milestones)
            for group in opt.param_groups:
                group["lr"] = spec.lr * spec.gamma ** passed
        # a resumed epoch's partial sums are over all ranks: rank 0 carries them, the others start at 0
        partial = self.partial if self.context.is_main else {}
        sums = {k: torch.tensor(v, device=self.device) for k, v in partial.get("sums", {}).items()}
        correct = torch.tensor(partial.get("correct", 0), device=self.device)
        self.student.train()
        for teacher in self.teachers:
            teacher.eval()
        n_steps = Batches.steps(plan)
        stop = False
        for step in range(self.step, n_steps):
            losses, batch_correct = self.step_on(plan, step, phase)
            for term, value in losses.items():
                sums[term] = sums.get(term, 0) + value.detach().float()
            correct += batch_correct
            self.step = step + 1
            bar.update(1)
            stop = self._look_now(step, n_steps) and self._guard_says_stop()
            if stop and self.step < n_steps:
                all_sums, all_correct = self._over_ranks(sums, correct)
                self.partial = {"sums": {k: v.item() for k, v in all_sums.items()}, "correct": all_correct.item(),
                                "seconds": time.perf_counter() - epoch_started,
                                "cpu_seconds": time.process_time() - cpu_started,
                                "teacher_seconds": self.teacher_clock.seconds()}
                self._save()
                raise Interrupted(f"stopped at epoch {self.epoch}, step {self.step}; checkpoint written")
        if self.context.enabled:  # losses: mean over ranks; correct: summed over the global batch
            sums, correct = self._over_ranks(sums, correct)
            sums = {k: v / self.context.world_size for k, v in sums.items()}
        metrics = {f"train/loss_{k}": v.item() / n_steps for k, v in sums.items()}
        metrics["train/loss"] = sum(v.item() for v in sums.values()) / n_steps
        metrics["train/top1"] = 100.0 * correct.item() / (n_steps * self.recipe.batch_size)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        for split in self.eval_splits:
            metrics[f"{split}/top1"], metrics[f"{split}/top5"] = evaluate(
                self.student, self.batches, split, self.recipe.eval_batch_size, self.config.options.amp)
        metrics["epoch_seconds"] = time.perf_counter() - epoch_started
        # how loaded the machine was: a cost figure measured beside other work is not a cost figure
        metrics["epoch_cpu_seconds"] = time.process_time() - cpu_started
        metrics["load_1m"] = machine_load()
        if self.teachers and self.teacher_cache is None:  # the teachers' share of the epoch
            metrics["epoch_teacher_seconds"] = self.teacher_clock.seconds()
        metrics["epoch"] = self.epoch
        metrics["phase"] = phase_index
        bar.set_postfix(epoch=self.epoch, **{s: f"{metrics[f'{s}/top1']:.2f}" for s in self.eval_splits})
        self.history.append(metrics)
        self.epoch, self.step = self.epoch + 1, 0
        self.epoch_start_generator = self.generator.get_state()
        self.partial = {}
        self._save()
        self.log(metrics, self.epoch - 1)
        if stop and self.epoch < self.total_epochs:  # asked at the epoch's last look: its checkpoint is written
            raise Interrupted(f"stopped at epoch {self.epoch}, step 0; checkpoint written")

    def _look_now(self, step: int, n_steps: int) -> bool:
        """Whether the host reads the guard after `step`: every GUARD_EVERY steps and at the epoch's
        end; at once when this single process was asked to stop (under torchrun the ranks must
        agree on the step, so they look together)."""
        return (step + 1) % GUARD_EVERY == 0 or step + 1 == n_steps \
            or (not self.context.enabled and self.stop.is_set())

    def _guard_says_stop(self) -> bool:
        """Raise NonFiniteLoss if a step of any rank went non-finite; else whether any rank was asked
        to stop (one small collective under torchrun)."""
        diverged, stop = distributed.any_rank(self.context, self.guard.went_bad(), self.stop.is_set(),
                                              device=self.device)
        if diverged:
            if self.guard.went_bad():
                raise self.guard.error(self.epoch)
            raise NonFiniteLoss(self.epoch, self.step - 1, "total on another rank", math.nan)
        return stop

    def _over_ranks(self, sums: dict, correct: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Loss sums and the correct count, each summed over the ranks (unchanged on one process)."""
        reduced = distributed.sum_over_ranks(self.context, sums | {"__correct__": correct})
        return {k: v for k, v in reduced.items() if k != "__correct__"}, reduced["__correct__"]

    def _cache_teacher_features(self) -> dict:
        """The teacher's features for every training image, in split order, kept on the device.

        Only valid when a training image is the same tensor every epoch (no augmentation): the
        runner checks that. Computed in evaluation batches, so values can differ from the per-batch
        ones by floating-point rounding of batch-size-dependent kernels.
        """
        chunks = []
        with torch.no_grad(), autocast(self.device, self.config.options.amp):
            for x, _ in self.batches.eval_batches("train", self.recipe.eval_batch_size):
                if self.config.options.channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                chunks.append(self._teacher_features(x))
        return _concat_trees(chunks)

    def _teacher_features(self, x: torch.Tensor) -> list[dict]:
        """Every teacher's requested features for one batch, in the pair's teacher order."""
        for teacher in self.teachers:
            teacher.eval()
        return [self.extract(teacher, x, self.objective.teacher_features, self.config.teacher_stages)
                for teacher in self.teachers]

    def step_on(self, plan: dict, step: int, phase: str = MAIN_PHASE):
        """train_step on batch `step` of an epoch plan, with the batch's indices where the teacher
        cache or the objective reads them."""
        wants_indices = self.teacher_cache is not None or self.objective.reads_indices
        indices = self.batches.batch_indices(plan, step) if wants_indices else None
        return self.train_step(*self.batches.train_batch(plan, step), step, phase, indices)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, step: int = 0, phase: str = MAIN_PHASE,
                   indices: torch.Tensor | None = None):
        """One optimisation step on a batch: returns (named losses, correct count), both on the device.
        Nothing here waits for the device: a non-finite loss is recorded by the guard, which the
        epoch loop reads every GUARD_EVERY steps."""
        if self.config.options.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.config.options.amp):
            teacher_features = None
            if self.teacher_cache is not None:
                teacher_features = _take_tree(self.teacher_cache, indices)
            elif self.objective.needs_teacher:
                with self.teacher_clock.section(), torch.inference_mode():
                    teacher_features = self._teacher_features(x)
                teacher_features = _clone_tree(teacher_features)  # inference tensors cannot enter autograd
            try:
                losses, logits = self.step_module(x, teacher_features, y, phase, indices)
            except torch.linalg.LinAlgError as e:  # a solver that found no answer: a FAILED run, not a traceback
                raise MethodFailed(self.epoch, step, str(e).splitlines()[0]) from None
        total = sum(losses.values())
        self.guard.watch(losses, step)
        self.optimizer.zero_grad(set_to_none=True)
        for opt in self.extra:
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        if phase == MAIN_PHASE:  # then each method-owned optimizer, on its own parameters
            for opt in self.extra:
                if any(p.grad is not None for group in opt.param_groups for p in group["params"]):
                    self.scaler.step(opt)
        self.scaler.update()
        return losses, (logits.argmax(dim=1) == y).sum()

    def summary(self, wall_seconds: float) -> dict:
        """Summary metrics; the best-validation ones only when validation was evaluated (and was
        not trained on), the test ones only when test was evaluated (never in a sweep trial)."""
        out = {}
        main_epochs = [i for i, h in enumerate(self.history) if self.phases[int(h["phase"])][0] == MAIN_PHASE]
        if "val" in self.eval_splits:
            best = max(main_epochs, key=lambda i: (self.history[i]["val/top1"], -i))
            out |= {"best_val_epoch": best, "val_top1_best": self.history[best]["val/top1"],
                    "val_top1_last": self.history[-1]["val/top1"]}
            if "test" in self.eval_splits:
                out |= {"test_top1_best_val": self.history[best]["test/top1"],
                        "test_top5_best_val": self.history[best]["test/top5"]}
        if "test" in self.eval_splits:
            out |= {"test_top1_last": self.history[-1]["test/top1"], "test_top5_last": self.history[-1]["test/top5"],
                    # test-selected (the best epoch on the test set itself): optimistic, only to stand beside
                    # papers that report it; each maximum on its own, over the main phase
                    "test_top1_max_test": max(self.history[i]["test/top1"] for i in main_epochs),
                    "test_top5_max_test": max(self.history[i]["test/top5"] for i in main_epochs)}
        return out | {
            "mean_epoch_seconds": float(np.mean([h["epoch_seconds"] for h in self.history])),
            "max_load_1m": max(h.get("load_1m", 0.0) for h in self.history),
            "cpu_count": os.cpu_count() or 1,
            "extra_parameters": self.objective.extra_parameters(),
            "student_parameters": count_parameters(self.student),
            "teacher_parameters": sum(count_parameters(t) for t in self.teachers),
            "peak_memory_mb": peak_memory_mb(self.device),
            "wall_seconds": wall_seconds,
        }


def _clone_tree(value):
    if isinstance(value, dict):
        return {k: _clone_tree(v) for k, v in value.items()}
    return [_clone_tree(v) for v in value] if isinstance(value, list) else value.clone()


def _concat_trees(trees: list):
    first = trees[0]
    if isinstance(first, dict):
        return {k: _concat_trees([t[k] for t in trees]) for k in first}
    if isinstance(first, list):
        return [_concat_trees([t[i] for t in trees]) for i in range(len(first))]
    return torch.cat(trees)


def _take_tree(value, indices: torch.Tensor):
    if isinstance(value, dict):
        return {k: _take_tree(v, indices) for k, v in value.items()}
    return [_take_tree(v, indices) for v in value] if isinstance(value, list) else value[indices]


def _plain(value):
    """NumPy's RNG state with its arrays as lists, so weights_only loading accepts it."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value.tolist() if isinstance(value, np.ndarray) else value


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
