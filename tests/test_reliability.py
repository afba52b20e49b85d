"""Crash and resume, determinism, idempotent cells, guards.

These start real `harness` processes and kill them from outside with SIGKILL or SIGTERM, so
what is tested is what a pre-empted job on a cluster would see.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.training.checkpoint import CheckpointStore

pytestmark = pytest.mark.long  # processes that train, get killed and resume: minutes

CELL = "digits/resnet20-resnet8/kd"
EPOCHS = 8
ARGS = ["run", "--cell", CELL, "--epochs", str(EPOCHS), "--no-progress"]
EPOCH_KEYS = ["train/loss", "train/loss_ce", "train/loss_kd", "train/top1", "val/top1", "val/top5", "test/top1",
              "test/top5"]
SUMMARY_KEYS = ["test_top1_best_val", "test_top1_last", "test_top5_last", "best_val_epoch", "val_top1_best"]


def client(home: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{home / 'mlflow.db'}")


def student_runs(home: Path) -> list:
    c = client(home)
    experiments = [e.experiment_id for e in c.search_experiments()]
    return [r for r in c.search_runs(experiments) if r.data.tags.get("role") == "student"]


def record(home: Path) -> dict:
    """The one student run's per-epoch histories (each step once) and summary metrics."""
    (run,) = student_runs(home)
    assert run.info.status == "FINISHED"
    c = client(home)
    out = {"summary": {k: run.data.metrics[k] for k in SUMMARY_KEYS}}
    for key in EPOCH_KEYS:
        history = c.get_metric_history(run.info.run_id, key)
        steps = sorted(m.step for m in history)
        assert steps == list(range(EPOCHS)), f"{key}: steps {steps}"  # every epoch logged exactly once
        out[key] = [m.value for m in sorted(history, key=lambda m: m.step)]
    return out


