"""Small helpers the feature methods share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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


def require_pre_relu(method: str, probe, roles=("teacher", "student")) -> None:
    """Methods on pre-ReLU responses (AB, OFD, ReviewKD's teacher) need models that give them."""
    for role in roles:
        if "stages_pre_relu" not in getattr(probe, role):
            raise UserError(f"{method} compares features before the ReLU, which the {role}'s model does not "
                            "give (forward_intermediates_pre_relu: the CIFAR ResNets, RepDistiller's WRN, VGG, "
                            "MobileNetV2, ResNet-50 and ShuffleNets, timm's ResNets and MobileNetV1)")


def halving_weights(n: int) -> list[float]:
    """1 for the deepest of n compared stages, 1/2 for the one before, ...: 2^(i - n + 1) (AB, OFD)."""
    return [2.0 ** (i - n + 1) for i in range(n)]


def conv_bn_connector(in_ch: int, out_ch: int) -> nn.Sequential:
    """1x1 conv (no bias) + BN from the student's channels to the teacher's, initialised as the AB
    and OFD authors do: conv weights N(0, 2 / (k * k * out)), BN weight 1 and bias 0."""
    conv, bn = nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)
    nn.init.normal_(conv.weight, 0.0, (2.0 / out_ch) ** 0.5)
    return nn.Sequential(conv, bn)


def stage_indices(layers: str, probe) -> list[int]:
    """Which entries of the pair's stage list a method compares: all of them, the last, or the hint."""
    n = len(probe.teacher["stages"])
    if n == 0:
        raise UserError("this method compares intermediate features, but the pair lists no stages")
    return {"all": list(range(n)), "last": [n - 1], "hint": [probe.hint % n]}[layers]


class Discriminator(nn.Module):
    """A GAN's critic: an MLP from a feature vector to one real/fake logit per sample."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def judge_frozen(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` with its parameters detached: gradients reach x (the student) but not the module,
    so a generator's loss and its critic's loss can share one backward pass."""
    frozen = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, frozen, (x,))


def ramp(step: torch.Tensor, warmup_steps: int) -> torch.Tensor | float:
    """A weight's linear warm-up: step / warmup_steps, capped at 1 (1 without warm-up)."""
    return (step.float() / warmup_steps).clamp(max=1.0) if warmup_steps else 1.0
