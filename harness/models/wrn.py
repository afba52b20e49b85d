"""Wide ResNets for 32x32 images (Zagoruyko & Komodakis 2016), as RepDistiller's models/wrn.py
builds them: WRN-d-k, depth d = 6n + 4, three stages of n pre-activation blocks 16k/32k/64k wide
after a 3x3 stem conv of 16 channels, a final BN-ReLU, global average pool and one linear layer.

Intermediates (timm indices): 0 = stem conv, 1..3 = stage outputs (pre-activation sums: no
ReLU, as RepDistiller's features f0..f3; the head applies the final BN-ReLU).

Pre-ReLU taps (`forward_intermediates_pre_relu`, for ab, ofd, reviewkd): in this pre-activation
design no ReLU closes a stage; the ReLU that reads a stage output is the next block's BN-ReLU (the
head's after the last stage), so the tap at i is the output of the BN that follows intermediate i
and feeds that ReLU: at 1 and 2 the next stage's first block's bn1 (RepDistiller's
`f1 = self.block2.layer[0].bn1(f1)`, `f2 = self.block3.layer[0].bn1(f2)` under `preact`), at 3 the
head's BN (`f3 = self.bn1(f3)`), at 0 the first block's bn1 (RepDistiller leaves f0, the stem conv,
as it is: the same rule one step earlier). The intermediates returned beside the taps stay the raw
sums of forward_intermediates (the tap is not their ReLU: relu(tap) is what the next block reads).
`pre_relu_batchnorms` are those BNs, RepDistiller's `get_bn_before_relu` (`block2.layer[0].bn1`,
`block3.layer[0].bn1`, `bn1`) with `block1.layer[0].bn1` before them. The tap is computed beside
the forward pass without updating the BN's running statistics (the block or head runs that BN
itself), so training statistics are those of the plain forward.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models import register_model

from harness.models.keys import rename_keys
from harness.models.staged import PreReluTaps, StagedNet, batchnorm_output


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3. Where the width changes, the shortcut is a 1x1 conv of the
    activated input; elsewhere the input itself."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False) if in_ch != out_ch else None

    def forward(self, x):
        activated = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(activated))))
        return out + (x if self.shortcut is None else self.shortcut(activated))


class WideResNet(PreReluTaps, StagedNet):
    def __init__(self, depth: int, widen: int, num_classes: int = 100, in_chans: int = 3, **_timm_kwargs):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.stem = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        stages, in_ch = [], 16
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[WideBlock(in_ch if b == 0 else width, width, stride if b == 0 else 1)
                                          for b in range(n)]))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.head_bn = nn.BatchNorm2d(widths[-1])
        self.fc = nn.Linear(widths[-1], num_classes)
        self.feature_info = [dict(num_chs=16, reduction=1, module="stem")] + [
            dict(num_chs=w, reduction=2 ** i, module=f"stages.{i}") for i, w in enumerate(widths)]
        for m in self.modules():  # RepDistiller's init: N(0, 2 / (k * k * out_channels)), zero linear bias
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def pre_pool(self, x):
        return torch.relu(self.head_bn(x))

    def pre_relu_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per intermediate, the BN that follows it and feeds the next ReLU: each stage's first
        block's bn1, then the head's BN."""
        return [stage[0].bn1 for stage in self.stages] + [self.head_bn]

    def pre_relu_step(self, i, unit, x):
        x = unit(x)
        return x, batchnorm_output(self.pre_relu_batchnorms()[i], x)


# RepDistiller's module names -> ours (applied in order to each key)
REPDISTILLER_KEYS = [(r"^conv1\.", "stem."), (r"^block1\.layer\.", "stages.0."), (r"^block2\.layer\.", "stages.1."),
                     (r"^block3\.layer\.", "stages.2."), (r"\.convShortcut\.", ".shortcut."), (r"^bn1\.", "head_bn.")]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """A RepDistiller / mdistiller WRN state dict with our key names."""
    return rename_keys(state_dict, REPDISTILLER_KEYS)


def _wrn(depth: int, widen: int, kwargs: dict) -> WideResNet:
    kwargs.pop("pretrained", None)  # no pretrained weights are registered: `harness teacher --import` brings them
    return WideResNet(depth, widen, **kwargs)


@register_model
def cifar_wrn40_2(pretrained=False, **kwargs):
    return _wrn(40, 2, kwargs)


@register_model
def cifar_wrn40_1(pretrained=False, **kwargs):
    return _wrn(40, 1, kwargs)


@register_model
def cifar_wrn16_2(pretrained=False, **kwargs):
    return _wrn(16, 2, kwargs)
