"""The life of one training run, the same for teachers, students and sweep retrainings.

`execute(runner, job, force)`: a lock per run key, so that two processes of a machine never train
the same thing, then a claim in the store shared with every other worker (harness/running/workshare.py);
a FINISHED run is skipped and a diverged one (non-finite loss) is not trained again (unless forced);
an interrupted one is resumed in the same MLflow run from its last checkpoint; the run ends FINISHED,
FAILED (with the reason as tags) or KILLED (stopped by a signal, resumable). A sweep trial ends
through the same `end_finished` and `end_failed`; it has no claim, skip or resume, since Optuna
schedules its trials.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import torch

from harness.errors import UserError
from harness.running.narrate import epoch_line, narrating, say, start_line, warn_if_loaded
from harness.running.process import exclusive, stop_on_signals
from harness.running.workshare import WORKER, Claimed, claim_tags, first_claim, heartbeat, is_live
from harness.training import distributed
from harness.training.checkpoint import CheckpointStore
from harness.training.engine import Trainer
from harness.training.monitor import Interrupted, MethodFailed, NonFiniteLoss

if TYPE_CHECKING:
    from harness.tracking.tracking import Tracker

TAKEOVER_PAUSE = 1.0  # seconds between writing a takeover's claim and reading it back


class Site(Protocol):
    """What the life cycle asks of whoever runs a job (the Runner, harness/running/runner.py): the
    runs home, the torchrun context and the store, which rank 0 alone opens."""

    home: Path
    context: distributed.Context

    @property
    def tracker(self) -> Tracker: ...


class TrainingFailed(Exception):
    """The training itself failed (e.g. the loss diverged); its MLflow run is FAILED."""


@dataclass
class Job:
    """One training to run under the lock/skip/resume/status rules."""

    run_key: str
    run_name: str
    tags: dict
    params: Callable[[], dict]  # asked for only when a new MLflow run is created
    config: dict
    make_trainer: Callable[[CheckpointStore, Callable, threading.Event], Trainer]
    on_success: Callable[[Trainer, str], None] = lambda trainer, run_id: None


@dataclass
class Outcome:
    run_id: str
    status: str  # "FINISHED" (trained now), "SKIPPED" (already finished)
    summary: dict


def execute(runner: Site, job: Job, force: bool, reuse_finished: bool = True) -> Outcome:
    """Train the job's run, or skip it when it is FINISHED. `force` trains a new run even then (and
    does not resume an interrupted one); `reuse_finished=False` only declines the FINISHED run (a
    teacher whose file is gone) while an interrupted run is still resumed."""
    if not runner.context.is_main:
        return _execute_follower(runner, job)
    run_dir = runner.home / "runs" / job.run_key
    with exclusive(run_dir / "lock") as held:
        try:
            decision = _decide(runner.tracker, job, force, reuse_finished, held, run_dir)
        except BaseException as e:  # the other ranks wait for a decision: hand them the error instead
            distributed.broadcast(runner.context, ("error", f"{type(e).__name__}: {e}"))
            raise
        if isinstance(decision, Outcome):
            distributed.broadcast(runner.context, ("skip", decision.run_id, decision.summary))
            return decision
        run_id, checkpoints = decision
        tracker = runner.tracker
        distributed.broadcast(runner.context, ("train", run_id))  # checkpoints are settled: ranks may read them
        stop = threading.Event()
        log = tracker.epoch_logger(run_id)

        def log_and_tell(metrics: dict, step: int) -> None:
            log(metrics, step)
            if lines:
                say(epoch_line(job.run_name, trainer.phase_at(step)[1], step, trainer.total_epochs, metrics))

        trainer = job.make_trainer(checkpoints, log_and_tell, stop)
        trainer.meta = {"mlflow_run_id": run_id, "run_key": job.run_key}
        lines = narrating(trainer.config.options.progress, runner.context.is_main)
        try:
            with stop_on_signals(stop), heartbeat(tracker, run_id):
                warn_if_loaded()
                if lines:
                    say(start_line(job.run_name, trainer.phases))
                summary = trainer.run()
            for step, metrics in enumerate(trainer.history):  # epochs a crash kept from the store
                log(metrics, step)
            job.on_success(trainer, run_id)
        except BaseException as e:
            end_failed(tracker, run_id, job.run_name, e)
        end_finished(tracker, run_id, summary, epochs=len(trainer.history))
        return Outcome(run_id, "FINISHED", summary)


def _decide(tracker, job: Job, force: bool, reuse_finished: bool, held: bool,
            run_dir) -> Outcome | tuple[str, CheckpointStore]:
    """Who trains this run: a local lock (processes of this machine, `held`), then the store (every
    worker that shares it; another worker's live claim raises Claimed). The FINISHED run to skip, or
    the MLflow run to train in (a new one, or an interrupted one taken over) and its checkpoints."""
    if not held:
        raise Claimed(job.run_key, "another process of this machine")
    runs = tracker.find(job.run_key)
    latest = runs[0] if runs else None
    if latest is not None and latest.info.status == "FINISHED" and reuse_finished and not force:
        return Outcome(latest.info.run_id, "SKIPPED", latest.data.metrics)
    if latest is not None and latest.data.tags.get("failure") == "non_finite_loss" and reuse_finished and not force:
        # a seeded run diverges again where it diverged: a result (the audit's 'diverged'), not retried
        raise TrainingFailed(f"{job.run_name}: diverged before ({latest.data.tags.get('failure_reason')}; MLflow run "
                             f"{latest.info.run_id}), not trained again; --force trains it again")
    live = next((r for r in runs if is_live(r)), None)
    if live is not None:
        raise Claimed(job.run_key, live.data.tags["worker"])
    checkpoints = CheckpointStore(run_dir / "checkpoints")
    if latest is not None and latest.info.status in ("RUNNING", "KILLED") and not force:
        run_id = latest.info.run_id  # its worker died or was stopped: take it over, resume
        tracker.reopen(run_id, claim_tags())
        time.sleep(TAKEOVER_PAUSE)
        if tracker.tag(run_id, "worker") != WORKER:  # another worker took it over after us
            raise Claimed(job.run_key, tracker.tag(run_id, "worker"))
    else:
        run_id = tracker.create(job.run_name, job.tags | {"run_key": job.run_key} | claim_tags())
        winner = first_claim(tracker.find(job.run_key))
        if winner is not None and winner.info.run_id != run_id:  # two workers raced; the first won
            tracker.withdraw(run_id)
            raise Claimed(job.run_key, winner.data.tags["worker"])
        checkpoints.clear()
        tracker.log_params(run_id, job.params())
        tracker.log_dict(run_id, job.config, "config.json")
    return run_id, checkpoints


def end_finished(tracker, run_id: str, summary: dict, epochs: int) -> None:
    """A run that trained to the end: its summary metrics, then FINISHED."""
    tracker.log_metrics(run_id, summary, step=epochs)
    tracker.finish(run_id, "FINISHED")


def end_failed(tracker, run_id: str, run_name: str, error: BaseException):
    """End the run FAILED (or KILLED when stopped: resumable) with the reason as tags; raise."""
    if isinstance(error, NonFiniteLoss):
        tracker.set_tags(run_id, {"failure": "non_finite_loss", "failure_reason": str(error),
                                  "failure_term": error.term, "failure_epoch": error.epoch, "failure_step": error.step})
        tracker.finish(run_id, "FAILED")
        raise TrainingFailed(f"{run_name}: {error}; MLflow run {run_id} marked FAILED") from None
    if isinstance(error, MethodFailed):
        tracker.set_tags(run_id, {"failure": "method_failed", "failure_reason": str(error)[:5000],
                                  "failure_epoch": error.epoch, "failure_step": error.step})
        tracker.finish(run_id, "FAILED")
        raise TrainingFailed(f"{run_name}: {error}; MLflow run {run_id} marked FAILED") from None
    if isinstance(error, Interrupted):
        tracker.set_tags(run_id, {"interrupted": str(error)})
        tracker.finish(run_id, "KILLED")
        raise error
    if isinstance(error, torch.OutOfMemoryError):
        tracker.set_tags(run_id, {"failure": "out_of_memory"})
        tracker.finish(run_id, "FAILED")
        raise UserError("out of memory: lower the recipe's batch_size or try --amp bf16") from None
    tracker.set_tags(run_id, {"failure": type(error).__name__, "failure_reason": str(error)[:5000]})
    tracker.finish(run_id, "FAILED")
    raise error


def _execute_follower(runner: Site, job: Job) -> Outcome:
    """A rank other than 0: train in step with rank 0, which decides, tracks and checkpoints."""
    decision, run_id, *metrics = distributed.broadcast(runner.context)
    if decision == "error":  # rank 0 failed before training: so does every rank, at once
        raise TrainingFailed(f"{job.run_name}: rank 0 failed before training ({run_id}); "
                             f"rank {runner.context.rank} stops too")
    if decision == "skip":
        return Outcome(run_id, "SKIPPED", metrics[0])
    stop = threading.Event()
    trainer = job.make_trainer(CheckpointStore(runner.home / "runs" / job.run_key / "checkpoints"),
                               lambda metrics, step: None, stop)
    try:
        with stop_on_signals(stop):
            summary = trainer.run()
    except (NonFiniteLoss, MethodFailed) as e:
        raise TrainingFailed(f"{job.run_name}: {e} (rank {runner.context.rank})") from None
    return Outcome(run_id, "FINISHED", summary)
