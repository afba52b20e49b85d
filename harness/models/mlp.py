"""The MNIST multilayer perceptrons of Hinton et al. (2015) as the NMT paper uses them:
two hidden layers of ReLU units (Hinton-1200: 1200 units, Hinton-800: 800 units).

Intermediates (timm indices): 0 = first hidden layer, 1 = second hidden layer, post-ReLU,
as (N, units) vectors.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models import register_model
from timm.models._features import feature_take_indices


class HintonMLP(nn.Module):
    def __init__(self, hidden: int, num_classes: int = 10, in_chans: int = 1, img_size: int = 28,
                 depth: int = 2, **_timm_kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = hidden
        dims = [in_chans * img_size * img_size] + [hidden] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.fc = nn.Linear(hidden, num_classes)
        self.feature_info = [dict(num_chs=hidden, reduction=1, module=f"hidden.{i}") for i in range(depth)]

    def forward_intermediates(self, x, indices=None, stop_early: bool = False, intermediates_only: bool = False):
        take, max_index = feature_take_indices(len(self.hidden), indices)
        intermediates = []
        x = x.flatten(1)
        for i, layer in enumerate(self.hidden):
            if stop_early and i > max_index:
                break
            x = torch.relu(layer(x))
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_features(self, x):
        x = x.flatten(1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return x

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_head(self, x, pre_logits: bool = False):
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model
def mlp_hinton1200(pretrained=False, **kwargs):
    return HintonMLP(1200, **kwargs)


@register_model
def mlp_hinton800(pretrained=False, **kwargs):
    return HintonMLP(800, **kwargs)
