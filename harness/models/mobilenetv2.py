"""MobileNetV2 for 32x32 images at half width, as RepDistiller's models/mobilenetv2.py builds it
(`mobile_half`: expansion 6, width 0.5; from "Knowledge distillation via route constrained
optimization"): a stride-2 3x3 stem, seven groups of inverted residuals, a 1x1 conv to 1280
channels, global average pool, one linear layer. Every inverted residual has its 1x1 expansion
conv, the first group's (expansion 1) included, as RepDistiller's.

Intermediates (timm indices): 0 = stem, 1..4 = RepDistiller's f1..f4: the outputs of groups
2, 3, 5 and 7 (16, 8, 4 and 2 px; each stage here holds the groups up to that tap).

Pre-ReLU taps (`forward_intermediates_pre_relu`, for ab, ofd, reviewkd): at 1..4 the stage output
itself, as RepDistiller's `forward(x, is_feat=True, preact=True)` returns the same f1..f4 either way:
an inverted residual ends at its linear 1x1 conv's BN (plus the input where it is residual), and
no ReLU follows it (the next block starts with a conv). The BN there is the last block's last BN,
`conv[-1]`, as RepDistiller's `get_bn_before_relu` (`self.blocks[1][-1].conv[-1]`, groups 1, 2, 4, 6
counted from 0); where that block is residual the tap is that BN's output plus the block's input.
At 0 the stem BN's output, before the stem's ReLU (RepDistiller's f0 is post-ReLU either way; our
CIFAR ResNets' rule).
"""

from __future__ import annotations

from torch import nn
from timm.models import register_model

from harness.models.keys import rename_keys
from harness.models.staged import PreReluTaps, StagedNet, conv_bn_relu_pre_relu

# (expansion, channels at width 1, blocks, first stride) per group: MobileNetV2 Table 2, at 32x32
GROUPS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
STAGES = [[0, 1], [2], [3, 4], [5, 6]]  # groups per stage: a stage ends where RepDistiller taps a feature


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        mid = in_ch * expansion
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(PreReluTaps, StagedNet):
    def __init__(self, width: float = 0.5, num_classes: int = 100, in_chans: int = 3, **_timm_kwargs):
        super().__init__()
        self.num_classes = num_classes
        in_ch = int(32 * width)
        self.stem = conv_bn_relu(in_chans, in_ch, 3, stride=2)
        groups = []
        for expansion, channels, blocks, stride in GROUPS:
            out_ch = int(channels * width)
            groups.append(nn.Sequential(*[InvertedResidual(in_ch if b == 0 else out_ch, out_ch,
                                                           stride if b == 0 else 1, expansion) for b in range(blocks)]))
            in_ch = out_ch
        self.stages = nn.Sequential(*[nn.Sequential(*[groups[g] for g in stage]) for stage in STAGES])
        self.num_features = int(1280 * width) if width > 1.0 else 1280
        self.head_conv = conv_bn_relu(in_ch, self.num_features, 1)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.feature_info = [dict(num_chs=int(32 * width), module="stem")] + [
            dict(num_chs=int(GROUPS[stage[-1]][1] * width), module=f"stages.{i}") for i, stage in enumerate(STAGES)]
        for m in self.modules():  # RepDistiller's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def pre_pool(self, x):
        return self.head_conv(x)

    def pre_relu_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per intermediate, the BN before its last ReLU: the stem's; then, for each stage, its last
        inverted residual's linear BN (no ReLU follows: the tap is the stage output)."""
        return [self.stem[1]] + [stage[-1][-1].conv[-1] for stage in self.stages]

    def pre_relu_step(self, i, unit, x):
        if i == 0:
            return conv_bn_relu_pre_relu(unit, x)
        x = unit(x)
        return x, x


# RepDistiller's blocks.G (group G) sits at stages.S.K here: K-th group of stage S
GROUP_KEYS = [(rf"^blocks\.{g}\.", f"stages.{s}.{stage.index(g)}.") for s, stage in enumerate(STAGES) for g in stage]
REPDISTILLER_KEYS = [(r"^conv1\.", "stem."), *GROUP_KEYS, (r"^conv2\.", "head_conv."), (r"^classifier\.0\.", "fc.")]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """A RepDistiller / mdistiller MobileNetV2 state dict with our key names."""
    return rename_keys(state_dict, REPDISTILLER_KEYS)


@register_model
def cifar_mobilenetv2_half(pretrained=False, **kwargs):
    kwargs.pop("pretrained", None)
    return MobileNetV2(0.5, **kwargs)
