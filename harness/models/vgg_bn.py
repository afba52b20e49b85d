"""VGG-13 and VGG-8 with batch norm for 32x32 images, as RepDistiller's models/vgg.py builds them
(vgg13_bn, vgg8_bn): five conv groups of 3x3 convs (with bias) + BN + ReLU; a 2x2 max-pool
between groups 1-2, 2-3 and 3-4 (none before the fifth at 32x32: RepDistiller pools there only
for 64x64 inputs); global average pool; one linear layer on the 512 channels.

Intermediates (timm indices): 0 = stem (the first group), 1..4 = the other groups' outputs after
their ReLU and before the next pool (RepDistiller's f0..f4: 32, 16, 8, 4 and 4 px).

Pre-ReLU taps (`forward_intermediates_pre_relu`, for ab, ofd, reviewkd): each group's last BN output,
before the ReLU that closes the group (`ConvGroup.forward_pre_relu`): at 1..4 RepDistiller's
`f1_pre`..`f4_pre` (`x = self.block1(x); f1_pre = x; x = F.relu(x)`, its groups ending at the BN); at 0
the first group's, which RepDistiller leaves post-ReLU even with preact=True (our CIFAR ResNets' rule:
the stem BN's output). `pre_relu_batchnorms`: that last BN of every group, as RepDistiller's
`get_bn_before_relu` (`block1[-1]`..`block4[-1]`) and, for 0, `block0[-1]`.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models import register_model

from harness.models.keys import rename_keys
from harness.models.staged import PreReluTaps, StagedNet

VGG13 = [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]  # RepDistiller cfg 'B'
VGG8 = [[64], [128], [256], [512], [512]]  # cfg 'S'


class ConvGroup(nn.Module):
    """An optional 2x2 max-pool, then conv-BN-ReLU units; the last unit's ReLU is applied in
    `forward` (RepDistiller's groups end at the BN, whose output is the pre-activation feature)."""

    def __init__(self, in_ch: int, widths: list[int], pool: bool):
        super().__init__()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        units = []
        for out_ch in widths:
            units += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
            in_ch = out_ch
        self.convs = nn.Sequential(*units[:-1])

    def forward_pre_relu(self, x):
        """The group's output before its closing ReLU: its last BN's output."""
        return self.convs(self.pool(x))

    def forward(self, x):
        return torch.relu(self.forward_pre_relu(x))


class VGGBN(PreReluTaps, StagedNet):
    def __init__(self, layout: list[list[int]], num_classes: int = 100, in_chans: int = 3, **_timm_kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.stem = ConvGroup(in_chans, layout[0], pool=False)
        self.stages = nn.Sequential(*[ConvGroup(layout[i - 1][-1], layout[i], pool=i < 4) for i in range(1, 5)])
        self.num_features = layout[-1][-1]
        self.fc = nn.Linear(self.num_features, num_classes)
        self.feature_info = [dict(num_chs=widths[-1], module="stem" if i == 0 else f"stages.{i - 1}")
                             for i, widths in enumerate(layout)]
        for m in self.modules():  # RepDistiller's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def pre_relu_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per intermediate, the BN before its last ReLU: each group's last BN."""
        return [group.convs[-1] for group in [self.stem, *self.stages]]

    def pre_relu_step(self, i, unit, x):
        pre = unit.forward_pre_relu(x)
        return torch.relu(pre), pre


REPDISTILLER_KEYS = [(r"^block0\.", "stem.convs."), (r"^block1\.", "stages.0.convs."), (r"^block2\.", "stages.1.convs."),
                     (r"^block3\.", "stages.2.convs."), (r"^block4\.", "stages.3.convs."), (r"^classifier\.", "fc.")]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """A RepDistiller / mdistiller VGG state dict with our key names."""
    return rename_keys(state_dict, REPDISTILLER_KEYS)


@register_model
def cifar_vgg13_bn(pretrained=False, **kwargs):
    kwargs.pop("pretrained", None)
    return VGGBN(VGG13, **kwargs)


@register_model
def cifar_vgg8_bn(pretrained=False, **kwargs):
    kwargs.pop("pretrained", None)
    return VGGBN(VGG8, **kwargs)
