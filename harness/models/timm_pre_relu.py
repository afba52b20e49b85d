"""Pre-ReLU taps (`forward_intermediates_pre_relu`, `pre_relu_batchnorms`; for ab, ofd, reviewkd) for
timm's own ResNets (`resnet18`, `resnet34`, `resnet50`, ...) and MobileNetV1 (`mobilenetv1_100`), the
ImageNet pairs' models, without renaming them (run keys carry the timm name): `build_model` gives a
built model of those classes the subclass here that adds the two methods (`with_pre_relu_taps`).

The tap at each index is the input of the activation module that closes that intermediate,
captured by a forward pre-hook around timm's own `forward_intermediates` (whose outputs are returned
unchanged as the intermediates):
- ResNet (BasicBlock / Bottleneck stages, no attention), index 0 = the stem's bn1 output (before
  act1); 1..4 = each stage's last block before its final ReLU (act2 / act3), the residual sum
  bn2(.) + shortcut / bn3(.) + shortcut: mdistiller's ImageNet ResNet `preact_feats` (its blocks leave
  that ReLU to the next block) and `get_bn_before_relu` (`layer{2,3,4}[-1].bn2` / `.bn3`; its list
  leaves out layer1, which pre_relu_batchnorms here includes, `bn1` for 0).
- MobileNetV1 (EfficientNet built of depthwise-separable blocks with no skip): index i = the last
  block of stage i, its pointwise BN's output before that BN's activation (`bn2`, a BatchNormAct2d):
  mdistiller's mobilenetv1 `preact_feats` (`self.model[3][:-1](...)`: the block without its ReLU)
  and `get_bn_before_relu` (`self.model[3][-2]`, ...). timm's activation there is ReLU6, not
  mdistiller's ReLU: the tap is the same BN output; OFD's margin assumes the ReLU.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models._efficientnet_blocks import DepthwiseSeparableConv
from timm.models._features import feature_take_indices
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import BasicBlock, Bottleneck, ResNet


class TimmPreReluTaps:
    """The two methods over `closing_activations()` (one module per intermediate index, run once) and
    `pre_relu_batchnorms()`."""

    def closing_activations(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward_intermediates_pre_relu(self, x, indices=None):
        """(final features, intermediates, the same intermediates before their last ReLU): timm's
        forward_intermediates' values and indices, and the inputs of the activations that close them."""
        take, _ = feature_take_indices(len(self.feature_info), indices)
        acts, captured = self.closing_activations(), {}

        def capture(i):
            def hook(module, args):
                captured[i] = args[0]
                return (args[0].clone(),)  # the activation is in place: it must not overwrite the tap
            return hook

        handles = [acts[i].register_forward_pre_hook(capture(i)) for i in sorted(set(take))]
        try:
            final, intermediates = self.forward_intermediates(x, indices=indices)
        finally:
            for handle in handles:
                handle.remove()
        return final, intermediates, [captured[i] for i in sorted(set(take))]


class PreReluResNet(TimmPreReluTaps, ResNet):
    def closing_activations(self) -> list[nn.Module]:
        return [self.act1] + [_last_block(self, i).act2 if isinstance(_last_block(self, i), BasicBlock)
                              else _last_block(self, i).act3 for i in range(1, 5)]

    def pre_relu_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per intermediate, the BN before its last ReLU: the stem's bn1, then each stage's last block's
        bn2 (BasicBlock) / bn3 (Bottleneck), which the residual sum follows."""
        return [self.bn1] + [_last_block(self, i).bn2 if isinstance(_last_block(self, i), BasicBlock)
                             else _last_block(self, i).bn3 for i in range(1, 5)]


class PreReluMobileNetV1(TimmPreReluTaps, EfficientNet):
    def closing_activations(self) -> list[nn.Module]:
        return [bn.act for bn in self.pre_relu_batchnorms()]

    def pre_relu_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per intermediate, the last block's pointwise BN (a BatchNormAct2d: BN, then its activation)."""
        return [self.blocks[end - 1][-1].bn2 for end in self.stage_ends]


def _last_block(net: ResNet, stage: int) -> nn.Module:
    return getattr(net, f"layer{stage}")[-1]


def _plain_resnet(net: nn.Module) -> bool:
    """timm's ResNet of plain basic or bottleneck blocks: the BN, the shortcut's sum, the ReLU."""
    return type(net) is ResNet and all(
        type(block) in (BasicBlock, Bottleneck) and block.se is None
        and (block.drop_path is None or isinstance(block.drop_path, nn.Identity))
        for stage in range(1, 5) for block in getattr(net, f"layer{stage}"))


def _mobilenetv1(net: nn.Module) -> bool:
    """timm's EfficientNet built of depthwise-separable blocks without skips whose pointwise BN ends in
    an activation (MobileNetV1)."""
    return type(net) is EfficientNet and all(
        type(block) is DepthwiseSeparableConv and not block.has_skip and isinstance(block.bn2.drop, nn.Identity)
        and not isinstance(block.bn2.act, nn.Identity) for stage in net.blocks for block in stage)


def with_pre_relu_taps(net: nn.Module) -> nn.Module:
    """`net`, if it is one of the timm models above, as the subclass with pre-ReLU taps (same
    parameters, buffers and forward); any other model as it is."""
    if _plain_resnet(net):
        net.__class__ = PreReluResNet
    elif _mobilenetv1(net):
        net.__class__ = PreReluMobileNetV1
    return net
