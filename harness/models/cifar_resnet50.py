"""ResNet-50 for 32x32 images, as RepDistiller's models/resnetv2.py builds it (`ResNet50`): the
ImageNet layout of bottleneck stages (3, 4, 6, 3 blocks of width 64-512, x4 outputs) after a 3x3
stride-1 stem of 64 channels, without the max-pool; shortcuts that change shape are 1x1 conv + BN.

Intermediates (timm indices): 0 = stem, 1..4 = stage outputs (post-ReLU; 32, 16, 8, 4 px).

Pre-ReLU taps (`forward_intermediates_pre_relu`, for ab, ofd, reviewkd): 0 = the stem BN's output
(RepDistiller's f0 stays post-ReLU even with preact=True; our CIFAR ResNets' rule); 1..4 = each stage's last block before its final ReLU, the residual sum bn3(conv3(.)) + shortcut,
as RepDistiller's resnetv2.py `Bottleneck.forward` returns it (`preact = out` before `F.relu`, the
`f1_pre`..`f4_pre` of `forward(x, is_feat=True, preact=True)`). `pre_relu_batchnorms`: the stem's
BN, then each stage's last bn3, as RepDistiller's `get_bn_before_relu` (`layer{1..4}[-1].bn3`).
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models import register_model

from harness.models.keys import rename_keys
from harness.models.staged import PreReluTaps, StagedNet, conv_bn_relu_pre_relu, last_block_pre_relu


class Bottleneck(nn.Module):
    def __init__(self, in_ch: int, width: int, stride: int):
        super().__init__()
        out_ch = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(in_ch, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward_pre_relu(self, x):
        """The block's output before its final ReLU: bn3(conv3(.)) plus the shortcut."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + self.shortcut(x)

    def forward(self, x):
        return torch.relu(self.forward_pre_relu(x))


class CifarBottleneckResNet(PreReluTaps, StagedNet):
    def __init__(self, blocks=(3, 4, 6, 3), num_classes: int = 100, in_chans: int = 3, **_timm_kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        stages, in_ch = [], 64
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[Bottleneck(in_ch if b == 0 else 4 * width, width, stride if b == 0 else 1)
                                          for b in range(n)]))
            in_ch = 4 * width
        self.stages = nn.Sequential(*stages)
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        self.feature_info = [dict(num_chs=64, module="stem")] + [
            dict(num_chs=4 * w, module=f"stages.{i}") for i, w in enumerate((64, 128, 256, 512))]
        for m in self.modules():  # RepDistiller's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def pre_relu_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per intermediate, the BN before its last ReLU: the stem's, then each stage's last bn3."""
        return [self.stem[1]] + [stage[-1].bn3 for stage in self.stages]

    def pre_relu_step(self, i, unit, x):
        return conv_bn_relu_pre_relu(unit, x) if i == 0 else last_block_pre_relu(unit, x)


REPDISTILLER_KEYS = [(r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."), (r"^layer1\.", "stages.0."),
                     (r"^layer2\.", "stages.1."), (r"^layer3\.", "stages.2."), (r"^layer4\.", "stages.3."),
                     (r"^linear\.", "fc.")]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """A RepDistiller / mdistiller ResNet50 (CIFAR) state dict with our key names."""
    return rename_keys(state_dict, REPDISTILLER_KEYS)


@register_model
def cifar_resnet50(pretrained=False, **kwargs):
    kwargs.pop("pretrained", None)
    return CifarBottleneckResNet((3, 4, 6, 3), **kwargs)
