"""Saying what is happening where no progress bar shows: a line when a training starts and one per
epoch when stderr is not a terminal (a log file, CI, a notebook), and a warning when the first
training starts on a machine that other work already loads beyond its cores."""

from __future__ import annotations

import os
import sys


def narrating(progress: bool, is_main: bool) -> bool:
    """Lines instead of the bar: progress wanted, rank 0, and stderr not a terminal (tqdm shows
    its bar on a terminal only)."""
    return progress and is_main and not sys.stderr.isatty()


def start_line(name: str, phases: list[tuple[str, int]]) -> str:
    """'training teacher digits/resnet20 seed 0: 15 epochs' (its phases named when there are more than one;
    a resumed run's engine says from which epoch)."""
    total = sum(epochs for _, epochs in phases)
    parts = f" ({', '.join(f'{phase} {epochs}' for phase, epochs in phases)})" if len(phases) > 1 else ""
    return f"training {name}: {total} epoch{'s' if total != 1 else ''}{parts}"


def epoch_line(name: str, phase: str, step: int, total: int, metrics: dict) -> str:
    """'kd · digits/resnet20-resnet8 · seed 0: epoch 3/15 (main), val top-1 91.00%, test top-1 90.28%, 1.9 s'."""
    scores = "".join(f", {split} top-1 {metrics[f'{split}/top1']:.2f}%" for split in ("val", "test")
                     if f"{split}/top1" in metrics)
    return f"{name}: epoch {step + 1}/{total} ({phase}){scores}, {metrics.get('epoch_seconds', 0.0):.1f} s"


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


WARNED = []  # the load warning is given once per process, when its first training starts


def warn_if_loaded() -> None:
    if not WARNED and (warning := load_warning()) is not None:
        say(warning)
        WARNED.append(warning)


def load_warning() -> str | None:
    """A warning when the 1-minute load average already exceeds the core count: training would share
    the cores (two training processes on 2 cores made a 25 s job take 335 s). $KD_HARNESS_QUIET_LOAD=1
    silences it (the test suite, whose own processes load the machine, sets it)."""
    if os.environ.get("KD_HARNESS_QUIET_LOAD") == "1":
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= cores:
        return None
    return (f"harness: warning: the machine's 1-minute load is {load:.1f} on {cores} cores: other work shares "
            "them, so this training may run many times slower and its s/epoch figures will be marked † "
            "(measured under load) in reports")
