"""ShuffleNet V1 (g = 3) and V2 (1x) for 32x32 images, as RepDistiller's models/ShuffleNetv1.py
and ShuffleNetv2.py build them: a 1x1 stem conv of 24 channels (no max-pool), three stages that
each halve the resolution (32 -> 16 -> 8 -> 4 px), global average pool, one linear layer.

Intermediates (timm indices): 0 = stem, 1..3 = stage outputs (post-ReLU for V1; V2's are the
channel-shuffled concatenations).

Pre-ReLU taps (`forward_intermediates_pre_relu`, for ab, ofd, reviewkd); at 0, for both, the stem
BN's output (RepDistiller's f0 stays post-ReLU under preact; our CIFAR ResNets' rule).
- V1, at 1..3: each stage's last block before its final ReLU, the residual sum bn3(conv3(.)) + input,
  RepDistiller's `preact = ... out+res` (`f1_pre`..`f3_pre`; a stage's last block has stride 1, so
  the sum, not the stride-2 concatenation). `pre_relu_batchnorms`: the stem's BN, then each stage's
  last bn3, the BN that sum follows, as for a ResNet. RepDistiller and mdistiller name none
  (`get_bn_before_relu` raises: "not supported for 'Overhaul' teacher"); this one is the honest
  counterpart of the ResNets' bn2/bn3, so a V1 may be OFD's teacher here.
- V2, at 1..3: the last block's concatenation with its branch before the branch's final ReLU, [kept
  half, bn3(conv3(.))], as RepDistiller's `preact = torch.cat([x1, preact], 1)`, and then channel-
  shuffled as the stage output is (RepDistiller's is unshuffled: a fixed channel order, which the 1x1
  connectors of ab and ofd do not see), so that the stage output is its ReLU. Half its channels (the
  kept half, a pass-through) follow no BN, so there is no BN to name: V2 has no
  `pre_relu_batchnorms`, as RepDistiller's `get_bn_before_relu` raises; it can be ab's and ofd's
  student and ab's and reviewkd's teacher, not ofd's teacher (whose margins come from that BN).
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models import register_model

from harness.errors import UserError
from harness.models.keys import rename_keys
from harness.models.staged import PreReluTaps, StagedNet, conv_bn_relu_pre_relu, last_block_pre_relu


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

    def forward_pre_relu(self, x):
        """The block's output before its final ReLU: bn3(conv3(.)) plus (stride 2: and) the shortcut."""
        out = channel_shuffle(torch.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        return torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut

    def forward(self, x):
        return torch.relu(self.forward_pre_relu(x))


class ShuffleNetV1(PreReluTaps, StagedNet):
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

    def pre_relu_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per intermediate, the BN before its last ReLU: the stem's, then each stage's last bn3 (the
        residual sum follows it; a stage ending in a stride-2 block, a concatenation, has none)."""
        if any(stage[-1].stride == 2 for stage in self.stages):
            raise UserError("a ShuffleNetV1 stage of one block ends in a concatenation: no BN before its ReLU")
        return [self.stem[1]] + [stage[-1].bn3 for stage in self.stages]

    def pre_relu_step(self, i, unit, x):
        return conv_bn_relu_pre_relu(unit, x) if i == 0 else last_block_pre_relu(unit, x)


class ShuffleV2Block(nn.Module):
    """Split the channels in half; the second half goes through 1x1 conv, 3x3 depthwise, 1x1
    conv; concatenate with the first half; shuffle in two groups."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1, self.bn1 = nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half)
        self.conv2, self.bn2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False), nn.BatchNorm2d(half)
        self.conv3, self.bn3 = nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half)

    def kept_and_branch_pre_relu(self, x):
        """The kept half, and the other half through its branch up to (before) the final ReLU."""
        kept, branch = x.chunk(2, dim=1)
        out = torch.relu(self.bn1(self.conv1(branch)))
        return kept, self.bn3(self.conv3(self.bn2(self.conv2(out))))

    def forward_with_pre_relu(self, x):
        """(output, the same before the branch's final ReLU): shuffled [kept, relu(b)] and [kept, b]."""
        kept, pre = self.kept_and_branch_pre_relu(x)
        return (channel_shuffle(torch.cat([kept, torch.relu(pre)], 1), 2),
                channel_shuffle(torch.cat([kept, pre], 1), 2))

    def forward(self, x):
        kept, pre = self.kept_and_branch_pre_relu(x)
        return channel_shuffle(torch.cat([kept, torch.relu(pre)], 1), 2)


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


class ShuffleNetV2(PreReluTaps, StagedNet):
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

    def pre_relu_step(self, i, unit, x):
        if i == 0:
            return conv_bn_relu_pre_relu(unit, x)
        return unit[-1].forward_with_pre_relu(unit[:-1](x))


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
