"""What a run records about where it ran: code version, packages, device, threads."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from harness import __version__


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_state(repo: Path = Path(__file__).resolve().parents[2]) -> tuple[str, bool]:
    """HEAD's commit, and whether the code differs from it: a changed tracked file, or a new file (not
    ignored) among the code a run executes (harness/, methods/, benchmarks.yaml; a new methods/x.py
    runs without being committed). New results or docs do not count.
    A copied tree without .git (the lent GPU machine) states it instead: $KD_HARNESS_COMMIT, else the
    COMMIT file scripts/gpu_carry.sh writes ("<sha>" or "<sha>+dirty")."""
    stated = os.environ.get("KD_HARNESS_COMMIT", "").strip()
    if not stated and not (repo / ".git").exists() and (repo / "COMMIT").is_file():
        stated = (repo / "COMMIT").read_text().strip()
    if stated:
        return stated.removesuffix("+dirty"), stated.endswith("+dirty")

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no")
                     or git("ls-files", "--others", "--exclude-standard", "--", "harness", "methods",
                            "benchmarks.yaml"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", False
    return commit, dirty


# read once, when the code is loaded: a long suite keeps running the code it started with, whatever
# is committed meanwhile
GIT_COMMIT, GIT_DIRTY = _git_state()


def environment_params(device: torch.device) -> dict:
    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "absent"

    return {
        "env.git_commit": GIT_COMMIT, "env.git_dirty": GIT_DIRTY, "env.harness": __version__,
        "env.python": platform.python_version(), "env.torch": torch.__version__,
        "env.timm": version("timm"), "env.mlflow": version("mlflow"), "env.torchvision": version("torchvision"),
        "env.device": str(device),
        "env.device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "env.threads": torch.get_num_threads(),
    } | cuda_params(device)


def nvidia_smi(*query: str) -> list[str]:
    """Lines nvidia-smi prints for a query (none where it is absent or fails)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.strip().splitlines() if out.returncode == 0 else []


def cuda_params(device: torch.device) -> dict:
    """The CUDA stack a run used: torch's CUDA build, cuDNN, NCCL, the driver and the GPUs visible."""
    on_cuda = device.type == "cuda"
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if on_cuda and torch.distributed.is_nccl_available() else "unused"
    return {
        "env.cuda_build": torch.version.cuda or "none",
        "env.cudnn": torch.backends.cudnn.version() if on_cuda else "unused",
        "env.nccl": nccl,
        "env.driver": (nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader") or ["unknown"])[0]
        if on_cuda else "unused",
        "env.gpu_count": torch.cuda.device_count() if on_cuda else 0,
        "env.tf32": torch.backends.cuda.matmul.allow_tf32 if on_cuda else "unused",
    }
