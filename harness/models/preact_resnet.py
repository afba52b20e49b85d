"""Pre-activation bottleneck ResNets for 32x32 images (He et al. 2016, "Identity mappings in
deep residual networks"): depth = 9n + 2, stages of 16/32/64 bottleneck widths (x4 outputs).
ResNet-1001 (n = 111) is NST's CIFAR teacher.

Intermediates (timm indices): 0 = stem, 1..3 = stage outputs (pre-activation: no ReLU; the head
applies the final BN-ReLU before pooling).
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models import register_model

from harness.models.staged import StagedNet


class PreActBottleneck(nn.Module):
    def __init__(self, in_ch: int, width: int, stride: int):
        super().__init__()
        out_ch = 4 * width
        self.bn1, self.conv1 = nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(width), nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(width), nn.Conv2d(width, out_ch, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x):
        pre = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(torch.relu(self.bn2(out)))
        out = self.conv3(torch.relu(self.bn3(out)))
        return out + shortcut


class PreActResNet(StagedNet):
    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, **_timm_kwargs):
        super().__init__()
        if (depth - 2) % 9:
            raise ValueError(f"pre-activation bottleneck ResNet depth must be 9n+2, got {depth}")
        n = (depth - 2) // 9
        self.num_classes = num_classes
        self.stem = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        stages, in_ch = [], 16
        for i, width in enumerate((16, 32, 64)):
            blocks = [PreActBottleneck(in_ch if b == 0 else 4 * width, width, 2 if (i > 0 and b == 0) else 1)
                      for b in range(n)]
            stages.append(nn.Sequential(*blocks))
            in_ch = 4 * width
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(in_ch)
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        self.feature_info = [dict(num_chs=16, module="stem")] + [
            dict(num_chs=4 * w, module=f"stages.{i}") for i, w in enumerate((16, 32, 64))]

    def pre_pool(self, x):
        return torch.relu(self.norm(x))



@register_model
def cifar_preact_resnet164(pretrained=False, **kwargs):
    kwargs.pop("pretrained", None)
    return PreActResNet(164, **kwargs)


@register_model
def cifar_preact_resnet1001(pretrained=False, **kwargs):
    kwargs.pop("pretrained", None)
    return PreActResNet(1001, **kwargs)
