"""Tiny models and settings shared by the workstation tests.

Torch is imported inside the functions, not here: tests/conftest.py imports this
module, and the device tests (tests/device) must run where torch is not installed.
"""
from __future__ import annotations

import functools
from typing import Any

TINY_SEARCH = ["--preset", "smoke", "--pretrain-epochs", "1", "--population", "3", "--sample", "2",
               "--candidates", "4", "--tau", "2", "--finetune-epochs", "1", "--targets", "0.6,0.4",
               "--round-to", "2"]


@functools.lru_cache(maxsize=None)
def concat_net_class() -> type:
    """A user-style CNN with everything coupling must handle: concat, depthwise, residual add."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class ConcatDepthwiseNet(nn.Module):
        def __init__(self, num_classes: int = 10, in_chans: int = 3):
            super().__init__()
            self.a = nn.Conv2d(in_chans, 12, 3, padding=1, bias=False)
            self.bn_a = nn.BatchNorm2d(12)
            self.b = nn.Conv2d(in_chans, 8, 3, padding=1, bias=False)
            self.bn_b = nn.BatchNorm2d(8)
            self.dw = nn.Conv2d(20, 20, 3, stride=2, padding=1, groups=20, bias=False)
            self.bn_dw = nn.BatchNorm2d(20)
            self.pw = nn.Conv2d(20, 16, 1, bias=False)
            self.bn_pw = nn.BatchNorm2d(16)
            self.res = nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.bn_res = nn.BatchNorm2d(16)
            self.head = nn.Conv2d(16, 24, 1)
            self.fc = nn.Linear(24, num_classes)

        def forward(self, x):
            y = torch.cat([F.relu(self.bn_a(self.a(x))), F.relu(self.bn_b(self.b(x)))], dim=1)
            y = F.relu(self.bn_dw(self.dw(y)))
            y = self.bn_pw(self.pw(y))
            y = F.relu(y + self.bn_res(self.res(y)))
            y = F.relu(self.head(y))
            return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))

    return ConcatDepthwiseNet


def make_concat_net(num_classes: int = 10, in_chans: int = 3) -> Any:
    """Factory used as ``--model tests.helpers:make_concat_net``."""
    return concat_net_class()(num_classes, in_chans)


def randomize_bn(model: Any, seed: int = 0) -> Any:
    """Give every BatchNorm non-trivial statistics so masking/pruning errors would show."""
    import torch
    import torch.nn as nn

    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
    return model.eval()
