"""A dataset's splits from its source (`load_data`): scikit-learn's digits and torchvision's MNIST
and CIFAR held in memory, or image folders (harness/data/folder_data.py) read through a DataLoader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.data.data import SMOKE_SIZES, Data, Split, split_off_validation
from harness.errors import UserError
from harness.spec.schema import DatasetSpec


def load_data(name: str, spec: DatasetSpec, root: Path, download: bool = False, smoke: bool = False):
    """A dataset's train/val/test splits: in memory (digits, MNIST, CIFAR), or as file lists
    read through a DataLoader (imagefolder: ImageNet-style directories)."""
    if spec.source == "imagefolder":
        from harness.data.folder_data import load_folder_data  # torchvision's image stack only when needed

        return load_folder_data(name, spec, root, smoke)
    if spec.source == "sklearn_digits":
        pool, test, pixel_max = _load_digits()
    else:
        pool, test, pixel_max = _load_torchvision(spec.source, root, download)
    if spec.noise_std > 0:  # TCIFAR-style data: each image distorted once, from a fixed seed
        noise = torch.Generator().manual_seed(spec.noise_seed)
        pool, test = (Split(add_noise(s.images, spec.noise_std * pixel_max, noise), s.labels) for s in (pool, test))
    train, val, test, fingerprint = split_off_validation(pool, test, name, spec)
    if spec.train_size is not None:
        train = stratified_head(train, spec.train_size, spec.num_classes, spec.split_seed, name)
    whitened = ""
    if spec.preprocess == "gcn_zca":  # statistics from the training split only
        from harness.data.preprocess import gcn_zca

        (train_x, val_x, test_x), whitened = gcn_zca(name, train.images, [val.images, test.images])
        train, val, test = Split(train_x, train.labels), Split(val_x, val.labels), Split(test_x, test.labels)
    if smoke:  # the splits were permuted by index above, so a head is a fair sample
        train, val, test = (s.head(SMOKE_SIZES[k]) for k, s in (("train", train), ("val", val), ("test", test)))
    return Data(name, spec, train, val, test, pixel_max, fingerprint, whitened)


def _load_digits() -> tuple[Split, None, float]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)  # values 0..16
    return Split(images, torch.from_numpy(bunch.target.astype(np.int64))), None, 16.0


def _load_torchvision(source: str, root: Path, download: bool) -> tuple[Split, Split, float]:
    import torchvision.datasets as tvd

    cls = {"torchvision_mnist": tvd.MNIST, "torchvision_cifar10": tvd.CIFAR10,
           "torchvision_cifar100": tvd.CIFAR100}[source]
    splits = []
    for train in (True, False):
        try:
            ds = cls(root=str(root), train=train, download=download)
        except RuntimeError as e:
            raise UserError(f"{cls.__name__} files not found or corrupted under {root} ({e}); "
                            f"put torchvision's layout there, pass --data-root or set KD_HARNESS_DATA, "
                            f"or add --download where the internet is reachable") from None
        except OSError as e:
            raise UserError(f"cannot read {cls.__name__} under {root}: {e}") from None
        images = torch.as_tensor(np.asarray(ds.data))
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        splits.append(Split(images.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)))
    return splits[0], splits[1], 255.0


def stratified_head(split: Split, size: int, num_classes: int, seed: int, name: str) -> Split:
    """`size` training images, as equal a share per class as `size` allows, drawn with `seed`;
    kept in their original order."""
    if size > len(split):
        raise UserError(f"datasets.{name}.train_size={size} exceeds the {len(split)} training images")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    labels = split.labels[order]
    # rank of each image within its class, in the permuted order; take the lowest ranks first
    rank = torch.empty_like(order)
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        rank[members] = torch.arange(len(members))
    chosen = order[torch.argsort(rank * num_classes + labels, stable=True)[:size]]
    return split.subset(chosen.sort().values)


def add_noise(images: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """images + N(0, std^2) per pixel (std in stored pixel units), rounded and clipped to uint8."""
    noisy = images.float() + std * torch.randn(images.shape, generator=generator)
    return noisy.round().clamp(0, 255).to(torch.uint8)


