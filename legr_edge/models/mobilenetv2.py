"""MobileNetV2 (Sandler et al. 2018), ImageNet layout and a CIFAR variant.

The CIFAR variant uses stride 1 in the stem and in the first two down-sampling
stages (the common adaptation for 32x32 inputs), so the last feature map is 4x4.
"""
from __future__ import annotations

import torch.nn as nn

from legr_edge.models.registry import IMAGENET_MEAN, IMAGENET_STD, register_model

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, cifar: bool = False,
                 dropout: float = 0.2):
        super().__init__()
        stem_stride = 1 if cifar else 2
        layers, cin = [_conv_bn(in_chans, 32, 3, stem_stride)], 32
        for i, (t, c, n, s) in enumerate(_SETTINGS):
            if cifar and i in (1, 2):
                s = 1
            for j in range(n):
                layers.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("mobilenetv2_cifar", (3, 32, 32), 10)
def mobilenetv2_cifar(num_classes: int = 10, in_chans: int = 3) -> MobileNetV2:
    return MobileNetV2(num_classes, in_chans, cifar=True)


@register_model("mobilenetv2", (3, 224, 224), 1000, IMAGENET_MEAN, IMAGENET_STD)
def mobilenetv2(num_classes: int = 1000, in_chans: int = 3) -> MobileNetV2:
    return MobileNetV2(num_classes, in_chans, cifar=False)
