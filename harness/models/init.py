"""Parameter initialisation schemes a paper's recipe prescribes (`models.NAME.init` in benchmarks.yaml).

A model without `init` keeps its architecture's own initialisation (PyTorch's defaults, or what the
timm build function sets). A scheme draws every weight and bias of every convolution and linear
layer, as "the parameters of the networks were initialised randomly in U(a, b)" reads (LPL §V-A);
batch-norm affine parameters keep their (1, 0) start.
"""

from __future__ import annotations

import torch
from torch import nn

INITIALISED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

DRAW = {
    "uniform": lambda tensor, scheme: nn.init.uniform_(tensor, scheme.a, scheme.b),
    "normal": lambda tensor, scheme: nn.init.normal_(tensor, scheme.mean, scheme.std),
}


@torch.no_grad()
def initialise(model: nn.Module, scheme) -> int:
    """Draw every conv/linear weight and bias from `scheme` (a spec.InitSpec); returns how many
    tensors were drawn."""
    drawn = 0
    for module in model.modules():
        if isinstance(module, INITIALISED):
            for tensor in (module.weight, module.bias):
                if tensor is not None:
                    DRAW[scheme.kind](tensor, scheme)
                    drawn += 1
    return drawn
