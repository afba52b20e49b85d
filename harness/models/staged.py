"""The timm plumbing shared by stem -> stages -> global average pool -> linear models."""

from __future__ import annotations

import torch
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
