"""ImageNet-style folders through the DataLoader path: the epoch is a pure function of its plan
(mid-epoch resumes see the same crops), ranks split every batch, bad folders are user errors,
and a cell trains end to end from a folder (a small dataset declared in a spec beside the real one)."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import write_image_folder
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.data.sources import load_data
from harness.errors import UserError
from harness.spec.spec import DEFAULT_SPEC, load_spec

TINY = {"source": "imagefolder", "folder": "tiny", "num_classes": 4, "in_chans": 3, "img_size": 32,
        "eval_resize": 36, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "val_size": 16,
        "augment": "resized_crop_flip", "recipe": "digits"}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """(spec file, data root): the repository's spec plus dataset `tiny`, and its folder."""
    monkeypatch.setenv("KD_HARNESS_WORKERS", "2")
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["datasets"]["tiny"] = TINY
    raw["pairs"]["resnet20-resnet8"]["datasets"].append("tiny")
    spec_file = tmp_path / "benchmarks.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    root = tmp_path / "data"
    write_image_folder(root / "tiny", classes=4, train_per_class=40, val_per_class=8)
    return spec_file, root


def _data(tiny):
    spec_file, root = tiny
    spec = load_spec(str(spec_file))
    return load_data("tiny", spec.datasets["tiny"], root)


def test_splits_and_fingerprint(tiny):
    data = _data(tiny)
    assert (len(data.train), len(data.val), len(data.test)) == (144, 16, 32)
    assert not set(data.train.files) & set(data.val.files)
    assert data.split_fingerprint == _data(tiny).split_fingerprint
    assert data.probe_images(2).shape == (2, 3, 32, 32)


def test_an_epoch_is_a_function_of_its_plan_and_resumes_mid_epoch(tiny):
    data = _data(tiny)
    plan = data.batches(torch.device("cpu")).epoch_plan(16, torch.Generator().manual_seed(3))
    sequential = data.batches(torch.device("cpu"))
    batches = [sequential.train_batch(plan, step) for step in range(5)]
    resumed = data.batches(torch.device("cpu"))  # a new process, starting at step 3
    x3, y3 = resumed.train_batch(plan, 3)
    assert torch.equal(x3, batches[3][0]) and torch.equal(y3, batches[3][1])
    assert not torch.equal(batches[0][0], batches[1][0])
    other = data.batches(torch.device("cpu")).epoch_plan(16, torch.Generator().manual_seed(4))
    assert not torch.equal(data.batches(torch.device("cpu")).train_batch(other, 0)[0], batches[0][0])
    x, y = batches[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and abs(x.mean().item()) < 3


def test_ranks_split_every_batch(tiny):
    data = _data(tiny)
    plan = data.batches(torch.device("cpu")).epoch_plan(16, torch.Generator().manual_seed(0))
    whole = data.batches(torch.device("cpu")).train_batch(plan, 2)
    halves = [data.batches(torch.device("cpu"), shard=(rank, 2)).train_batch(plan, 2) for rank in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), whole[0])
    assert torch.equal(torch.cat([h[1] for h in halves]), whole[1])


def test_evaluation_is_resize_and_center_crop(tiny):
    data = _data(tiny)
    batches = data.batches(torch.device("cpu"))
    (x1, y1), = [next(batches.eval_batches("test", 64))]
    (x2, _), = [next(data.batches(torch.device("cpu")).eval_batches("test", 64))]
    assert torch.equal(x1, x2) and len(y1) == 32  # deterministic, every test image


def test_missing_or_mismatched_folders_are_user_errors(tiny, tmp_path):
    spec_file, root = tiny
    spec = load_spec(str(spec_file))
    with pytest.raises(UserError, match="image folder .* not found"):
        load_data("tiny", spec.datasets["tiny"], tmp_path / "nowhere")
    wrong = spec.datasets["tiny"].model_copy(update={"num_classes": 5})
    with pytest.raises(UserError, match="num_classes is 5"):
        load_data("tiny", wrong, root)


def test_a_cell_trains_from_a_folder(tiny, home):
    spec_file, root = tiny
    args = ["--spec", str(spec_file), "run", "--cell", "tiny/resnet20-resnet8/kd", "--epochs", "2",
            "--teacher-epochs", "1", "--data-root", str(root), "--no-progress"]
    assert main(args) == 0
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.role = 'student'")
    (run,) = runs
    assert run.info.status == "FINISHED" and run.data.params["data.folder"] == "tiny"
    assert run.data.params["data.train_size"] == "144"
    assert len(client.get_metric_history(run.info.run_id, "test/top1")) == 2


def test_the_imagenet_suites_resolve():
    spec = load_spec()
    for suite in ("nst_table3", "lpl_table6"):
        cells = spec.cells(suite=suite)
        assert cells and all(c.dataset == "imagenet" for c in cells)
    assert spec.datasets["imagenet"].folder == "imagenet"


@pytest.mark.parametrize("change, message", [
    ({"folder": None}, "folder is required"),
    ({"augment": "crop_flip"}, "resized_crop_flip is the augmentation of imagefolder datasets"),
])
def test_folder_spec_errors(tmp_path, change, message):
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["datasets"]["tiny"] = {k: v for k, v in (TINY | change).items() if v is not None}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=message):
        load_spec(str(path))


def test_one_persistent_loader_serves_every_epoch(tiny, monkeypatch):
    """The training loader's workers start once: later epochs (and a resume within one) reuse them."""
    data = _data(tiny)
    batches = data.batches(torch.device("cpu"))
    plans = [batches.epoch_plan(16, torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    batches.train_batch(plans[0], 0)
    loader = batches._train_loader
    pids = [w.pid for w in loader._iterator._workers]
    for step in range(1, 4):
        batches.train_batch(plans[0], step)
    batches.train_batch(plans[1], 0)  # the next epoch
    batches.train_batch(plans[1], 5)  # a jump, as a resume makes
    assert batches._train_loader is loader and loader.persistent_workers
    assert [w.pid for w in loader._iterator._workers] == pids
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.delenv("KD_HARNESS_WORKERS")
    from harness.data.folder_data import default_workers

    assert default_workers() == min(8, max(1, (__import__("os").cpu_count() or 1) // 4))
