"""What the training loop watches without stopping the device: a non-finite loss and section times;
how a training stops early (a non-finite loss, a method's failure, a stop request: `Interrupted`).

On a GPU every `.item()`, `bool(tensor)` or `isfinite` read on the host waits for the queued kernels,
so the loop keeps its records on the device and reads them every few steps (`GUARD_EVERY`) and at
each epoch's end. The step that went non-finite is still the one reported: the device remembers
the first bad step and its terms' values.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import torch

from harness.training import distributed

# steps between the host's looks at the device-side record (and, under torchrun, the one collective
# that lets every rank stop at the same step); a stop request waits at most this many steps
GUARD_EVERY = 25


class Interrupted(KeyboardInterrupt):
    """A stop was requested (SIGTERM/SIGINT); a checkpoint of the current step was written. Like
    KeyboardInterrupt, not an Exception: code that catches Exception (a test, a notebook cell, a
    script's retry loop) lets it through, so the signal ends the process that ran the training,
    not just the run (pytest ends its session at it)."""


class NonFiniteLoss(Exception):
    def __init__(self, epoch: int, step: int, term: str, value: float):
        self.epoch, self.step, self.term, self.value = epoch, step, term, value
        super().__init__(f"loss term {term!r} became {value} at epoch {epoch}, step {step}")


class MethodFailed(Exception):
    """A method could not compute its loss (a solver failure): the run ends FAILED with this reason."""

    def __init__(self, epoch: int, step: int, reason: str):
        self.epoch, self.step = epoch, step
        super().__init__(f"the method could not compute its loss at epoch {epoch}, step {step}: {reason}")


class FiniteGuard:
    """The first step of an epoch whose loss terms were not all finite, recorded on the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.names: list[str] = []
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.values: torch.Tensor | None = None

    def watch(self, losses: dict[str, torch.Tensor], step: int) -> None:
        if not self.names:
            self.names = list(losses)
            self.values = torch.zeros(len(self.names), device=self.device)
        values = torch.stack([losses[name].detach().float() for name in self.names])
        newly_bad = (~torch.isfinite(values)).any() & (self.first_step < 0)
        self.first_step = torch.where(newly_bad, step, self.first_step)
        self.values = torch.where(newly_bad, values, self.values)

    def went_bad(self) -> bool:
        """One host read: did any watched step go non-finite?"""
        return bool(self.first_step >= 0)

    def error(self, epoch: int) -> NonFiniteLoss:
        """The failure of the first bad step (call when `went_bad()`)."""
        values = self.values.tolist()
        term = next((n for n, v in zip(self.names, values) if not math.isfinite(v)), "total on another rank")
        value = values[self.names.index(term)] if term in self.names else math.nan
        return NonFiniteLoss(epoch, int(self.first_step), term, value)


class Stopwatch:
    """Seconds spent in a repeated section of the loop: perf_counter on the CPU; CUDA events on a
    GPU, read only by `seconds()` (once per epoch), so timing adds no host sync per step."""

    def __init__(self, device: torch.device, seconds: float = 0.0):
        self.cuda = device.type == "cuda"
        self._seconds, self._events = seconds, []

    @contextmanager
    def section(self):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((start, end))
        else:
            started = time.perf_counter()
            yield
            self._seconds += time.perf_counter() - started

    def seconds(self) -> float:
        if self._events:
            self._events[-1][1].synchronize()
            self._seconds += sum(start.elapsed_time(end) for start, end in self._events) / 1000
            self._events = []
        return self._seconds


class Guarding:
    """The Trainer's non-finite guard and stop requests (a part of harness/training/engine.py's
    Trainer): when the host looks at the device-side record, and what it finds there."""

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
