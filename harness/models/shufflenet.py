"""ShuffleNet V1 (g = 3) and V2 (1x) for 32x32 images, as RepDistiller's models/ShuffleNetv1.py
and ShuffleNetv2.py build them: a 1x1 stem conv of 24 channels (no max-pool), three stages that
each halve the resolution (32 -> 16 -> 8 -> 4 px), global average pool, one linear layer.

Intermediates (timm indices): 0 = stem, 1..3 = stage outputs (post-ReLU for V1; V2's are the
channel-shuffled concatenations).
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models import register_model

from harness.models.keys import rename_keys
from harness.models.staged import StagedNet


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def stem(in_chans: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chans, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True))


class ShuffleV1Block(nn.Module):
    """Grouped 1x1 conv, channel shuffle, 3x3 depthwise conv, grouped 1x1 conv. Stride 2: the
    input, average-pooled, is concatenated (so the block itself adds out_ch - in_ch channels);
    stride 1: added. The stage's first 1x1 conv on the 24-channel stem is not grouped."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        branch_ch = out_ch - in_ch if stride == 2 else out_ch
        mid = branch_ch // 4
        self.first_groups, self.stride = first_groups, stride
        self.conv1, self.bn1 = nn.Conv2d(in_ch, mid, 1, groups=first_groups, bias=False), nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, branch_ch, 1, groups=groups, bias=False), nn.BatchNorm2d(branch_ch)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()

    def forward(self, x):
        out = channel_shuffle(torch.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        return torch.relu(torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut)


class ShuffleNetV1(StagedNet):
    def __init__(self, widths=(240, 480, 960), blocks=(4, 8, 4), groups: int = 3, num_classes: int = 100,
                 in_chans: int = 3, **_timm_kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.stem = stem(in_chans)
        stages, in_ch = [], 24
        for width, n in zip(widths, blocks):
            stage = []
            for b in range(n):
                first_groups = 1 if in_ch == 24 else groups  # RepDistiller: no grouping on the stem's channels
                stage.append(ShuffleV1Block(in_ch, width, 2 if b == 0 else 1, groups, first_groups))
                in_ch = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.num_features = widths[-1]
        self.fc = nn.Linear(widths[-1], num_classes)
        self.feature_info = [dict(num_chs=24, module="stem")] + [
            dict(num_chs=w, module=f"stages.{i}") for i, w in enumerate(widths)]


class ShuffleV2Block(nn.Module):
    """Split the channels in half; the second half goes through 1x1 conv, 3x3 depthwise, 1x1
    conv; concatenate with the first half; shuffle in two groups."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1, self.bn1 = nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half)
        self.conv2, self.bn2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False), nn.BatchNorm2d(half)
        self.conv3, self.bn3 = nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half)

    def forward(self, x):
        kept, branch = x.chunk(2, dim=1)
        out = torch.relu(self.bn1(self.conv1(branch)))
        out = torch.relu(self.bn3(self.conv3(self.bn2(self.conv2(out)))))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class ShuffleV2Down(nn.Module):
    """Two stride-2 branches of out_ch / 2 channels each (depthwise, 1x1; and 1x1, depthwise,
    1x1), concatenated and shuffled in two groups."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        mid = out_ch // 2
        self.conv1, self.bn1 = nn.Conv2d(in_ch, in_ch, 3, 2, 1, groups=in_ch, bias=False), nn.BatchNorm2d(in_ch)
        self.conv2, self.bn2 = nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv4, self.bn4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False), nn.BatchNorm2d(mid)
        self.conv5, self.bn5 = nn.Conv2d(mid, mid, 1, bias=False), nn.BatchNorm2d(mid)

    def forward(self, x):
        left = torch.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(torch.relu(self.bn3(self.conv3(x)))))
        right = torch.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(StagedNet):
    def __init__(self, widths=(116, 232, 464), blocks=(3, 7, 3), head_width: int = 1024, num_classes: int = 100,
                 in_chans: int = 3, **_timm_kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.stem = stem(in_chans)
        stages, in_ch = [], 24
        for width, n in zip(widths, blocks):  # RepDistiller: a down block, then n basic blocks
            stages.append(nn.Sequential(ShuffleV2Down(in_ch, width), *[ShuffleV2Block(width) for _ in range(n)]))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Conv2d(in_ch, head_width, 1, bias=False), nn.BatchNorm2d(head_width),
                                  nn.ReLU(inplace=True))
        self.num_features = head_width
        self.fc = nn.Linear(head_width, num_classes)
        self.feature_info = [dict(num_chs=24, module="stem")] + [
            dict(num_chs=w, module=f"stages.{i}") for i, w in enumerate(widths)]

    def pre_pool(self, x):
        return self.head(x)


STAGE_KEYS = [(r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."), (r"^layer1\.", "stages.0."), (r"^layer2\.", "stages.1."),
              (r"^layer3\.", "stages.2."), (r"^linear\.", "fc.")]
V2_HEAD_KEYS = [(r"^conv2\.", "head.0."), (r"^bn2\.", "head.1.")]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """A RepDistiller / mdistiller ShuffleV1 or ShuffleV2 state dict with our key names."""
    rules = STAGE_KEYS + (V2_HEAD_KEYS if isinstance(model, ShuffleNetV2) else [])
    return rename_keys(state_dict, rules)


@register_model
def cifar_shufflenetv1(pretrained=False, **kwargs):
    kwargs.pop("pretrained", None)
    return ShuffleNetV1(**kwargs)


@register_model
def cifar_shufflenetv2(pretrained=False, **kwargs):
    kwargs.pop("pretrained", None)
    return ShuffleNetV2(**kwargs)
