"""The timm plumbing shared by stem -> stages -> global average pool -> linear models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from timm.models._features import feature_take_indices


class StagedNet(nn.Module):
    """Subclasses set `stem`, `stages` (iterated in order), `fc`, `feature_info` (stem first)
    and may override `pre_pool`. Intermediates: 0 = stem output, i = output of stage i."""

    stem: nn.Module
    fc: nn.Module

    def stage_list(self) -> list[nn.Module]:
        return list(self.stages.values()) if isinstance(self.stages, nn.ModuleDict) else list(self.stages)

    def forward_intermediates(self, x, indices=None, stop_early: bool = False, intermediates_only: bool = False):
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        x = self.stem(x)
        intermediates = [x] if 0 in take else []
        for i, stage in enumerate(self.stage_list(), start=1):
            if stop_early and i > max_index:
                break
            x = stage(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_blocks(self, x) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """(final features, per stage [stage input, output of each block]); stages must be sequences."""
        x = self.stem(x)
        blocks = []
        for stage in self.stage_list():
            outputs = [x]
            for block in stage:
                x = block(x)
                outputs.append(x)
            blocks.append(outputs)
        return x, blocks

    def forward_features(self, x):
        x = self.stem(x)
        for stage in self.stage_list():
            x = stage(x)
        return x

    def pre_pool(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_head(self, x, pre_logits: bool = False):
        x = self.pre_pool(x).mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class PreReluTaps:
    """`forward_intermediates_pre_relu` for a StagedNet: per intermediate (the stem, then each stage)
    `pre_relu_step(i, unit, x)` gives (its output as forward_intermediates has it, its pre-ReLU tap),
    running the unit once. Subclasses also name `pre_relu_batchnorms()`, one BN per intermediate."""

    def pre_relu_step(self, i: int, unit: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward_intermediates_pre_relu(self, x, indices=None):
        """(final features, intermediates, the same intermediates before their last ReLU): the values
        and indices of forward_intermediates, and the pre-activations OFD and AB compare."""
        take, _ = feature_take_indices(len(self.feature_info), indices)
        post_relu, pre_relu = [], []
        for i, unit in enumerate([self.stem] + self.stage_list()):
            x, pre = self.pre_relu_step(i, unit, x)
            if i in take:
                post_relu.append(x)
                pre_relu.append(pre)
        return x, post_relu, pre_relu


def conv_bn_relu_pre_relu(unit: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, pre-ReLU) of a conv-BN-ReLU Sequential: the BN's output and its ReLU (not the
    unit's own in-place one, which would overwrite the tap)."""
    pre = unit[:-1](x)
    return torch.relu(pre), pre


def last_block_pre_relu(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, pre-ReLU) of a stage whose last block has `forward_pre_relu` and applies a ReLU to it."""
    pre = stage[-1].forward_pre_relu(stage[:-1](x))
    return torch.relu(pre), pre


def batchnorm_output(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """What `bn(x)` gives (batch statistics in training, running ones in eval), without updating the
    running statistics: for a tap on a BN that the forward pass runs again itself."""
    use_batch = bn.training or bn.running_mean is None
    return F.batch_norm(x, None if use_batch else bn.running_mean, None if use_batch else bn.running_var,
                        bn.weight, bn.bias, use_batch, 0.0, bn.eps)
