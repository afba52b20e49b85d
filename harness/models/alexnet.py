"""AlexNet with 8 weight layers for 32x32 images: NMT §4/§5.3's student for CIFAR-100 ("a modified
version of AlexNet who has 8 hidden layers"; the paper gives no more). Our reading: Krizhevsky et
al.'s five conv layers (64, 192, 384, 256, 256 filters, as torchvision's AlexNet) with 3x3 kernels
and three 2x2 max-pools for 32x32 inputs, then its three fully connected layers, narrowed from
4096 to 1024 units for a 4x4x256 input. Dropout before the two hidden FC layers, as in AlexNet.

Intermediates (timm indices): 0 = stem (conv1 + pool), 1 = conv2 + pool, 2 = conv3-5 + pool.
pre_logits = the second hidden FC layer's output.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models import register_model

from harness.models.staged import StagedNet


def conv_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True)]


class CifarAlexNet(StagedNet):
    def __init__(self, num_classes: int = 100, in_chans: int = 3, hidden: int = 1024, img_size: int = 32,
                 drop_rate: float = 0.5, **_timm_kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(*conv_relu(in_chans, 64), nn.MaxPool2d(2))
        self.stages = nn.Sequential(
            nn.Sequential(*conv_relu(64, 192), nn.MaxPool2d(2)),
            nn.Sequential(*conv_relu(192, 384), *conv_relu(384, 256), *conv_relu(256, 256), nn.MaxPool2d(2)))
        side = img_size // 8
        self.hidden = nn.Sequential(nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(256 * side * side, hidden),
                                    nn.ReLU(inplace=True), nn.Dropout(drop_rate), nn.Linear(hidden, hidden),
                                    nn.ReLU(inplace=True))
        self.num_features = hidden
        self.fc = nn.Linear(hidden, num_classes)
        self.feature_info = [dict(num_chs=64, module="stem"), dict(num_chs=192, module="stages.0"),
                             dict(num_chs=256, module="stages.1")]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden(x)  # AlexNet flattens the last map instead of pooling it
        return x if pre_logits else self.fc(x)


@register_model
def cifar_alexnet8(pretrained=False, **kwargs):
    return CifarAlexNet(**kwargs)
