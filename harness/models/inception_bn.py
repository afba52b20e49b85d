"""The small Inception-BN for 32x32 images used as NST's CIFAR student (MXNet's
"inception-bn-28-small": conv-BN-ReLU units, Simple modules = 1x1 || 3x3, Downsample modules =
strided 3x3 || max-pool). Module names follow it: in3a ... in5b (NST §5.1 taps in5b).

Intermediates (timm indices): 0 = stem, then one per module in order (1 = in3a ... 10 = in5b).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from timm.models import register_model

from harness.models.staged import StagedNet


def conv_bn_relu(in_ch, out_ch, kernel, stride=1):
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


class Simple(nn.Module):
    def __init__(self, in_ch, ch1, ch3):
        super().__init__()
        self.b1, self.b3, self.out_ch = conv_bn_relu(in_ch, ch1, 1), conv_bn_relu(in_ch, ch3, 3), ch1 + ch3

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x)], dim=1)


class Downsample(nn.Module):
    def __init__(self, in_ch, ch3):
        super().__init__()
        self.conv, self.pool, self.out_ch = conv_bn_relu(in_ch, ch3, 3, 2), nn.MaxPool2d(3, 2, 1), ch3 + in_ch

    def forward(self, x):
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


LAYOUT = [("in3a", Simple, (32, 32)), ("in3b", Simple, (32, 48)), ("in3c", Downsample, (80,)),
          ("in4a", Simple, (112, 48)), ("in4b", Simple, (96, 64)), ("in4c", Simple, (80, 80)),
          ("in4d", Simple, (48, 96)), ("in4e", Downsample, (96,)), ("in5a", Simple, (176, 160)),
          ("in5b", Simple, (176, 160))]


class InceptionStack(StagedNet):
    """A stem, then named modules in order (each with `out_ch`), global pool, linear."""

    def __init__(self, stem: nn.Module, stem_ch: int, modules: list[tuple[str, Callable[[int], nn.Module]]],
                 num_classes: int):
        super().__init__()
        self.num_classes, self.stem = num_classes, stem
        built, in_ch = {}, stem_ch
        for name, make in modules:
            built[name] = make(in_ch)
            in_ch = built[name].out_ch
        self.stages = nn.ModuleDict(built)
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        self.feature_info = [dict(num_chs=stem_ch, module="stem")] + [
            dict(num_chs=m.out_ch, module=f"stages.{n}") for n, m in built.items()]


class InceptionBNSmall(InceptionStack):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, **_timm_kwargs):
        super().__init__(conv_bn_relu(in_chans, 96, 3), 96,
                         [(name, lambda c, cls=cls, args=args: cls(c, *args)) for name, cls, args in LAYOUT],
                         num_classes)


@register_model
def inception_bn_small(pretrained=False, **kwargs):
    return InceptionBNSmall(**kwargs)


class Inception(nn.Module):
    """Inception-BN module (Ioffe & Szegedy 2015, Fig. 5): 1x1 || 1x1-3x3 || 1x1-3x3-3x3 || pool-1x1.
    With stride 2 it has no 1x1 branch, strides the last conv of both 3x3 branches, and the pool
    branch is a plain max pool (no projection)."""

    def __init__(self, in_ch, ch1, ch3r, ch3, dbl_r, dbl, pool: str, proj: int, stride: int = 1):
        super().__init__()
        self.b1 = conv_bn_relu(in_ch, ch1, 1) if ch1 else None
        self.b3 = nn.Sequential(conv_bn_relu(in_ch, ch3r, 1), conv_bn_relu(ch3r, ch3, 3, stride))
        self.dbl = nn.Sequential(conv_bn_relu(in_ch, dbl_r, 1), conv_bn_relu(dbl_r, dbl, 3),
                                 conv_bn_relu(dbl, dbl, 3, stride))
        pooling = nn.AvgPool2d(3, 1, 1, count_include_pad=False) if pool == "avg" else nn.MaxPool2d(3, stride, 1)
        self.pool = nn.Sequential(pooling, conv_bn_relu(in_ch, proj, 1)) if proj else pooling
        self.out_ch = ch1 + ch3 + dbl + (proj or in_ch)

    def forward(self, x):
        branches = [self.b3(x), self.dbl(x), self.pool(x)]
        return torch.cat(([self.b1(x)] if self.b1 is not None else []) + branches, dim=1)


# name: (1x1, 3x3 reduce, 3x3, double 3x3 reduce, double 3x3, pool, pool proj, stride), Ioffe & Szegedy Fig. 5
IMAGENET_LAYOUT = [
    ("in3a", (64, 64, 64, 64, 96, "avg", 32, 1)), ("in3b", (64, 64, 96, 64, 96, "avg", 64, 1)),
    ("in3c", (0, 128, 160, 64, 96, "max", 0, 2)), ("in4a", (224, 64, 96, 96, 128, "avg", 128, 1)),
    ("in4b", (192, 96, 128, 96, 128, "avg", 128, 1)), ("in4c", (160, 128, 160, 128, 160, "avg", 128, 1)),
    ("in4d", (96, 128, 192, 160, 192, "avg", 128, 1)), ("in4e", (0, 128, 192, 192, 256, "max", 0, 2)),
    ("in5a", (352, 192, 320, 160, 224, "avg", 128, 1)), ("in5b", (352, 192, 320, 192, 224, "max", 128, 1)),
]


class InceptionBN(InceptionStack):
    """The original Inception-BN for 224x224 ImageNet images (NST §5.2 and LPL §V-D's student):
    7x7/2 conv, max pool, 1x1 and 3x3 convs, max pool, then modules 3a ... 5b, global pool, linear.
    Intermediates: 0 = stem (28x28, 192 channels), 1 = in3a ... 10 = in5b (7x7, 1024 channels)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, **_timm_kwargs):
        stem = nn.Sequential(conv_bn_relu(in_chans, 64, 7, 2), nn.MaxPool2d(3, 2, 1), conv_bn_relu(64, 64, 1),
                             conv_bn_relu(64, 192, 3), nn.MaxPool2d(3, 2, 1))
        super().__init__(stem, 192, [(name, lambda c, args=args: Inception(c, *args))
                                     for name, args in IMAGENET_LAYOUT], num_classes)


@register_model
def inception_bn(pretrained=False, **kwargs):
    return InceptionBN(**kwargs)
