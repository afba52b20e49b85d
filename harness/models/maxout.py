"""Maxout convolutional networks (Goodfellow et al. 2013) as FitNets (Romero et al. 2015) and
the LPL paper use them: blocks of maxout conv layers ("same" padding), each block ending in a
max-pool; then an optional maxout fully connected layer and a linear classifier.

Intermediates (timm indices): one per conv layer, after its maxout (and after the block's
pool for a block's last layer).
"""

from __future__ import annotations

from torch import nn
from timm.models import register_model
from timm.models._features import feature_take_indices


class MaxoutConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, pieces: int):
        super().__init__()
        self.out_ch, self.pieces = out_ch, pieces
        self.conv = nn.Conv2d(in_ch, out_ch * pieces, kernel, padding=kernel // 2)

    def forward(self, x):
        y = self.conv(x)
        return y.view(y.shape[0], self.out_ch, self.pieces, *y.shape[2:]).max(dim=2).values


class MaxoutNet(nn.Module):
    def __init__(self, blocks, pieces: int | list = 2, kernel: int | list = 3, pool: int | list = 2,
                 fc: tuple | None = None, num_classes: int = 10, in_chans: int = 1, img_size: int = 28,
                 **_timm_kwargs):
        """blocks: a list of blocks, each a list of output channel counts; `pieces` and `kernel`
        one value or one per layer; `pool` one size or one per block; fc: (units, pieces) of a
        maxout fully connected layer, or None."""
        super().__init__()
        self.num_classes = num_classes
        widths = [c for block in blocks for c in block]
        per_layer = lambda v: v if isinstance(v, list) else [v] * len(widths)  # noqa: E731
        kernels, pieces = per_layer(kernel), per_layer(pieces)
        pool_sizes = pool if isinstance(pool, list) else [pool] * len(blocks)
        layers, pools, in_ch, size, i = [], [], in_chans, img_size, 0
        for block, block_pool in zip(blocks, pool_sizes):
            for j, out_ch in enumerate(block):
                layers.append(MaxoutConv(in_ch, out_ch, kernels[i], pieces[i]))
                last = j == len(block) - 1
                pools.append(nn.MaxPool2d(block_pool, block_pool) if last else nn.Identity())
                size = size // block_pool if last else size
                in_ch, i = out_ch, i + 1
        self.layers, self.pools = nn.ModuleList(layers), nn.ModuleList(pools)
        flat = in_ch * size * size
        self.fc_maxout = None
        if fc is not None:
            self.fc_maxout, self.fc_pieces = nn.Linear(flat, fc[0] * fc[1]), fc[1]
            flat = fc[0]
        self.num_features = flat
        self.fc = nn.Linear(flat, num_classes)
        self.feature_info = [dict(num_chs=c, reduction=1, module=f"layers.{k}") for k, c in enumerate(widths)]

    def forward_intermediates(self, x, indices=None, stop_early: bool = False, intermediates_only: bool = False):
        take, max_index = feature_take_indices(len(self.layers), indices)
        intermediates = []
        for i, (layer, pool) in enumerate(zip(self.layers, self.pools)):
            if stop_early and i > max_index:
                break
            x = pool(layer(x))
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_features(self, x):
        for layer, pool in zip(self.layers, self.pools):
            x = pool(layer(x))
        return x

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_head(self, x, pre_logits: bool = False):
        x = x.flatten(1)
        if self.fc_maxout is not None:
            y = self.fc_maxout(x)
            x = y.view(y.shape[0], -1, self.fc_pieces).max(dim=2).values
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _net(**kwargs):
    kwargs.pop("pretrained", None)
    return MaxoutNet(**kwargs)


@register_model
def maxout_mnist_teacher(pretrained=False, **kwargs):
    """LPL Table III / Romero §4.2 MNIST teacher: 3 maxout conv layers + classifier (~350K; paper ~361K)."""
    return _net(blocks=[[48], [48], [24]], pieces=[2, 2, 4], kernel=[7, 7, 5], **kwargs)


@register_model
def maxout_mnist_student(pretrained=False, **kwargs):
    """LPL Table III / Romero §4.2 MNIST student: 6 maxout conv layers, twice as deep (~30K)."""
    return _net(blocks=[[16, 16], [20, 20], [16, 16]], kernel=3, **kwargs)


@register_model
def maxout_cifar_teacher(pretrained=False, **kwargs):
    """LPL Tables I, II, V teacher (Goodfellow et al. CIFAR-10 maxout): 3 conv layers + maxout FC."""
    return _net(blocks=[[96], [192], [192]], kernel=[8, 8, 5], pool=[2, 2, 2], fc=(500, 5), **kwargs)


# FitNet students 1-4 (Romero Table 1; LPL Table II): 3x3 maxout conv blocks, pools 2, 2, 8
@register_model
def fitnet_cifar_s1(pretrained=False, **kwargs):
    return _net(blocks=[[16, 16, 16], [32, 32, 32], [48, 48, 64]], pool=[2, 2, 8], **kwargs)


@register_model
def fitnet_cifar_s2(pretrained=False, **kwargs):
    return _net(blocks=[[16, 32, 32], [48, 64, 80], [96, 96, 128]], pool=[2, 2, 8], **kwargs)


@register_model
def fitnet_cifar_s3(pretrained=False, **kwargs):
    return _net(blocks=[[32, 48, 64, 64], [80, 80, 80, 80], [128, 128, 128]], pool=[2, 2, 8], **kwargs)


@register_model
def fitnet_cifar_s4(pretrained=False, **kwargs):
    return _net(blocks=[[32, 32, 32, 48, 48], [80] * 6, [128] * 6], pool=[2, 2, 8], **kwargs)
