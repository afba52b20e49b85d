"""VGG-19 with batch norm for 32x32 images (NMT §4/§5.3's teacher for CIFAR-100; the common CIFAR
adaptation of Simonyan & Zisserman 2015: the five conv groups with BN-ReLU, each closed by a 2x2
max-pool, then one linear layer on the 512 features of the 1x1 map, as torchvision's VGG
classifier is sized for 224x224 images).

Intermediates (timm indices): 0 = stem (the first conv unit), 1..5 = the five groups' pooled outputs.
"""

from __future__ import annotations

from torch import nn
from timm.models import register_model

from harness.models.staged import StagedNet

VGG19 = [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]]


def conv_unit(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


class CifarVGG(StagedNet):
    def __init__(self, layout: list[list[int]], num_classes: int = 100, in_chans: int = 3, **_timm_kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.stem = conv_unit(in_chans, layout[0][0])
        groups, in_ch = [], layout[0][0]
        for g, widths in enumerate(layout):
            units = []
            for out_ch in widths[1:] if g == 0 else widths:  # the stem is the first group's first unit
                units.append(conv_unit(in_ch, out_ch))
                in_ch = out_ch
            groups.append(nn.Sequential(*units, nn.MaxPool2d(2)))
        self.stages = nn.Sequential(*groups)
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        self.feature_info = [dict(num_chs=layout[0][0], module="stem")] + [
            dict(num_chs=widths[-1], module=f"stages.{i}") for i, widths in enumerate(layout)]


@register_model
def cifar_vgg19_bn(pretrained=False, **kwargs):
    return CifarVGG(VGG19, **kwargs)
