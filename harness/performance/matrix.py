"""The acceptance check's method matrix: every method on its digits cell under each option set, with
finite losses, the step's time two ways, and the host's reads of device values inside a step."""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from harness.data.data import Batches
from harness.performance.bench import block_step_seconds, sync, untrained_teachers
from harness.running.plan import deterministic
from harness.running.runner import Runner
from harness.spec.options import RunOptions
from harness.training.device import configure_determinism
from methods import pair_mismatch

METHOD_PAIRS = ("resnet20-resnet8", "hinton1200x3-hinton800")  # digits: every method has a cell on one
# where a read on the host counts as the harness's own (on the CPU): its code and the methods', not torch's
OWN_CODE = tuple(str(Path(__file__).resolve().parents[2] / name) for name in ("harness", "methods"))
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__")


@contextmanager
def host_reads(device: torch.device):
    """The reads of a device value on the host inside the block (on a GPU each waits for the queued
    work): CUDA's sync debug mode on a GPU; on the CPU, where nothing waits, calls of Tensor.item,
    tolist, bool, int and float from the harness's or a method's code (torch's own, e.g. an
    optimizer's step count, are host values). Yields the list the reads are appended to."""
    reads: list[str] = []
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield reads
            finally:
                torch.cuda.set_sync_debug_mode("default")
                reads += [str(w.message).splitlines()[0][:200] for w in caught if "synchroniz" in str(w.message)]
        return
    saved = {name: torch.Tensor.__dict__.get(name) for name in HOST_READS}

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(OWN_CODE):
                reads.append(f"Tensor.{name} in {caller.co_filename}:{caller.co_name}")
            return original(self, *args, **kwargs)
        return read

    for name in HOST_READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield reads
    finally:
        for name, method in saved.items():
            if method is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, method)


def method_matrix(runner: Runner, device: str, option_sets: dict, steps: int, methods: list[str] | None = None,
                  budget_s: float = float("inf"), deadline: float = float("inf"), on_method=None) -> list[dict]:
    """`methods` (default: every method of benchmarks.yaml) on their digits cells under each option
    set: one step (compiling, warming up), `steps` steps each alone (their median ms/step), `steps`
    steps back to back (block ms/step, one sync at the end), then one step whose host reads are
    counted; finite losses. A cell starts only while the matrix has run under `budget_s` and before
    `deadline` (time.perf_counter()); the rest say so. on_method(rows) after each method's cells."""
    rows, started = [], time.perf_counter()
    for method in methods or list(runner.spec.methods):
        pair = next(p for p in METHOD_PAIRS if pair_mismatch(runner.spec, method, p) is None)
        for name, options in option_sets.items():
            row = {"method": method, "pair": pair, "options": name}
            if time.perf_counter() - started > budget_s:
                rows.append(row | {"status": f"not run: past the section's {budget_s:g} s"})
                continue
            if time.perf_counter() > deadline:
                rows.append(row | {"status": "not run: past the check's budget"})
                continue
            rows.append(row | _cell(runner, device, method, pair, options, steps))
        if on_method is not None:
            on_method(rows)
    return rows


def _cell(runner: Runner, device: str, method: str, pair: str, options: dict, steps: int) -> dict:
    try:
        plan = runner.plan(runner.spec.cell(f"digits/{pair}/{method}"),
                           RunOptions(smoke=True, progress=False, device=device, **options))
        configure_determinism(deterministic(plan.opts, plan.device), plan.device)
        trainer = plan.trainer(untrained_teachers(runner, plan), eval_splits=(), label=method)
        epoch = trainer.batches.epoch_plan(trainer.recipe.batch_size, torch.Generator().manual_seed(0))
        n = Batches.steps(epoch)
        cell_started = time.perf_counter()
        trainer.step_on(epoch, 0)
        sync(plan.device)
        first_step = time.perf_counter() - cell_started
        times = []
        for step in range(1, steps + 1):
            sync(plan.device)
            step_started = time.perf_counter()
            trainer.step_on(epoch, step % n)
            sync(plan.device)
            times.append(time.perf_counter() - step_started)
        block = block_step_seconds(trainer.step_on, epoch, steps, plan.device, first=steps + 1)
        with host_reads(plan.device) as reads:
            losses, _ = trainer.step_on(epoch, (2 * steps + 1) % n)
        terms = {k: v.detach().item() for k, v in losses.items()}
    except Exception as e:  # recorded: the matrix shows every failure at once
        return {"status": f"FAIL: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    bad = [k for k, v in terms.items() if not np.isfinite(v)]
    return {"status": "FAIL: non-finite " + ", ".join(bad) if bad else "ok", "first_step_s": first_step,
            "ms_per_step": 1000 * statistics.median(times), "block_ms_per_step": 1000 * block,
            "host_reads_per_step": len(reads), "host_reads": sorted(set(reads))[:5], "losses": terms}
