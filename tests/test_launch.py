"""Launching workers through submitit: the worker command, refusals before any job, and K local
workers splitting a digits suite (submitit's local executor; there is no SLURM here)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import pytest
from pathlib import Path

from mlflow.tracking import MlflowClient

from harness.running.launch import worker_argv
from harness.running.workshare import starting_order


def _harness(*args, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "harness", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _students(home: Path) -> list:
    if not (home / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r for r in runs if r.data.tags.get("role") == "student"]


def test_the_worker_command_drops_the_launcher_flags_and_names_the_store():
    argv = ["--spec", "x.yaml", "run", "--suite", "digits", "--launcher", "local", "--workers=3",
            "--cpus-per-task", "1", "--smoke"]
    assert worker_argv(argv, Path("/h"), "sqlite:////h/mlflow.db") == [
        "--spec", "x.yaml", "--home", "/h", "--tracking-uri", "sqlite:////h/mlflow.db",
        "run", "--suite", "digits", "--smoke"]


def test_workers_start_at_different_places_of_a_suite(monkeypatch):
    monkeypatch.delenv("KD_HARNESS_WORKER", raising=False)
    assert starting_order(3) == [0, 1, 2]
    for place, order in (("0/2", [0, 1, 2, 3, 4, 5, 6]), ("1/2", [3, 4, 5, 6, 0, 1, 2]),
                         ("2/3", [4, 5, 6, 0, 1, 2, 3])):
        monkeypatch.setenv("KD_HARNESS_WORKER", place)
        assert starting_order(7) == order
    assert starting_order(0) == []


def test_impossible_launches_are_refused_before_any_run(home):
    env = os.environ | {"KD_HARNESS_HOME": str(home), "PATH": os.path.dirname(sys.executable)}  # no sbatch
    for flags, message in ((["--launcher", "local", "--workers", "0"], "--workers must be a positive"),
                           (["--launcher", "slurm"], "no `sbatch`")):
        result = _harness("run", "--suite", "digits", "--smoke", *flags, env=env)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-1000:]
        assert len(result.stderr.strip().splitlines()) == 1
    result = _harness("sweep", "--cell", "digits/resnet20-resnet8/kd", "--trials", "2", "--smoke",
                      "--storage", "bogus://x", "--launcher", "local", env=env)
    assert result.returncode == 2 and "storage" in result.stderr, result.stderr[-1000:]
    assert _students(home) == [] and not list(home.glob("submitit/*"))


@pytest.mark.long
def test_local_workers_split_a_suite_and_train_each_run_once(home):
    env = os.environ | {"KD_HARNESS_HOME": str(home)}
    teacher = _harness("teacher", "digits/resnet20", "--smoke", "--no-progress", env=env)
    assert teacher.returncode == 0, teacher.stderr[-2000:]
    seconds, trained = {}, {}
    # A smoke cell trains in 0.3 s and a worker takes ~9 s to start: at 25 epochs (~7 s a run) the second
    # worker, which starts at run 3 of 7 (workshare.starting_order), is on its first run long before the first
    # worker could have finished four, so sharing, not start-up jitter, decides who trains what
    for workers, seed in ((1, 0), (2, 1)):  # one worker, then two, on the same cells (new seeds)
        start = time.perf_counter()
        result = _harness("run", "--suite", "digits", "--smoke", "--epochs", "25", "--no-progress", "--seed",
                          str(seed), "--launcher", "local", "--workers", str(workers), env=env)
        seconds[workers] = time.perf_counter() - start
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        per_worker = [set() for _ in range(workers)]
        for block, text in enumerate(result.stdout.split("--- worker ")[1:]):
            per_worker[block] = {line.split(":")[0] for line in text.splitlines() if ": finished;" in line}
        trained[workers] = per_worker
    cells = 7
    one, two = trained[2]
    assert len(one | two) == cells and not one & two  # each run trained once
    assert one and two  # both workers trained: neither only waited
    students = _students(home)
    assert len(students) == 2 * cells and all(r.info.status == "FINISHED" for r in students)
    print(f"\nwall time, 2 workers / 1 worker: {seconds[2]:.0f} s / {seconds[1]:.0f} s = "
          f"{seconds[2] / seconds[1]:.2f} on {os.cpu_count()} cores")


@pytest.mark.long
def test_sweep_workers_share_one_study(home):
    import optuna

    env = os.environ | {"KD_HARNESS_HOME": str(home)}
    result = _harness("sweep", "--cell", "digits/resnet20-resnet8/kd", "--trials", "2", "--smoke", "--pruner",
                      "none", "--study", "launched", "--launcher", "local", "--workers", "2", env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    study = optuna.load_study(study_name="launched", storage=f"sqlite:///{home / 'optuna.db'}")
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert result.stdout.count("--- worker") == 2
