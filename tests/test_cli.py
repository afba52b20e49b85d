"""End to end through the CLI: smoke cells per dataset kind, the MLflow record, bad input."""

import subprocess
import sys

from mlflow.tracking import MlflowClient

from harness.cli import build_parser, main

SUMMARY = ["test_top1_best_val", "test_top1_last", "test_top5_last", "mean_epoch_seconds", "extra_parameters",
           "student_parameters", "peak_memory_mb", "wall_seconds"]
EPOCH = ["train/loss_ce", "train/loss_kd", "train/loss", "train/top1", "val/top1", "val/top5", "test/top1",
         "test/top5", "epoch_seconds"]


def runs(home, status=None):
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r for r in found if status is None or r.info.status == status]


def test_digits_kd_run_is_fully_recorded(home, capsys):
    assert main(["run", "--cell", "digits/resnet20-resnet8/kd", "--smoke", "--no-progress"]) == 0
    assert "finished; test top-1" in capsys.readouterr().out
    students = [r for r in runs(home) if r.data.tags["role"] == "student"]
    teachers = [r for r in runs(home) if r.data.tags["role"] == "teacher"]
    assert len(students) == 1 and len(teachers) == 1
    run = students[0]
    assert run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("cell", "dataset", "teacher", "student", "method", "seed")} == {
        "cell": "digits/resnet20-resnet8/kd", "dataset": "digits", "teacher": "resnet20", "student": "resnet8",
        "method": "kd", "seed": "0"}
    assert "suite" in run.data.tags
    params = run.data.params
    assert params["method_params.kd.tau"] == "4.0" and params["recipe.lr"] == "0.05"
    assert params["recipe.epochs"] == "1" and params["smoke"] == "True"
    for key in ("env.git_commit", "env.torch", "env.device", "data.val_fingerprint", "teacher.key"):
        assert key in params
    assert set(SUMMARY + EPOCH) <= set(run.data.metrics)
    assert run.data.metrics["extra_parameters"] == 0
    assert run.data.metrics["student_parameters"] > 0
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.json", "model"]


def test_finished_cell_is_not_retrained_and_teacher_is_reused(home, capsys):
    args = ["run", "--cell", "digits/resnet20-resnet8/kd", "--smoke", "--no-progress"]
    assert main(args) == 0
    assert main(args) == 0
    assert "already finished" in capsys.readouterr().out
    assert len(runs(home)) == 2  # one teacher, one student
    assert main(["run", "--cell", "digits/resnet20-resnet8/baseline", "--smoke", "--no-progress"]) == 0
    assert len(runs(home)) == 3  # the baseline needs no teacher
    assert main(args + ["--force"]) == 0
    assert len([r for r in runs(home) if r.data.tags["role"] == "student"]) == 3


def test_cifar_fixture_smoke(home, cifar_root, capsys):
    assert main(["run", "--cell", "cifar100/resnet32-resnet14/kd", "--smoke", "--no-progress",
                 "--data-root", str(cifar_root)]) == 0
    (student,) = [r for r in runs(home, "FINISHED") if r.data.tags["role"] == "student"]
    assert student.data.params["data.train_size"] == "256"


def test_mnist_smoke(home, mnist_root):
    assert main(["run", "--cell", "mnist/hinton1200-hinton800/kd", "--smoke", "--no-progress",
                 "--data-root", mnist_root]) == 0
    assert len(runs(home, "FINISHED")) == 2


def test_teacher_command_caches(home, capsys):
    assert main(["teacher", "digits/resnet20", "--smoke", "--no-progress"]) == 0
    path = capsys.readouterr().out.strip().split(": ")[-1]
    assert path.endswith(".safetensors")
    assert main(["teacher", "digits/resnet20", "--smoke", "--no-progress"]) == 0
    assert len(runs(home)) == 1


def test_missing_data_and_bad_spec_through_a_real_process(home, tmp_path):
    cases = [
        (["run", "--cell", "mnist/hinton1200-hinton800/kd", "--data-root", str(tmp_path / "none")], "MNIST"),
        (["--spec", str(tmp_path / "missing.yaml"), "list"], "cannot read"),
    ]
    for argv, expected in cases:
        proc = subprocess.run([sys.executable, "-m", "harness", *argv], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_home_and_tracking_uri_go_before_or_after_the_subcommand(home, tmp_path):
    parse = build_parser().parse_args
    after = parse(["run", "--cell", "c", "--home", "/a", "--tracking-uri", "sqlite:////a/m.db"])
    assert (after.home, after.tracking_uri, after.spec) == ("/a", "sqlite:////a/m.db", None)
    assert parse(["--home", "/a", "run", "--cell", "c"]).home == "/a"
    assert parse(["--home", "/a", "report", "--suite", "s", "--home", "/b"]).home == "/b"  # the subcommand's wins
    other = tmp_path / "other"
    store = f"sqlite:///{other / 'store.db'}"
    assert main(["run", "--cell", "digits/resnet20-resnet8/baseline", "--smoke", "--no-progress",
                 "--home", str(other), "--tracking-uri", store]) == 0
    client = MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and other.is_dir() and not home.exists()  # $KD_HARNESS_HOME unused
