"""What a run trains under on its device: seeds and determinism (TF32 included), mixed precision
(autocast, `--amp auto` resolved from the device and the CPU's feature flags), and what the machine
reports about itself (its load, the run's peak memory)."""

from __future__ import annotations

import functools
import os
import random
import resource
import sys

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_determinism(enabled: bool, device: torch.device, tf32: bool = False) -> None:
    """The numerics switches a run (and `harness bench`) trains under. TF32 is off unless asked for
    (`--tf32`): PyTorch's own defaults differ between matmuls (off) and cuDNN convolutions (on)."""
    torch.use_deterministic_algorithms(enabled, warn_only=device.type == "cuda")
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def speed_features() -> list[str]:
    """The CPU features that decide which speed options pay (vector width, native bf16)."""
    flags = cpu_flags()
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]


def resolve_amp(amp: str, device_type: str) -> str:
    """`auto` -> the fastest safe option for the device: bf16 on CUDA with bf16 support and on CPUs
    with native bf16 (AVX-512 BF16 or AMX), else off. bf16 on a CPU without it is emulated: on an
    AVX2-only AMD EPYC a ResNet KD step ran 10x slower than fp32, so it is said loudly."""
    if amp == "auto" and device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "auto" or (amp == "bf16" and device_type == "cpu"):  # the CPU's flags decide (read only then)
        native_cpu = bool(cpu_flags() & set(NATIVE_BF16_FLAGS))
        if amp == "auto":
            return "bf16" if native_cpu else "off"
        if not native_cpu:
            _warn_emulated_bf16()
    return amp


@functools.cache
def _warn_emulated_bf16() -> None:  # once per process, not once per planned run
    print("harness: warning: --amp bf16 on a CPU without native bf16 (no avx512_bf16 / amx_bf16): "
          "emulated, measured up to 10x slower than fp32 here; --amp auto picks what is fast", file=sys.stderr)


def autocast(device: torch.device, amp: str):
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES.get(amp), enabled=amp in AMP_DTYPES)


def machine_load() -> float:
    """The 1-minute load average (this process's own threads included); 0 where the OS has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
