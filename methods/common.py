"""Small helpers the feature methods share."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.errors import UserError


def pool_to_smaller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool whichever of two N x C x H x W maps is spatially larger to the other's size."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    if a.shape[-1] > b.shape[-1]:
        return F.adaptive_avg_pool2d(a, b.shape[-2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[-2:])


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear interpolation of an N x C x H x W map to `size` (no-op when it already fits)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                    align_corners=False)


def require_maps(method: str, probe, indices: list[int]) -> None:
    """Methods defined on spatial maps (AT, FSP) reject vector features before training."""
    for role in ("teacher", "student"):
        for i in indices:
            if getattr(probe, role)["stages"][i].ndim != 4:
                raise UserError(f"{method} needs spatial feature maps (N x C x H x W), but the {role}'s stage "
                                f"{i} gives vectors of shape {tuple(getattr(probe, role)['stages'][i].shape)}")


def stage_indices(layers: str, probe) -> list[int]:
    """Which entries of the pair's stage list a method compares: all of them, the last, or the hint."""
    n = len(probe.teacher["stages"])
    if n == 0:
        raise UserError("this method compares intermediate features, but the pair lists no stages")
    return {"all": list(range(n)), "last": [n - 1], "hint": [probe.hint % n]}[layers]
