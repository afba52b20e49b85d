"""`harness teacher DATASET/MODEL --import FILE`: a RepDistiller checkpoint (built here from a replica
of RepDistiller's WRN-40-2, with its key names) becomes the cached teacher, identical to the
replica, recorded as an imported MLflow teacher run; a student run then reuses it untrained."""

import hashlib

import pytest
import timm
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

import harness.models  # noqa: F401  (registers the models)
from harness.cli import main
from replicas import WideResNet


def store(home):
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.fixture
def repdistiller_checkpoint(tmp_path):
    """A WRN-40-2 checkpoint as RepDistiller's train_teacher.py saves it, under its published file name."""
    torch.manual_seed(0)
    replica = WideResNet(40, 2).eval()
    with torch.no_grad():
        for name, tensor in replica.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif tensor.is_floating_point():
                tensor.normal_(0, 0.05)
    path = tmp_path / "wrn_40_2_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"epoch": 240, "model": replica.state_dict(), "best_acc": torch.tensor(75.61)}, path)
    return path, replica


def test_imported_repdistiller_teacher_is_the_replica_and_a_student_reuses_it(home, cifar_root, repdistiller_checkpoint,
                                                                              capsys):
    path, replica = repdistiller_checkpoint
    common = ["--smoke", "--no-progress", "--data-root", str(cifar_root)]
    # random weights: far from the stated 75.61%, refused in one line, nothing cached or recorded
    assert main(["teacher", "cifar100/wrn40_2", "--import", str(path), *common]) == 2
    err = capsys.readouterr().err
    assert "refused, off:" in err and "--accept-accuracy" in err and len(err.strip().splitlines()) == 1
    assert not (home / "teachers").exists() and not store(home)[1]

    assert main(["teacher", "cifar100/wrn40_2", "--import", str(path), "--accept-accuracy", *common]) == 0
    out, err = capsys.readouterr()
    assert "imported" in out and "stated 75.61%" in out
    assert "warning: imported teacher cifar100/wrn40_2 is off" in err and "--accept-accuracy" in err

    client, runs = store(home)
    (teacher,) = runs
    tags = teacher.data.tags
    assert teacher.info.status == "FINISHED" and tags["role"] == "teacher" and tags["imported"] == "true"
    assert tags["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "RepDistiller" in tags["import_source"] and tags["reference_check"].startswith("off")
    assert tags["accepted_accuracy"] == "true"
    assert "test_top1_last" in teacher.data.metrics

    cached = timm.create_model("cifar_wrn40_2", num_classes=100).eval()
    cached.load_state_dict(load_file(tags["teacher_file"]))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(cached(x), replica(x), atol=1e-5)

    assert main(["run", "--cell", "cifar100/wrn40_2-wrn16_2/kd", *common]) == 0
    _, runs = store(home)
    assert len([r for r in runs if r.data.tags["role"] == "teacher"]) == 1  # no teacher was trained
    (student,) = [r for r in runs if r.data.tags["role"] == "student"]
    assert student.info.status == "FINISHED" and student.data.params["teacher.key"] == tags["run_key"]

    # our own safetensors import too (as another seed's teacher; no published file: no accuracy to check)
    assert main(["teacher", "cifar100/wrn40_2", "--seed", "1", "--import", tags["teacher_file"], *common]) == 0
    assert "no stated accuracy" in capsys.readouterr().out
    # the cached teacher is not replaced without --force
    assert main(["teacher", "cifar100/wrn40_2", "--import", str(path), "--accept-accuracy", *common]) == 2
    assert "already cached" in capsys.readouterr().err
    # --force replaces it, and says which finished students distilled from the one it replaced
    assert main(["teacher", "cifar100/wrn40_2", "--import", str(path), "--force", "--accept-accuracy", *common]) == 0
    assert "1 finished student runs distilled from the teacher this replaced" in capsys.readouterr().err


def test_a_suites_teacher_lands_where_the_suites_cells_look(home, cifar_root, tmp_path, capsys):
    """resnet32x4 trains with the suite's teacher recipe there: --suite imports it under that key."""
    from replicas import ResNet

    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": ResNet(32, [32, 64, 128, 256]).state_dict()}, path)
    common = ["--smoke", "--no-progress", "--data-root", str(cifar_root)]
    assert main(["teacher", "cifar100/resnet32x4", "--suite", "crd_table1", "--import", str(path), "--accept-accuracy",
                 *common]) == 0
    _, (teacher,) = store(home)
    assert teacher.data.params["recipe_name"] == "cifar_repdistiller"


@pytest.mark.parametrize("target, content, name, expected", [
    ("cifar100/wrn40_2", b"not a checkpoint", "ckpt_epoch_240.pth", "cannot be read"),
    ("cifar100/wrn40_2", {"model": {"conv.weight": torch.zeros(1)}}, "ckpt_epoch_240.pth", "keys are not this model's"),
    ("cifar100/wrn40_2", {"epoch": 3}, "ckpt_epoch_240.pth", "holds no state dict"),
    ("imagenet/resnet34", {"conv1.weight": torch.zeros(1)}, "resnet34-b627a593.pth", "is not that of the published"),
    ("cifar100/wrn40_2", None, "missing.pth", "no such file"),
    ("cifar100/nope", {"a": torch.zeros(1)}, "x.pth", "unknown model"),
])
def test_bad_imports_are_one_line_errors(home, tmp_path, capsys, target, content, name, expected):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    assert main(["teacher", target, "--import", str(path), "--smoke", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not (home / "teachers").exists()
