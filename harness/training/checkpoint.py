"""Atomic, verified training checkpoints.

Each checkpoint is written to a temporary file, fsynced and renamed into place; its sha256
goes into a sidecar written the same way afterwards. A checkpoint without a matching
sidecar (a crash between the two writes, a truncated or altered file) is never loaded: the
store warns and falls back to the previous one. Loading uses weights_only=True, so no code
is unpickled.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import torch


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointStore:
    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory)
        self.keep = keep

    def _checkpoints(self) -> list[Path]:
        return sorted(self.directory.glob("ckpt-*.pt"))

    def save(self, state: dict) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = self._checkpoints()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        path = self.directory / f"ckpt-{number:06d}.pt"
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        atomic_write(path, data)
        atomic_write(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())
        for old in existing[: max(0, len(existing) + 1 - self.keep)]:
            old.unlink(missing_ok=True)
            old.with_suffix(".sha256").unlink(missing_ok=True)
        return path

    def load_latest(self) -> dict | None:
        for path in reversed(self._checkpoints()):
            problem = self._verify(path)
            if problem is None:
                try:
                    return torch.load(path, map_location="cpu", weights_only=True)
                except Exception as e:  # a verified file that still does not load: report, fall back
                    problem = f"cannot be loaded ({type(e).__name__}: {e})"
            warnings.warn(f"checkpoint {path} {problem}; falling back to the previous one", stacklevel=2)
        return None

    @staticmethod
    def _verify(path: Path) -> str | None:
        sidecar = path.with_suffix(".sha256")
        if not sidecar.exists():
            return "has no checksum (interrupted while saving?)"
        if hashlib.sha256(path.read_bytes()).hexdigest() != sidecar.read_text().strip():
            return "is corrupted (checksum mismatch)"
        return None

    def clear(self) -> None:
        for path in self.directory.glob("ckpt-*"):
            path.unlink()
