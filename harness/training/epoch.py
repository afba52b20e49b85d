"""The epoch: the Trainer's phases (a method's pre-training phases, then the main one), each with a
fresh optimizer and its learning rates, and one epoch of steps over the epoch plan, interrupted at a
guard look when a stop was requested, then evaluated and checkpointed (harness/training/engine.py)."""

from __future__ import annotations

import time

import torch

from harness.data.data import Batches
from harness.training import distributed
from harness.training.device import machine_load
from harness.training.evaluation import evaluate
from harness.training.monitor import FiniteGuard, Interrupted, Stopwatch
from harness.training.recipe import build_optimizer, lr_factor
from methods import MAIN_PHASE


class Epochs:
    """The Trainer's phases and epochs (a part of harness/training/engine.py's Trainer)."""

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

    def _start_epoch(self) -> tuple[dict, int, str]:
        """The current epoch's clocks, guard and plan, its phase's optimizer and learning rates:
        (epoch plan, phase index, phase name)."""
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
        return plan, phase_index, phase

    def _train_epoch(self, bar) -> None:
        epoch_started = time.perf_counter() - self.partial.get("seconds", 0.0)
        cpu_started = time.process_time() - self.partial.get("cpu_seconds", 0.0)
        plan, phase_index, phase = self._start_epoch()
        # a resumed epoch's partial sums are over all ranks: rank 0 carries them, the others start at 0
        partial = self.partial if self.context.is_main else {}
        sums = {k: torch.tensor(v, device=self.device) for k, v in partial.get("sums", {}).items()}
        correct = torch.tensor(partial.get("correct", 0), device=self.device)
        self.student.train()
        for teacher in self.teachers:
            teacher.train(self.objective.teacher_mode == "train")
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
        metrics = self._epoch_metrics(sums, correct, n_steps, epoch_started, cpu_started)
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

    def _epoch_metrics(self, sums: dict, correct: torch.Tensor, n_steps: int, epoch_started: float,
                       cpu_started: float) -> dict:
        """A finished epoch's losses, accuracies (the evaluated splits' too), learning rate and times."""
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
        return metrics

    def _over_ranks(self, sums: dict, correct: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Loss sums and the correct count, each summed over the ranks (unchanged on one process)."""
        reduced = distributed.sum_over_ranks(self.context, sums | {"__correct__": correct})
        return {k: v for k, v in reduced.items() if k != "__correct__"}, reduced["__correct__"]
