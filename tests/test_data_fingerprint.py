"""A run records the data it trained on (harness/data/fingerprint.py), and a finished run answers
only for that data: two CIFAR-100 copies that differ in one image are two datasets."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
from mlflow.tracking import MlflowClient

from conftest import write_cifar100
from harness.cli import main
from harness.data.fingerprint import MISSING, data_fingerprint
from harness.spec.spec import load_spec

CELL = "cifar100/resnet56-resnet20/baseline"


@pytest.fixture
def copies(tmp_path, monkeypatch):
    """A, an identical copy of A (files rewritten: new modification times), and A with one image changed."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    a = write_cifar100(tmp_path / "a", n_train=5600)
    same = tmp_path / "same"
    shutil.copytree(a, same)
    changed = tmp_path / "changed"
    shutil.copytree(a, changed)
    train = changed / "cifar-100-python" / "train"
    content = pickle.loads(train.read_bytes())
    content["data"][7, :10] ^= 0xFF  # one image, ten pixels
    train.write_bytes(pickle.dumps(content))
    return a, same, changed


def students(home):
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r for r in runs if r.data.tags.get("role") == "student"]


def test_the_fingerprint_is_of_the_content(copies, tmp_path):
    spec, a, same, changed = (load_spec().datasets["cifar100"], *copies)
    assert data_fingerprint(spec, a) == data_fingerprint(spec, same) != data_fingerprint(spec, changed)
    assert data_fingerprint(spec, tmp_path / "nothing") == MISSING
    assert data_fingerprint(load_spec().datasets["digits"], tmp_path) is None  # embedded: no copies


def test_a_finished_run_is_not_reused_for_another_copy_of_its_data(home, copies, capsys):
    a, same, changed = copies
    run = ["run", "--cell", CELL, "--smoke", "--no-progress", "--data-root"]
    assert main([*run, str(a)]) == 0
    (first,) = students(home)
    assert first.data.params["data.fingerprint"] == data_fingerprint(load_spec().datasets["cifar100"], a)
    capsys.readouterr()

    assert main([*run, str(same)]) == 0  # the same images in another folder: reused
    assert "already finished" in capsys.readouterr().out
    for other in (changed, a.parent / "nonexistent"):
        assert main([*run, str(other)]) == 2  # one image differs, or no data at all: refused before training
        err = capsys.readouterr().err.strip()
        assert "another copy" in err and first.info.run_id in err and len(err.splitlines()) == 1
    assert main([*run, str(a)]) == 0 and len(students(home)) == 1  # asked again (answered without MLflow)
    assert "already finished" in capsys.readouterr().out
    assert main([*run, str(changed)]) == 2  # still refused once the fast path knows the request

    assert main([*run, str(changed), "--force"]) == 0  # trained again, on this copy
    assert len(students(home)) == 2


def test_a_cached_teacher_is_not_used_with_another_copy_of_its_data(home, copies, capsys):
    a, same, changed = copies
    run = ["run", "--smoke", "--no-progress", "--data-root"]
    assert main([*run, str(a), "--cell", "cifar100/resnet56-resnet20/kd"]) == 0  # trains and caches the teacher
    capsys.readouterr()
    assert main([*run, str(changed), "--cell", "cifar100/resnet56-resnet20/at"]) == 2  # a new student, other data
    err = capsys.readouterr().err.strip()
    assert err.startswith("harness: error: teacher cifar100/resnet56 seed 0") and "another copy" in err
    assert len(err.splitlines()) == 1
    assert main([*run, str(same), "--cell", "cifar100/resnet56-resnet20/at"]) == 0  # the same images: the teacher serves
