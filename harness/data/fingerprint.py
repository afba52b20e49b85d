"""What data a run trained on, as a short hash of the files its source reads, computed without
loading them as a dataset (and without torch): a run records it (`data.fingerprint`), and a
finished run is reused only for data with the same fingerprint, so that a cell trained on one copy
of CIFAR never answers for another. torchvision's files (MNIST, CIFAR: at most a few hundred MB)
are hashed by content; an image folder (ImageNet's 1.28 million files) by its file list and sizes,
which needs no image read. Embedded data (scikit-learn's digits) has none: it cannot differ by copy."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from harness.spec.schema import DatasetSpec

# the folder under the data root that torchvision's dataset classes read
TORCHVISION_FOLDERS = {"torchvision_mnist": "MNIST/raw", "torchvision_cifar10": "cifar-10-batches-py",
                       "torchvision_cifar100": "cifar-100-python"}
MISSING = "missing"  # no files where the source looks: never the fingerprint of a run that trained


def data_folder(spec: DatasetSpec, root: Path) -> Path | None:
    """The folder the dataset's files are read from; None for embedded data."""
    if spec.source == "imagefolder":
        return Path(root) / spec.folder
    folder = TORCHVISION_FOLDERS.get(spec.source)
    return Path(root) / folder if folder else None


def data_fingerprint(spec: DatasetSpec, root: Path) -> str | None:
    """sha256 prefix of the dataset's files under `root` ('missing' when there are none), or None for
    embedded data."""
    folder = data_folder(spec, root)
    if folder is None:
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        return MISSING
    listing = tuple((str(p.relative_to(folder)), *_size_and_time(p)) for p in files)
    return _hash(folder, listing, by_content=spec.source != "imagefolder")


def _size_and_time(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _hash(folder: Path, listing: tuple, by_content: bool) -> str:
    """Cached by the files' names, sizes and modification times: a changed file is hashed again."""
    sha = hashlib.sha256()
    for name, size, _ in listing:  # the times only key the cache: a copy of the same files matches
        sha.update(f"{name}\0{size}\0".encode())
        if by_content:
            with open(folder / name, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
    return sha.hexdigest()[:16]
