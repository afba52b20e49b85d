"""CIFAR-style ResNets (He et al. 2016, Sec. 4.2): a 3x3 stem and three stages of basic
blocks, depth = 6n + 2. Registered with timm under `cifar_` names so that timm's own
ImageNet `resnet26` etc. are left alone.

Shortcuts that change shape use a 1x1 conv + BN (option B), as RepDistiller's CIFAR
ResNets do. Stage outputs are post-ReLU block outputs; `forward_intermediates_pre_relu` also gives
them before that last ReLU (the residual sum), and `pre_relu_batchnorms` the BN feeding it.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models import register_model

from harness.models.keys import rename_keys
from harness.models.staged import PreReluTaps, StagedNet, conv_bn_relu_pre_relu, last_block_pre_relu


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward_pre_relu(self, x):
        """The block's output before its final ReLU: bn2(conv2(.)) plus the shortcut."""
        out = torch.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + self.shortcut(x)

    def forward(self, x):
        return torch.relu(self.forward_pre_relu(x))


class CifarResNet(PreReluTaps, StagedNet):
    """Intermediates (timm indices): 0 = stem output, 1..3 = stage outputs."""

    def __init__(self, depth: int, widths=(16, 16, 32, 64), num_classes: int = 10, in_chans: int = 3,
                 width_mult: float = 1.0, **_timm_kwargs):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [max(1, round(w * width_mult)) for w in widths]
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, in_ch = [], widths[0]
        for i, out_ch in enumerate(widths[1:]):
            blocks = [BasicBlock(in_ch if b == 0 else out_ch, out_ch, 2 if (i > 0 and b == 0) else 1) for b in range(n)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="stem")] + [
            dict(num_chs=w, reduction=2 ** i, module=f"stages.{i}") for i, w in enumerate(widths[1:])]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def pre_relu_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per intermediate (forward_intermediates' indices), the BN before its last ReLU: the stem's,
        then each stage's last bn2, which the residual sum follows (RepDistiller's and mdistiller's
        `get_bn_before_relu`)."""
        return [self.stem[1]] + [stage[-1].bn2 for stage in self.stages]

    def pre_relu_step(self, i, unit, x):
        return conv_bn_relu_pre_relu(unit, x) if i == 0 else last_block_pre_relu(unit, x)


# RepDistiller's models/resnet.py names -> ours (applied in order to each key)
REPDISTILLER_KEYS = [(r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."), (r"^layer1\.", "stages.0."),
                     (r"^layer2\.", "stages.1."), (r"^layer3\.", "stages.2."), (r"\.downsample\.", ".shortcut.")]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """A RepDistiller / mdistiller CIFAR ResNet state dict with our key names."""
    return rename_keys(state_dict, REPDISTILLER_KEYS)


def _cifar_resnet(depth: int, widths=(16, 16, 32, 64), **kwargs) -> CifarResNet:
    kwargs.pop("pretrained", None)  # no pretrained weights exist for these
    return CifarResNet(depth, widths, **kwargs)


@register_model
def cifar_resnet8(pretrained=False, **kwargs):
    return _cifar_resnet(8, **kwargs)


@register_model
def cifar_resnet14(pretrained=False, **kwargs):
    return _cifar_resnet(14, **kwargs)


@register_model
def cifar_resnet20(pretrained=False, **kwargs):
    return _cifar_resnet(20, **kwargs)


@register_model
def cifar_resnet26(pretrained=False, **kwargs):
    return _cifar_resnet(26, **kwargs)


@register_model
def cifar_resnet32(pretrained=False, **kwargs):
    return _cifar_resnet(32, **kwargs)


@register_model
def cifar_resnet56(pretrained=False, **kwargs):
    return _cifar_resnet(56, **kwargs)


@register_model
def cifar_resnet110(pretrained=False, **kwargs):
    return _cifar_resnet(110, **kwargs)


@register_model
def cifar_resnet8x4(pretrained=False, **kwargs):
    return _cifar_resnet(8, widths=(32, 64, 128, 256), **kwargs)


@register_model
def cifar_resnet32x4(pretrained=False, **kwargs):
    return _cifar_resnet(32, widths=(32, 64, 128, 256), **kwargs)
