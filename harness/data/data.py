"""The data contract: splits, the fixed train/validation split, and device-side batching.

Small datasets (digits, MNIST, CIFAR) are held as uint8 tensors on the training device.
Every epoch draws all of its randomness (sample order, crop offsets, flips) at its start
from one torch.Generator, so an epoch is a pure function of that generator's state: a run
resumed mid-epoch replays exactly the batches it would have seen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from harness.errors import UserError
from harness.spec.schema import DatasetSpec

SMOKE_SIZES = {"train": 256, "val": 128, "test": 128}
CROP_PADDING = 4


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> "Split":
        return Split(self.images[:n], self.labels[:n])

    def subset(self, indices: torch.Tensor) -> "Split":
        return Split(self.images[indices], self.labels[indices])

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Data:
    name: str
    spec: DatasetSpec
    train: Split
    val: Split
    test: Split
    pixel_max: float
    split_fingerprint: str  # sha256 prefix of the validation indices, logged with every run
    preprocess_fingerprint: str = ""  # sha256 prefix of the ZCA matrix, when the dataset is whitened

    def merged_train(self) -> "Data":
        """Train on train + validation (a sweep's final retraining); validation stays only for reference."""
        train = Split(torch.cat([self.train.images, self.val.images]), torch.cat([self.train.labels, self.val.labels]))
        return Data(self.name, self.spec, train, self.val, self.test, self.pixel_max, self.split_fingerprint,
                    self.preprocess_fingerprint)

    def batches(self, device: torch.device, splits: tuple[str, ...] = ("train", "val", "test"),
                shard: tuple[int, int] = (0, 1)) -> "Batches":
        return Batches(self, device, splits, shard)

    def probe_images(self, n: int) -> torch.Tensor:
        """The first n training images, normalised: what a model sees (for shape probes)."""
        return normalise(self.train.images[:n], self.pixel_max, channel_stats(self.spec, "cpu"))

    def params(self) -> dict:
        return {"data.train_size": len(self.train), "data.val_size": len(self.val), "data.test_size": len(self.test),
                "data.split_seed": self.spec.split_seed, "data.val_fingerprint": self.split_fingerprint,
                "data.augment": self.spec.augment, "data.preprocess": self.spec.preprocess,
                "data.preprocess_fingerprint": self.preprocess_fingerprint}


def channel_stats(spec: DatasetSpec, device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(spec.mean, device=device).view(1, -1, 1, 1),
            torch.tensor(spec.std, device=device).view(1, -1, 1, 1))


def normalise(images: torch.Tensor, pixel_max: float, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """uint8 pixels -> (x / pixel_max - mean) / std; float images were preprocessed already (GCN + ZCA)."""
    if images.is_floating_point():
        return images
    mean, std = stats
    return (images.float() / pixel_max - mean) / std


def split_off_validation(pool, test, name: str, spec: DatasetSpec):
    """(train, val, test, fingerprint): the fixed, seeded validation split (and a test split where the
    source has none). Splits are anything with `len` and `subset(indices)`."""
    generator = torch.Generator().manual_seed(spec.split_seed)
    if test is None:  # no official test split: carve one, with the split seed
        if spec.test_size is None or spec.test_size + spec.val_size >= len(pool):
            raise UserError(f"datasets.{name}: set test_size, and leave training data after val_size and test_size")
        order = torch.randperm(len(pool), generator=generator)
        test_idx, order = order[:spec.test_size].sort().values, order[spec.test_size:]
        test, pool = pool.subset(test_idx), pool.subset(order.sort().values)
    if spec.val_size >= len(pool):
        raise UserError(f"datasets.{name}.val_size={spec.val_size} leaves no training data ({len(pool)} images)")
    order = torch.randperm(len(pool), generator=generator)
    val_idx, train_idx = order[:spec.val_size].sort().values, order[spec.val_size:].sort().values
    fingerprint = hashlib.sha256(val_idx.numpy().tobytes()).hexdigest()[:12]
    return pool.subset(train_idx), pool.subset(val_idx), test, fingerprint


class Batches:
    """Normalised (and for training, augmented) batches from a device-resident split."""

    def __init__(self, data: Data, device: torch.device, splits: tuple[str, ...] = ("train", "val", "test"),
                 shard: tuple[int, int] = (0, 1)):
        """Only the named splits are moved to the device (a sweep trial never touches "test").

        shard = (rank, world size): this process trains on its contiguous 1/world-size of every batch.
        """
        self.device = device
        self.shard = shard
        self.pixel_max = data.pixel_max
        self.stats = channel_stats(data.spec, device)
        self.augment = data.spec.augment
        self.splits = {name: getattr(data, name).to(device) for name in splits}

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return normalise(images, self.pixel_max, self.stats)

    def epoch_plan(self, batch_size: int, generator: torch.Generator) -> dict:
        """Everything random about one training epoch, drawn at once from `generator` (on the CPU,
        so that every device draws the same plan) and moved to the device once: the steps then
        slice it there, with no host-to-device copy per batch."""
        n = len(self.splits["train"])
        plan = {"order": torch.randperm(n, generator=generator)}
        if self.augment == "crop_flip":
            plan["offsets"] = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=generator)
            plan["flips"] = torch.rand(n, generator=generator) < 0.5
        return {k: v.to(self.device, non_blocking=True) for k, v in plan.items()} | {"batch_size": batch_size}

    @staticmethod
    def steps(plan: dict) -> int:
        return len(plan["order"]) // plan["batch_size"]  # drop the last partial batch, as in most recipes

    def _slice(self, plan: dict, step: int) -> slice:
        """This shard's part of batch `step` in the epoch plan."""
        rank, world_size = self.shard
        per_rank = plan["batch_size"] // world_size
        start = step * plan["batch_size"] + rank * per_rank
        return slice(start, start + per_rank)

    def batch_indices(self, plan: dict, step: int) -> torch.Tensor:
        """Positions in the training split of this shard's images of batch `step`."""
        return plan["order"][self._slice(plan, step)]

    def train_batch(self, plan: dict, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        sl = self._slice(plan, step)
        idx = plan["order"][sl]
        split = self.splits["train"]
        images, labels = split.images[idx], split.labels[idx]
        if self.augment == "crop_flip":
            images = crop_flip(images, plan["offsets"][sl], plan["flips"][sl])
        return self._normalise(images), labels

    def eval_batches(self, split: str, batch_size: int):
        data = self.splits[split]
        for start in range(0, len(data), batch_size):
            yield self._normalise(data.images[start:start + batch_size]), data.labels[start:start + batch_size]


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Batched random crop from a zero-padded image, then horizontal flip (He et al. 2016).

    offsets: (N, 2) top-left corners in the padded image; flips: (N,) bool.
    """
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (CROP_PADDING,) * 4)
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # N x H
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # N x W
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
