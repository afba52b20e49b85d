"""Atomic, verified training checkpoints, and what a Trainer's checkpoint holds (`Checkpointing`).

Each checkpoint is written to a temporary file, fsynced and renamed into place; its sha256
goes into a sidecar written the same way afterwards. A checkpoint without a matching
sidecar (a crash between the two writes, a truncated or altered file) is never loaded: the
store warns and falls back to the previous one. Loading uses weights_only=True, so no code
is unpickled. A checkpoint holds the whole state of a Trainer, every random generator included, so
a resumed run continues bit-for-bit where it left off, mid-epoch included.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import warnings
from pathlib import Path

import numpy as np
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


class Checkpointing:
    """The Trainer's checkpointing (a part of harness/training/engine.py's Trainer): its state as a
    checkpoint holds it, restored on resume, and saved by rank 0 after every epoch and on a stop."""

    def state(self) -> dict:
        return {
            "epoch": self.epoch, "step": self.step,
            "student": self.student.state_dict(), "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(), "optimizer_phase": self.optimizer_phase,
            "extra_optimizers": [opt.state_dict() for opt in self.extra],
            "grad_scaler": self.scaler.state_dict(),
            "epoch_start_generator": self.epoch_start_generator,
            "torch_rng": torch.get_rng_state(),
            # the training device's generator only: a run resumes on a machine with fewer GPUs
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "python_rng": random.getstate(),
            "numpy_rng": _plain(np.random.get_state(legacy=False)),
            "history": self.history, "partial": self.partial, "meta": self.meta,
        }

    def restore(self, state: dict) -> None:
        self.epoch, self.step = state["epoch"], state["step"]
        self.student.load_state_dict(state["student"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer, self.optimizer_phase = self._new_optimizer(), state["optimizer_phase"]
        self.optimizer.load_state_dict(state["optimizer"])
        for opt, opt_state in zip(self.extra, state["extra_optimizers"]):
            opt.load_state_dict(opt_state)
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.epoch_start_generator = state["epoch_start_generator"]
        torch.set_rng_state(state["torch_rng"])
        if isinstance(state["cuda_rng"], torch.Tensor) and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        random.setstate(_as_tuple(state["python_rng"]))
        numpy_state = dict(state["numpy_rng"])
        numpy_state["state"] = dict(numpy_state["state"], key=np.asarray(numpy_state["state"]["key"], np.uint32))
        np.random.set_state(numpy_state)
        self.history, self.partial = state["history"], state["partial"]
        self.resumed = True

    def _save(self) -> None:
        if self.checkpoints is not None and self.context.is_main:
            self.checkpoints.save(self.state())


def _plain(value):
    """NumPy's RNG state with its arrays as lists, so weights_only loading accepts it."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value.tolist() if isinstance(value, np.ndarray) else value


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
