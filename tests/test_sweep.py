"""Optuna sweeps: a real study on digits, two workers on one study drawing different trials, the
grid covered exactly once, the test split never touched by a trial, one objective per study, and
bad input."""

import os
import subprocess
import sys

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

import harness.data.data
from harness.cli import main
from harness.spec.spec import DEFAULT_SPEC
from harness.tuning.study import make_sampler

CELL = "digits/resnet20-resnet8/lpl"


def runs(home, role=None):
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, max_results=1000)
    return [r for r in found if role is None or r.data.tags.get("role") == role]


@pytest.mark.long
def test_a_real_sweep_with_nested_runs_and_no_test_split(home, monkeypatch, capsys):
    moved = []
    original = harness.data.data.Batches.__init__

    def recording(self, data, device, splits=("train", "val", "test"), shard=(0, 1)):
        moved.append(tuple(splits))
        original(self, data, device, splits, shard)

    monkeypatch.setattr(harness.data.data.Batches, "__init__", recording)
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
    # running the command again resumes the same study: 2 more trials, new points, the same parent
    assert main(["sweep", "--cell", CELL, "--trials", "2", "--epochs", "2"]) == 0
    assert len(runs(home, "sweep")) == 1 and len(runs(home, "trial")) == 10
    (name,) = optuna.get_all_study_names(f"sqlite:///{home / 'optuna.db'}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{home / 'optuna.db'}")
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 10


def test_trial_draws_are_new_on_resume_and_repeat_on_a_fresh_study(tmp_path):
    """Trial n draws from (sampler seed, n): a second process on a study draws new points where one
    sampler seeded per process would repeat trial 0, and a fresh study repeats a fresh study."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"

    def objective(trial):
        return trial.suggest_float("gamma", 0.01, 10, log=True) + trial.suggest_int("k", 1, 16)

    def draws(storage, trials, seed=0, name="s"):
        study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler("tpe", seed),
                                    direction="maximize", load_if_exists=True)
        study.optimize(objective, n_trials=trials)
        return [tuple(sorted(t.params.items())) for t in study.trials]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    draws(url, 3)
    resumed = draws(url, 1)  # another process resuming the study, or a worker joining it
    assert len(set(resumed)) == 4
    assert draws(None, 4) == resumed  # a fresh study, same seed: the same trials
    assert draws(None, 4, seed=1) != resumed


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


@pytest.mark.long
def test_two_workers_share_one_study(home):
    _teacher(home)  # so both workers start on trials at once
    _workers(home, "sweep", "--cell", CELL, "--trials", "6", "--epochs", "1", "--pruner", "none",
             "--study", "shared")
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{home / 'optuna.db'}")
    assert len(study.trials) == 12 and len({t.number for t in study.trials}) == 12
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 12  # no worker repeats another's
    children = runs(home, "trial")
    assert len(children) == 12 and len({c.data.tags["trial"] for c in children}) == 12
    assert len(runs(home, "sweep")) == 1


@pytest.mark.long
def test_grid_points_run_exactly_once_across_workers(home, tmp_path):
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


def test_a_study_holds_one_objective(home, capsys):
    """Another --epochs is another objective: by default another study; a named study made at another
    budget is refused before anything trains or any run is made."""
    base = ["sweep", "--cell", CELL, "--trials", "1", "--pruner", "none", "--teacher-epochs", "1"]
    storage = f"sqlite:///{home / 'optuna.db'}"
    assert main(base + ["--epochs", "1"]) == 0
    assert main(base + ["--epochs", "2"]) == 0
    names = optuna.get_all_study_names(storage)
    assert len(names) == 2 and all(n.startswith("sweep-digits-resnet20-resnet8-lpl-") for n in names)
    assert len(runs(home, "sweep")) == 2
    one_epoch = next(n for n in names if optuna.load_study(study_name=n, storage=storage)
                     .user_attrs["objective"]["trial"]["recipe"]["epochs"] == 1)
    before = len(runs(home))
    capsys.readouterr()
    assert main(base + ["--epochs", "2", "--study", one_epoch]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"study '{one_epoch}' was made for another objective" in err, err
    assert "recipe.epochs 1 in the study, 2 here" in err
    assert len(runs(home)) == before and len(optuna.load_study(study_name=one_epoch, storage=storage).trials) == 1
    # the same objective joins its study under its name
    assert main(base + ["--epochs", "1", "--study", one_epoch]) == 0
    assert len(optuna.load_study(study_name=one_epoch, storage=storage).trials) == 2
    assert optuna.load_study(study_name=one_epoch, storage=storage).metric_names == ["val/top1 (best epoch)"]
    # a study that records no objective cannot be checked: refused too
    optuna.create_study(study_name="unrecorded", storage=storage).optimize(lambda t: t.suggest_float("k", 1, 2), 1)
    capsys.readouterr()
    assert main(base + ["--epochs", "1", "--study", "unrecorded"]) == 2
    assert "study 'unrecorded' records no objective" in capsys.readouterr().err


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
