"""Optuna sweeps: a real study on digits, two workers on one study, the grid covered exactly
once, the test split never touched by a trial, and bad input."""

import os
import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

import harness.data
from harness.cli import main
from harness.spec import DEFAULT_SPEC

CELL = "digits/resnet20-resnet8/lpl"


def runs(home, role=None):
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, max_results=1000)
    return [r for r in found if role is None or r.data.tags.get("role") == role]


def test_a_real_sweep_with_nested_runs_and_no_test_split(home, monkeypatch, capsys):
    moved = []
    original = harness.data.Batches.__init__

    def recording(self, data, device, splits=("train", "val", "test"), shard=(0, 1)):
        moved.append(tuple(splits))
        original(self, data, device, splits, shard)

    monkeypatch.setattr(harness.data.Batches, "__init__", recording)
    assert main(["sweep", "--cell", CELL, "--trials", "8", "--epochs", "2", "--pruner", "median",
                 "--final-seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("trial ") >= 8 and "best val top-1" in out and "retrained on train+val" in out
    (parent,) = runs(home, "sweep")
    children = runs(home, "trial")
    assert len(children) == 8
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    states = {c.data.tags["state"]: c.info.status for c in children}
    assert set(states) <= {"complete", "pruned", "failed"} and "complete" in states
    assert all({"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}[c.data.tags["state"]]
               == c.info.status for c in children)
    assert all("test/top1" not in c.data.metrics and "test_top1_last" not in c.data.metrics for c in children)
    # the teacher (trained before the study) and the final retraining are the only users of test;
    # the 8 trials between them moved only train and val
    teacher_moves, trial_moves, final_moves = moved[0], moved[1:-1], moved[-1]
    assert teacher_moves == final_moves == ("train", "val", "test")
    assert trial_moves == [("train", "val")] * 8
    (final,) = [r for r in runs(home, "student") if r.data.tags.get("from_sweep")]
    assert final.data.params["train_on"] == "train+val" and "test_top1_last" in final.data.metrics
    assert "val_top1_best" not in final.data.metrics  # validation was trained on: no selection by it
    assert parent.info.status == "FINISHED" or runs(home, "sweep")[0].info.status == "FINISHED"
    parent = runs(home, "sweep")[0]
    assert {"best_val_top1", "trials_complete", "trials_pruned"} <= set(parent.data.metrics)
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "optimization_history.png"} <= artifacts
    assert parent.data.params["sampler"] == "tpe" and parent.data.params["pruner"] == "median"
    # running the command again resumes the same study: 8 more trials, the same parent
    assert main(["sweep", "--cell", CELL, "--trials", "2", "--epochs", "2"]) == 0
    assert len(runs(home, "sweep")) == 1 and len(runs(home, "trial")) == 10


def _workers(home, *args, n=2):
    env = dict(os.environ, KD_HARNESS_HOME=str(home))
    cmd = [sys.executable, "-m", "harness", *args]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    outputs = [p.communicate(timeout=900) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0] * n, [f"exit {c}: ...{err[-1500:]}" for c, (_, err) in zip(codes, outputs)]
    return outputs


def _teacher(home):
    env = dict(os.environ, KD_HARNESS_HOME=str(home))
    subprocess.run([sys.executable, "-m", "harness", "teacher", "digits/resnet20", "--no-progress"], env=env,
                   check=True, capture_output=True)


def test_two_workers_share_one_study(home):
    import optuna

    _teacher(home)  # so both workers start on trials at once
    _workers(home, "sweep", "--cell", CELL, "--trials", "6", "--epochs", "1", "--pruner", "none",
             "--study", "shared")
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{home / 'optuna.db'}")
    assert len(study.trials) == 12 and len({t.number for t in study.trials}) == 12
    children = runs(home, "trial")
    assert len(children) == 12 and len({c.data.tags["trial"] for c in children}) == 12
    assert len(runs(home, "sweep")) == 1


def test_grid_points_run_exactly_once_across_workers(home, tmp_path):
    import optuna

    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["grids"]["tiny"] = {"method": "lpl", "grid": {"k": [1, 2], "gamma": [0.1, 1.0]}, "source": "test"}
    spec = tmp_path / "benchmarks.yaml"
    spec.write_text(yaml.safe_dump(raw))
    _teacher(home)
    _workers(home, "--spec", str(spec), "sweep", "--cell", CELL, "--trials", "10", "--epochs", "1",
             "--grid", "tiny", "--pruner", "none", "--study", "grid")
    study = optuna.load_study(study_name="grid", storage=f"sqlite:///{home / 'optuna.db'}")
    points = sorted((t.params["k"], t.params["gamma"]) for t in study.trials)
    assert points == [(1, 0.1), (1, 1.0), (2, 0.1), (2, 1.0)]
    assert all(t.state.name == "COMPLETE" for t in study.trials)


@pytest.mark.parametrize("argv, expected", [
    (["--space", "beta=float:1:2"], "no such hyperparameter"),
    (["--space", "gamma=float:5:1"], "empty or inverted"),
    (["--space", "gamma=float:0:1:log"], "LOW > 0"),
    (["--space", "gamma=double:0:1"], "float, int or cat"),
    (["--space", "kd.tau=float:1:2"], "not part of"),
    (["--sampler", "cmaes"], "invalid choice"),
    (["--pruner", "always"], "invalid choice"),
    (["--sampler", "grid"], "needs --grid"),
    (["--grid", "nope"], "unknown grid"),
    (["--storage", "postgresql+psycopg2://u@127.0.0.1:9/x"], "not usable"),
    (["--storage", "nosuch://x"], "not usable"),
    (["--trials", "0"], "--trials"),
])
def test_sweep_user_errors(home, capsys, argv, expected):
    base = ["sweep", "--cell", CELL, "--trials", "1", "--epochs", "1"]
    if "--trials" in argv:
        base = ["sweep", "--cell", CELL, "--epochs", "1"]
    try:
        code = main(base + argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1, err
    assert not runs(home) if (home / "mlflow.db").exists() else True  # no trial, and no teacher trained first