def harness(home: Path, *args: str, wait: bool = True):
    env = dict(os.environ, KD_HARNESS_HOME=str(home))
    cmd = [sys.executable, "-m", "harness", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def teacher_home(tmp_path_factory) -> Path:
    """A home with the digits teacher trained, so each test starts straight on the student."""
    home = tmp_path_factory.mktemp("teacher_home")
    proc = harness(home, "teacher", "digits/resnet20", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return home


@pytest.fixture(scope="module")
def reference(teacher_home, tmp_path_factory) -> dict:
    """The uninterrupted run of the cell."""
    home = fresh_home(teacher_home, tmp_path_factory.mktemp("reference"))
    proc = harness(home, *ARGS)
    assert proc.returncode == 0, proc.stderr
    result = record(home)
    (run,) = student_runs(home)
    result["epoch_seconds"] = run.data.metrics["mean_epoch_seconds"]
    return result


def fresh_home(teacher_home: Path, path: Path) -> Path:
    shutil.copytree(teacher_home / "teachers", path / "teachers")
    return path


def checkpoints_of(home: Path) -> list[Path]:
    return sorted(home.glob("runs/*/checkpoints/ckpt-*.sha256"))


def wait_for_checkpoint(home: Path, proc, number: int, timeout: float = 120) -> float:
    """Wait until checkpoint `number` is on disk; when it appeared (time.monotonic)."""
    deadline = time.monotonic() + timeout
    while not any(p.name == f"ckpt-{number:06d}.sha256" for p in checkpoints_of(home)):
        assert proc.poll() is None, f"process ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.002)
    return time.monotonic()


def compare(result: dict, reference: dict) -> None:
    for key in EPOCH_KEYS + ["summary"]:
        assert result[key] == reference[key], key  # identical, not approximately equal


@pytest.mark.parametrize("after_epoch, fraction", [(1, 0.3), (3, 0.6), (5, 0.85)])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(teacher_home, reference, tmp_path, after_epoch, fraction):
    home = fresh_home(teacher_home, tmp_path)
    proc = harness(home, *ARGS, wait=False)
    # the epoch time of this very process (the machine's load may differ from the reference run's)
    previous = wait_for_checkpoint(home, proc, after_epoch - 2) if after_epoch > 1 else None
    reached = wait_for_checkpoint(home, proc, after_epoch - 1)
    epoch_seconds = reached - previous if previous is not None else reference["epoch_seconds"]
    # a load spike can stretch one measured epoch past the rest of the run: never wait longer than the
    # reference's epoch (killed later than meant is still mid-training; after the end is no test)
    epoch_seconds = min(epoch_seconds, reference["epoch_seconds"])
    time.sleep(fraction * epoch_seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    (run,) = student_runs(home)
    assert run.info.status == "RUNNING"  # SIGKILL leaves no chance to say otherwise
    on_disk = CheckpointStore(checkpoints_of(home)[-1].parent).load_latest()
    assert on_disk["step"] == 0 and after_epoch <= on_disk["epoch"] < EPOCHS  # killed mid-training
    resumed = harness(home, *ARGS)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from epoch {on_disk['epoch']}, step 0" in resumed.stderr, resumed.stderr
    assert "falling back" not in resumed.stderr
    compare(record(home), reference)


def test_sigterm_writes_a_mid_epoch_checkpoint_and_resumes_identically(teacher_home, reference, tmp_path):
    home = fresh_home(teacher_home, tmp_path)
    proc = harness(home, *ARGS, wait=False)
    wait_for_checkpoint(home, proc, 2)
    time.sleep(0.4 * reference["epoch_seconds"])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    (run,) = student_runs(home)
    assert run.info.status == "KILLED"
    state = CheckpointStore(checkpoints_of(home)[-1].parent).load_latest()
    assert state["step"] > 0, "the checkpoint should be mid-epoch"
    assert state["meta"]["mlflow_run_id"] == run.info.run_id
    resumed = harness(home, *ARGS)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from epoch {state['epoch']}, step {state['step']}" in resumed.stderr, resumed.stderr
    compare(record(home), reference)


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(teacher_home, reference, tmp_path):
    home = fresh_home(teacher_home, tmp_path)
    proc = harness(home, *ARGS, wait=False)
    wait_for_checkpoint(home, proc, 4)
    time.sleep(0.5 * reference["epoch_seconds"])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    previous, latest = sorted(home.glob("runs/*/checkpoints/ckpt-*.pt"))[-2:]
    previous_epoch = torch.load(previous, weights_only=True)["epoch"]
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    resumed = harness(home, *ARGS)
    assert resumed.returncode == 0, resumed.stderr
    assert "is corrupted (checksum mismatch); falling back to the previous one" in resumed.stderr
    assert f"resuming from epoch {previous_epoch}, step 0" in resumed.stderr  # the one before the corrupted
    compare(record(home), reference)  # the replayed epoch is logged once, with the same values


def test_truncated_checkpoint_is_never_loaded(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    store.save({"epoch": 1, "w": torch.ones(3)})
    store.save({"epoch": 2, "w": torch.ones(3) * 2})
    latest = sorted(tmp_path.glob("ckpt-*.pt"))[-1]
    latest.write_bytes(latest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="corrupted"):
        assert store.load_latest()["epoch"] == 1
    latest.with_suffix(".sha256").unlink()  # as if the process died between the two writes
    with pytest.warns(UserWarning, match="no checksum"):
        assert store.load_latest()["epoch"] == 1


def test_a_real_training_state_round_trips_through_weights_only_loading(home):
    """Every part of the trainer's state (RNGs included) loads with weights_only=True."""
    import warnings

    assert main(["run", "--cell", CELL, "--smoke", "--no-progress"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        states = [CheckpointStore(d).load_latest() for d in {p.parent for p in home.glob("runs/*/checkpoints/*.pt")}]
    assert len(states) == 2 and all(s is not None and s["epoch"] == 1 for s in states)


def test_same_cell_started_twice_at_once_trains_once(teacher_home, tmp_path):
    home = fresh_home(teacher_home, tmp_path)
    procs = [harness(home, *ARGS, wait=False) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    said = " ".join(out for out, _ in outputs)
    assert said.count("already finished") == 1 and said.count(": finished;") == 1
    assert len(student_runs(home)) == 1


def test_a_nan_loss_fails_the_run_with_its_reason(home, monkeypatch, capsys):
    import methods.kd

    calls = {"n": 0}
    real = methods.kd.kd_loss

    def poisoned(*args):
        calls["n"] += 1
        value = real(*args)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(methods.kd, "kd_loss", poisoned)
    assert main(["run", "--cell", CELL, "--smoke", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "loss term 'kd' became nan at epoch 0, step 2" in err and len(err.strip().splitlines()) == 1
    (run,) = student_runs(home)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"] == "non_finite_loss"
    assert (run.data.tags["failure_term"], run.data.tags["failure_step"]) == ("kd", "2")
    assert "test_top1_last" not in run.data.metrics and "val/top1" not in run.data.metrics

    # a diverged run is a result: run again, it is not retrained (one FAILED run), said in one line;
    # --force trains it again
    assert main(["run", "--cell", CELL, "--smoke", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "diverged before (loss term 'kd' became nan" in err and "--force trains it again" in err
    assert len(err.strip().splitlines()) == 1 and len(student_runs(home)) == 1
    calls["n"] = 0
    assert main(["run", "--cell", CELL, "--smoke", "--no-progress", "--force"]) == 1
    assert len(student_runs(home)) == 2


def test_cpu_runs_are_deterministic_in_process(home):
    """Two in-process runs of the same cell and seed (--force) give identical metrics."""
    args = ["run", "--cell", CELL, "--smoke", "--no-progress"]
    assert main(args) == 0 and main(args + ["--force"]) == 0
    first, second = sorted(student_runs(home), key=lambda r: r.info.start_time)
    assert first.info.run_id != second.info.run_id
    assert {k: first.data.metrics[k] for k in SUMMARY_KEYS} == {k: second.data.metrics[k] for k in SUMMARY_KEYS}
    assert first.data.metrics["train/loss"] == second.data.metrics["train/loss"]
    assert second.data.tags["deterministic"] == "strict"


def test_an_interrupted_teacher_resumes_in_its_own_run(tmp_path):
    """A teacher has no file until it finishes: its interrupted run is resumed from the checkpoint,
    not restarted in a new run (the retrain-when-the-file-is-gone rule is for FINISHED runs only)."""
    args = ["teacher", "digits/resnet20", "--epochs", "5", "--no-progress"]
    proc = harness(tmp_path, *args, wait=False)
    wait_for_checkpoint(tmp_path, proc, 0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    resumed = harness(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from epoch" in resumed.stderr, resumed.stderr
    c = client(tmp_path)
    teachers = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])
                if r.data.tags.get("role") == "teacher"]
    assert [r.info.status for r in teachers] == ["FINISHED"]
