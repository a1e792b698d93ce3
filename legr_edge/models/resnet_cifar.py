"""CIFAR ResNets (He et al. 2016, section 4.2): 6n+2 layers, widths 16/32/64.

Downsampling shortcuts are 1x1 convolutions + BN (option B) rather than the
zero-padding of option A, so that every channel dependency is visible in the graph
and the shortcut can be pruned together with the residual chain. This adds about
0.26M MACs to ResNet-56 (125.75M instead of 125.5M).
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from legr_edge.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, in_planes = [], widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, w, 2 if (i > 0 and j == 0) else 1))
                in_planes = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(widths[2], num_classes)
        _init(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _make(depth: int):
    def factory(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_chans)
    factory.__name__ = f"resnet{depth}"
    return factory


for _depth in (20, 32, 56, 110):
    register_model(f"resnet{_depth}", (3, 32, 32), 10)(_make(_depth))
