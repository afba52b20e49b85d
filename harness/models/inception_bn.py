"""The small Inception-BN for 32x32 images used as NST's CIFAR student (MXNet's
"inception-bn-28-small": conv-BN-ReLU units, Simple modules = 1x1 || 3x3, Downsample modules =
strided 3x3 || max-pool). Module names follow it: in3a ... in5b (NST §5.1 taps in5b).

Intermediates (timm indices): 0 = stem, then one per module in order (1 = in3a ... 10 = in5b).
"""

from __future__ import annotations

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


class InceptionBNSmall(StagedNet):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, **_timm_kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.stem = conv_bn_relu(in_chans, 96, 3)
        modules, in_ch = {}, 96
        for name, cls, args in LAYOUT:
            modules[name] = cls(in_ch, *args)
            in_ch = modules[name].out_ch
        self.stages = nn.ModuleDict(modules)
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        self.feature_info = [dict(num_chs=96, module="stem")] + [
            dict(num_chs=m.out_ch, module=f"stages.{n}") for n, m in modules.items()]



@register_model
def inception_bn_small(pretrained=False, **kwargs):
    return InceptionBNSmall(**kwargs)
