"""ImageNet-style datasets: directories of image files (root/FOLDER/{train,val}/CLASS/*.jpg), read
with torchvision's ImageFolder and decoded by DataLoader workers, since they do not fit in memory.

The contract is the in-memory path's (harness.data.data.Batches): one epoch plan drawn from one
generator, a shard of every global batch per rank, uint8 images normalised on the device. Every
random choice of an image's augmentation is seeded by (the epoch's seed, the image's index), so
an epoch is still a pure function of the plan, and a run resumed mid-epoch sees the same crops.
Training: Inception-style random-resized crop and horizontal flip (Szegedy et al. 2015, as used
by fb.resnet; colour augmentation is not reproduced); evaluation: resize the shorter side to
eval_resize and center-crop img_size (the papers' "single center crop").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision.transforms import v2

from harness.data.data import SMOKE_SIZES, Batches, channel_stats, normalise, split_off_validation
from harness.errors import UserError
from harness.spec.schema import DatasetSpec


@dataclass
class FileSplit:
    files: list[str]
    labels: torch.Tensor  # int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> "FileSplit":
        return FileSplit([self.files[i] for i in indices.tolist()], self.labels[indices])

    def head(self, n: int) -> "FileSplit":
        return FileSplit(self.files[:n], self.labels[:n])

    def to(self, device) -> "FileSplit":
        return self  # files stay on disk; batches move


def _scan(path: Path) -> tuple[FileSplit, list[str]]:
    if not path.is_dir():
        raise UserError(f"image folder {path} not found; expected {path}/CLASS/IMAGE files "
                        f"(pass --data-root or set KD_HARNESS_DATA)")
    try:
        folder = datasets.ImageFolder(str(path))
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"cannot read image folder {path}: {e}") from None
    files, labels = zip(*folder.samples)
    return FileSplit(list(files), torch.tensor(labels, dtype=torch.int64)), folder.classes


@dataclass
class FolderData:
    name: str
    spec: DatasetSpec
    train: FileSplit
    val: FileSplit
    test: FileSplit
    split_fingerprint: str
    pixel_max: float = 255.0

    def merged_train(self) -> "FolderData":
        train = FileSplit(self.train.files + self.val.files, torch.cat([self.train.labels, self.val.labels]))
        return FolderData(self.name, self.spec, train, self.val, self.test, self.split_fingerprint)

    def batches(self, device: torch.device, splits: tuple[str, ...] = ("train", "val", "test"),
                shard: tuple[int, int] = (0, 1)) -> "FolderBatches":
        return FolderBatches(self, device, splits, shard)

    def probe_images(self, n: int) -> torch.Tensor:
        images = torch.stack([EvalImages(self.train, self.spec)[i][0] for i in range(n)])
        return normalise(images, self.pixel_max, channel_stats(self.spec, "cpu"))

    def params(self) -> dict:
        return {"data.train_size": len(self.train), "data.val_size": len(self.val), "data.test_size": len(self.test),
                "data.split_seed": self.spec.split_seed, "data.val_fingerprint": self.split_fingerprint,
                "data.augment": self.spec.augment, "data.folder": self.spec.folder}


def load_folder_data(name: str, spec: DatasetSpec, root: Path, smoke: bool = False) -> FolderData:
    """train/ gives the training and (held-out, seeded) validation images; val/ is the test split,
    as ImageNet papers report on the official validation set."""
    base = root / spec.folder
    pool, classes = _scan(base / "train")
    test, test_classes = _scan(base / "val")
    if len(classes) != spec.num_classes or test_classes != classes:
        raise UserError(f"datasets.{name}: {base} has {len(classes)} training classes and {len(test_classes)} "
                        f"validation classes; num_classes is {spec.num_classes} and both must match")
    train, val, test, fingerprint = split_off_validation(pool, test, name, spec)
    if smoke:
        train, val, test = (s.head(SMOKE_SIZES[k]) for k, s in (("train", train), ("val", val), ("test", test)))
    return FolderData(name, spec, train, val, test, fingerprint)


def _read(path: str):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


class EvalImages(Dataset):
    def __init__(self, split: FileSplit, spec: DatasetSpec):
        self.split = split
        self.transform = v2.Compose([v2.PILToTensor(), v2.Resize(spec.eval_resize or spec.img_size, antialias=True),
                                     v2.CenterCrop(spec.img_size)])

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.transform(_read(self.split.files[i])), self.split.labels[i]


class TrainImages(Dataset):
    """Item (i, epoch seed) = image i of the training split, augmented as that epoch draws it."""

    def __init__(self, split: FileSplit, spec: DatasetSpec):
        self.split = split
        self.augment = spec.augment != "none"
        self.crop = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(spec.img_size, antialias=True),
                                v2.RandomHorizontalFlip()])
        self.plain = EvalImages(split, spec).transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]):
        i, epoch_seed = key
        if not self.augment:
            return self.plain(_read(self.split.files[i])), self.split.labels[i]
        with torch.random.fork_rng(devices=[]):  # this image's crop in this epoch, whichever worker decodes it
            torch.manual_seed(epoch_seed * 10_000_019 + i)
            return self.crop(_read(self.split.files[i])), self.split.labels[i]


class PlanSampler:
    """The batches of the current epoch plan from a given step, as (image, epoch seed) keys: the
    main process sets them, so one persistent loader (its workers kept across epochs) serves
    every epoch and every resume."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.seed = 0

    def __iter__(self):
        return iter([[(i, self.seed) for i in batch] for batch in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


def default_workers() -> int:
    """Loader workers of this process: $KD_HARNESS_WORKERS, else the node's cores shared between
    torchrun's local ranks (LOCAL_WORLD_SIZE), at most 8 each."""
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return int(os.environ.get("KD_HARNESS_WORKERS", min(8, max(1, (os.cpu_count() or 1) // ranks_here))))


class FolderBatches(Batches):
    def __init__(self, data: FolderData, device: torch.device, splits: tuple[str, ...] = ("train", "val", "test"),
                 shard: tuple[int, int] = (0, 1)):
        super().__init__(data, device, splits, shard)
        self.spec = data.spec
        self.workers = default_workers()
        self._sampler = PlanSampler()
        self._train_loader = None  # opened on the first training batch, kept across epochs
        self._stream, self._next = None, None  # the epoch's iterator, and the (plan, step) it yields next

    def epoch_plan(self, batch_size: int, generator: torch.Generator) -> dict:
        """On the CPU: the order is read by the loader's sampler, never by the device."""
        n = len(self.splits["train"])
        return {"order": torch.randperm(n, generator=generator), "batch_size": batch_size,
                "seed": int(torch.randint(2**31 - 1, (1,), generator=generator))}

    def _loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda")

    def train_batch(self, plan: dict, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._next != (id(plan), step):  # a new epoch, or a resume mid-epoch: the loader starts at `step`
            if self._train_loader is None:
                self._train_loader = DataLoader(TrainImages(self.splits["train"], self.spec), batch_sampler=self._sampler,
                                                num_workers=self.workers, persistent_workers=self.workers > 0,
                                                pin_memory=self.device.type == "cuda")
            self._sampler.batches = [self.batch_indices(plan, s).tolist() for s in range(step, Batches.steps(plan))]
            self._sampler.seed = plan["seed"]
            self._stream = iter(self._train_loader)
        images, labels = next(self._stream)
        self._next = (id(plan), step + 1)
        return self._normalise(images.to(self.device, non_blocking=True)), labels.to(self.device, non_blocking=True)

    def eval_batches(self, split: str, batch_size: int):
        for images, labels in self._loader(EvalImages(self.splits[split], self.spec), batch_size):
            yield self._normalise(images.to(self.device, non_blocking=True)), labels.to(self.device)
