"""Minimal replicas of RepDistiller's CIFAR models (HobbitLong/RepDistiller, models/): the same
module names (so their state dicts carry RepDistiller's keys), shapes and forward passes, written
for the tests from the structure of those files, independent of harness/models. A test compares
our models' parameter counts, key mapping and logits against them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bn(c):
    return nn.BatchNorm2d(c)


def conv(i, o, k, s=1, g=1, bias=False):
    return nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=bias)


# ---- models/resnet.py (resnet8 ... resnet110, resnet8x4, resnet32x4) --------------------------------
class ResBasic(nn.Module):
    def __init__(self, i, o, s):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = conv(i, o, 3, s), bn(o), conv(o, o, 3), bn(o)
        self.downsample = nn.Sequential(conv(i, o, 1, s), bn(o)) if s != 1 or i != o else None

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, depth, filters, num_classes=100):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1, self.bn1 = conv(3, filters[0], 3), bn(filters[0])
        chans = filters[0]
        for li, f in enumerate(filters[1:], 1):
            setattr(self, f"layer{li}", nn.Sequential(*[ResBasic(chans if b == 0 else f, f, 2 if li > 1 and b == 0 else 1)
                                                        for b in range(n)]))
            chans = f
        self.fc = nn.Linear(filters[3], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.avg_pool2d(x, 8).flatten(1))


# ---- models/wrn.py --------------------------------------------------------------------------------------
class WrnBlock(nn.Module):
    def __init__(self, i, o, s):
        super().__init__()
        self.bn1, self.conv1, self.bn2, self.conv2 = bn(i), conv(i, o, 3, s), bn(o), conv(o, o, 3)
        self.equal = i == o
        self.convShortcut = None if self.equal else conv(i, o, 1, s)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + (x if self.equal else self.convShortcut(a))


class WrnStage(nn.Module):
    def __init__(self, n, i, o, s):
        super().__init__()
        self.layer = nn.Sequential(*[WrnBlock(i if b == 0 else o, o, s if b == 0 else 1) for b in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth, k, num_classes=100):
        super().__init__()
        n, c = (depth - 4) // 6, [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = conv(3, 16, 3)
        self.block1, self.block2, self.block3 = WrnStage(n, c[0], c[1], 1), WrnStage(n, c[1], c[2], 2), WrnStage(n, c[2], c[3], 2)
        self.bn1, self.fc = bn(c[3]), nn.Linear(c[3], num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(F.avg_pool2d(F.relu(self.bn1(x)), 8).flatten(1))


# ---- models/vgg.py (vgg13_bn, vgg8_bn) -------------------------------------------------------------------
def vgg_block(cfg, i):
    layers = []
    for v in cfg:
        layers += [nn.Conv2d(i, v, 3, padding=1), bn(v), nn.ReLU(inplace=True)]
        i = v
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, cfg, num_classes=100):
        super().__init__()
        prev = 3
        for b, widths in enumerate(cfg):
            setattr(self, f"block{b}", vgg_block(widths, prev))
            prev = widths[-1]
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        x = F.relu(self.block0(x))
        for b in (1, 2, 3):
            x = F.relu(getattr(self, f"block{b}")(F.max_pool2d(x, 2)))
        x = F.relu(self.block4(x))  # 32x32 input: no pool3
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


VGG_CFG = {"vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
           "vgg8": [[64], [128], [256], [512], [512]]}


# ---- models/mobilenetv2.py (mobile_half) -----------------------------------------------------------------
class InvRes(nn.Module):
    def __init__(self, i, o, s, t):
        super().__init__()
        m = i * t
        self.use_res = s == 1 and i == o
        self.conv = nn.Sequential(conv(i, m, 1), bn(m), nn.ReLU(inplace=True), conv(m, m, 3, s, g=m), bn(m),
                                  nn.ReLU(inplace=True), conv(m, o, 1), bn(o))

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileHalf(nn.Module):
    SETTING = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]

    def __init__(self, num_classes=100, w=0.5):
        super().__init__()
        c = int(32 * w)
        self.conv1 = nn.Sequential(conv(3, c, 3, 2), bn(c), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList()
        for t, ch, n, s in self.SETTING:
            o = int(ch * w)
            self.blocks.append(nn.Sequential(*[InvRes(c if b == 0 else o, o, s if b == 0 else 1, t) for b in range(n)]))
            c = o
        self.conv2 = nn.Sequential(conv(c, 1280, 1), bn(1280), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(1280, num_classes))

    def forward(self, x):
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(F.avg_pool2d(self.conv2(x), 2, ceil_mode=True).flatten(1))


# ---- models/resnetv2.py (ResNet50) -----------------------------------------------------------------------
class Bottle(nn.Module):
    def __init__(self, i, p, s):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = conv(i, p, 1), bn(p), conv(p, p, 3, s), bn(p)
        self.conv3, self.bn3 = conv(p, 4 * p, 1), bn(4 * p)
        self.shortcut = nn.Sequential(conv(i, 4 * p, 1, s), bn(4 * p)) if s != 1 or i != 4 * p else nn.Sequential()

    def forward(self, x):
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet50(nn.Module):
    def __init__(self, num_classes=100):
        super().__init__()
        self.conv1, self.bn1 = conv(3, 64, 3), bn(64)
        i = 64
        for li, (n, p) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), 1):
            setattr(self, f"layer{li}", nn.Sequential(*[Bottle(i if b == 0 else 4 * p, p, (1 if li == 1 else 2) if b == 0 else 1)
                                                        for b in range(n)]))
            i = 4 * p
        self.linear = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ---- models/ShuffleNetv1.py (ShuffleV1) ------------------------------------------------------------------
def shuffle(x, g):
    n, c, h, w = x.shape
    return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class V1Bottleneck(nn.Module):
    def __init__(self, i, o, s, groups):
        super().__init__()
        m, self.s = o // 4, s
        self.g = 1 if i == 24 else groups
        self.conv1, self.bn1 = conv(i, m, 1, g=self.g), bn(m)
        self.conv2, self.bn2 = conv(m, m, 3, s, g=m), bn(m)
        self.conv3, self.bn3 = conv(m, o, 1, g=groups), bn(o)

    def forward(self, x):
        out = F.relu(self.bn2(self.conv2(shuffle(F.relu(self.bn1(self.conv1(x))), self.g))))
        out = self.bn3(self.conv3(out))
        return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1) if self.s == 2 else out + x)


class ShuffleV1(nn.Module):
    def __init__(self, num_classes=100):
        super().__init__()
        self.conv1, self.bn1 = conv(3, 24, 1), bn(24)
        i = 24
        for li, (o, n) in enumerate(zip((240, 480, 960), (4, 8, 4)), 1):
            blocks = []
            for b in range(n):
                blocks.append(V1Bottleneck(i, o - (i if b == 0 else 0), 2 if b == 0 else 1, 3))
                i = o
            setattr(self, f"layer{li}", nn.Sequential(*blocks))
        self.linear = nn.Linear(960, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.linear(F.avg_pool2d(x, 4).flatten(1))


# ---- models/ShuffleNetv2.py (ShuffleV2, net_size 1) ------------------------------------------------------
class V2Basic(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c // 2
        self.conv1, self.bn1, self.conv2, self.bn2 = conv(h, h, 1), bn(h), conv(h, h, 3, g=h), bn(h)
        self.conv3, self.bn3 = conv(h, h, 1), bn(h)

    def forward(self, x):
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))
        return shuffle(torch.cat([x1, F.relu(self.bn3(self.conv3(out)))], 1), 2)


class V2Down(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        m = o // 2
        self.conv1, self.bn1, self.conv2, self.bn2 = conv(i, i, 3, 2, g=i), bn(i), conv(i, m, 1), bn(m)
        self.conv3, self.bn3, self.conv4, self.bn4 = conv(i, m, 1), bn(m), conv(m, m, 3, 2, g=m), bn(m)
        self.conv5, self.bn5 = conv(m, m, 1), bn(m)

    def forward(self, x):
        a = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        b = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x))))))))
        return shuffle(torch.cat([a, b], 1), 2)


class ShuffleV2(nn.Module):
    def __init__(self, num_classes=100):
        super().__init__()
        self.conv1, self.bn1 = conv(3, 24, 1), bn(24)
        i = 24
        for li, (o, n) in enumerate(zip((116, 232, 464), (3, 7, 3)), 1):
            setattr(self, f"layer{li}", nn.Sequential(V2Down(i, o), *[V2Basic(o) for _ in range(n)]))
            i = o
        self.conv2, self.bn2 = conv(464, 1024, 1), bn(1024)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.linear(F.avg_pool2d(F.relu(self.bn2(self.conv2(x))), 4).flatten(1))


# our timm name -> a replica of the RepDistiller model it must equal (100 classes)
REPLICAS = {
    "cifar_resnet56": lambda: ResNet(56, [16, 16, 32, 64]),
    "cifar_resnet110": lambda: ResNet(110, [16, 16, 32, 64]),
    "cifar_resnet8x4": lambda: ResNet(8, [32, 64, 128, 256]),
    "cifar_resnet32x4": lambda: ResNet(32, [32, 64, 128, 256]),
    "cifar_wrn40_2": lambda: WideResNet(40, 2),
    "cifar_wrn16_2": lambda: WideResNet(16, 2),
    "cifar_wrn40_1": lambda: WideResNet(40, 1),
    "cifar_vgg13_bn": lambda: VGG(VGG_CFG["vgg13"]),
    "cifar_vgg8_bn": lambda: VGG(VGG_CFG["vgg8"]),
    "cifar_mobilenetv2_half": MobileHalf,
    "cifar_resnet50": ResNet50,
    "cifar_shufflenetv1": ShuffleV1,
    "cifar_shufflenetv2": ShuffleV2,
}
