"""Datasets, the fixed validation split, and device-side batching."""

import pytest
import torch

from harness.data.data import crop_flip
from harness.data.sources import load_data
from harness.errors import UserError
from harness.spec.spec import load_spec


@pytest.fixture(scope="module")
def spec():
    return load_spec()


def _ids(split):
    return {tuple(img.flatten().tolist()) + (int(lbl),) for img, lbl in zip(split.images, split.labels)}


def test_digits_split_is_fixed_and_disjoint(spec):
    a = load_data("digits", spec.datasets["digits"], root=None)
    b = load_data("digits", spec.datasets["digits"], root=None)
    assert (len(a.train), len(a.val), len(a.test)) == (1797 - 300 - 360, 300, 360)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert a.split_fingerprint == b.split_fingerprint
    # no image is in two splits (digits has a few exact duplicates, so compare by position)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    other = load_data("digits", spec.datasets["digits"].model_copy(update={"split_seed": 1}), root=None)
    assert other.split_fingerprint != a.split_fingerprint


def test_smoke_subsets(spec):
    data = load_data("digits", spec.datasets["digits"], root=None, smoke=True)
    assert (len(data.train), len(data.val), len(data.test)) == (256, 128, 128)


def test_mnist_split(spec, mnist_root):
    data = load_data("mnist", spec.datasets["mnist"], root=mnist_root)
    assert (len(data.train), len(data.val), len(data.test)) == (55000, 5000, 10000)
    assert data.train.images.shape[1:] == (1, 28, 28) and data.train.images.dtype == torch.uint8


def test_cifar_fixture_through_torchvision(spec, cifar_root):
    data = load_data("cifar100", spec.datasets["cifar100"].model_copy(update={"val_size": 1000}), root=cifar_root)
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (5000, 1000, 200)
    assert int(data.train.labels.max()) < 100


def test_missing_data_is_a_user_error(spec, tmp_path):
    with pytest.raises(UserError, match="not found.*--download"):
        load_data("cifar100", spec.datasets["cifar100"], root=tmp_path)
    with pytest.raises(UserError, match="MNIST"):
        load_data("mnist", spec.datasets["mnist"], root=tmp_path)


def test_crop_flip_matches_a_naive_per_image_version():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (6, 3, 8, 8), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 9, (6, 2), generator=g)
    flips = torch.tensor([True, False, True, False, False, True])
    out = crop_flip(images, offsets, flips)
    for i in range(6):
        padded = torch.zeros(3, 16, 16, dtype=torch.uint8)
        padded[:, 4:12, 4:12] = images[i]
        y, x = offsets[i].tolist()
        expected = padded[:, y:y + 8, x:x + 8]
        if flips[i]:
            expected = expected.flip(-1)
        assert torch.equal(out[i], expected)


def test_epoch_plan_is_a_function_of_the_generator_state(spec):
    data = load_data("digits", spec.datasets["digits"], root=None)
    batches = data.batches(torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    first = batches.epoch_plan(64, g)
    g.set_state(state)
    again = batches.epoch_plan(64, g)
    assert torch.equal(first["order"], again["order"])
    x1, y1 = batches.train_batch(first, 2)
    x2, y2 = batches.train_batch(again, 2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert abs(float(batches._normalise(data.train.images).mean())) < 0.1  # the yaml's mean/std fit
