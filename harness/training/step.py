"""The step: one optimisation step of the Trainer (harness/training/engine.py) on one batch.

The student's forward and the objective's loss terms run as one module (`StudentStep`, what
DistributedDataParallel wraps); the teachers' features come from one forward per batch under
inference_mode, or from the teacher cache (every training image's features, computed once). Nothing
here waits for the device: a non-finite loss is left to the guard (harness/training/monitor.py).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from harness.training.device import autocast
from harness.training.monitor import MethodFailed
from methods import MAIN_PHASE, Objective


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


class Stepping:
    """The Trainer's step (a part of harness/training/engine.py's Trainer): the teachers' features,
    the teacher cache, and `train_step` / `step_on` (what `harness bench` times)."""

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
        for teacher in self.teachers:  # eval, or the batch's statistics where the method's authors used them
            teacher.train(self.objective.teacher_mode == "train")
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
