"""Shared fixtures: an isolated runs home, CIFAR fixtures in CIFAR's own pickle layout, and
the real MNIST when it is present."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    """The default run hides GPUs, so a GPU machine runs the same suite as CI's CPU one; a run that
    selects the `cuda` tests (-m cuda) sees them. Set before any test initialises CUDA."""
    os.environ["KD_HARNESS_QUIET_LOAD"] = "1"  # the suite's own processes load the machine: no warning lines
    markexpr = config.getoption("markexpr") or ""
    if "cuda" not in markexpr.replace("not cuda", ""):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh runs home (MLflow store, teachers, checkpoints) for one test."""
    path = tmp_path / "home"
    monkeypatch.setenv("KD_HARNESS_HOME", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return path


def write_cifar100(root: Path, n_train: int = 6000, n_test: int = 200, seed: int = 0) -> Path:
    """A small CIFAR-100 in the layout torchvision reads: cifar-100-python/{train,test,meta},
    pickles with string keys, images as N x 3072 uint8 rows (R, G, B planes)."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 100, n)
        # class-dependent mean colour so a model can learn something
        data = (rng.integers(0, 64, (n, 3072)) + (labels[:, None] * 1.9).astype(np.int64)).clip(0, 255)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data.astype(np.uint8), "fine_labels": labels.tolist(),
                         "coarse_labels": (labels // 5).tolist(), "filenames": [f"{i}.png" for i in range(n)]}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)],
                     "coarse_label_names": [f"super{i}" for i in range(20)]}, f)
    return root


def write_cifar10(root: Path, n_per_batch: int = 1200, n_test: int = 200, seed: int = 0) -> Path:
    """A small CIFAR-10 in its own layout: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_per_batch
        labels = rng.integers(0, 10, n)
        data = (rng.integers(0, 64, (n, 3072)) + (labels[:, None] * 19).astype(np.int64)).clip(0, 255)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data.astype(np.uint8), "labels": labels.tolist(), "batch_label": name,
                         "filenames": [f"{i}.png" for i in range(n)]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": n_per_batch}, f)
    return root


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """CIFAR-100 and CIFAR-10 fixtures in one root, read through torchvision's real CIFAR100 and
    CIFAR10 classes. Tests (never the product) bypass their md5 check, which a fixture cannot match."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    return write_cifar10(write_cifar100(tmp_path / "data"))


@pytest.fixture
def cifar_zca_root(tmp_path, monkeypatch):
    """CIFAR fixtures large enough for the GCN + ZCA datasets' 10,000-image validation split
    (12,000 training images each), with the ZCA statistics cached in the test's own directory."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    monkeypatch.setenv("KD_HARNESS_CACHE", str(tmp_path / "cache"))
    return write_cifar10(write_cifar100(tmp_path / "data", n_train=12000), n_per_batch=2400)


@pytest.fixture
def mnist_root():
    """The real MNIST (KD_HARNESS_DATA or ../shared/data), or a skip saying where it was looked for."""
    for root in filter(None, [os.environ.get("KD_HARNESS_DATA"), str(SHARED_DATA)]):
        if (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
            return root
    pytest.skip(f"real MNIST not found under $KD_HARNESS_DATA or {SHARED_DATA}")


def write_image_folder(root: Path, classes: int, train_per_class: int, val_per_class: int, size: int = 40,
                       seed: int = 0) -> Path:
    """An ImageNet-style tree root/{train,val}/CLASS/*.png of small RGB images whose mean colour
    depends on the class, in the layout torchvision's ImageFolder reads."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = (rng.integers(0, 96, (size, size + 8, 3)) + (c * 150 // max(classes - 1, 1))).clip(0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{c}_{i}.png")
    return root
