"""The CIFAR Wide ResNet (Zagoruyko & Komodakis 2016, WRN-d-k), registered with timm.

timm has ImageNet wide ResNets (``wide_resnet50_2``: bottlenecks, stride 32) but not the CIFAR WRN-d-k that many
self-ensemble papers report on (three stages of pre-activation basic blocks, widths 16k/32k/64k, stride 4 in all).
It is defined here once and registered in timm's model registry (``wrn16_4``, ``wrn28_10``, ``wrn40_2``), so every
method's timm path builds it by name through :func:`selfens_core.factory.create_backbone`, exactly as it builds a
timm ResNet: ``deep-ensemble-wrn28_10``, a method's ``<method>-wrn28_10`` family name, and the ``wide_resnet``
backbone adapter (:mod:`.backbones`) that splits it into stem, stages, neck and classifier. :mod:`.backbones`
imports this module before it asks timm for a name, so the names exist whenever selfens looks them up.

The entry points take timm's usual keywords (``num_classes``, ``in_chans``) and, as timm's own ones do, overrides of
their defining arguments: ``timm.create_model("wrn28_10", depth=10, widen_factor=1)`` is a tiny WRN for tests.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class WideBasic(nn.Module):
    """A pre-activation basic block: BN-ReLU-conv3×3(stride)-[dropout]-BN-ReLU-conv3×3, plus the input, or a 1×1
    strided conv of the pre-activated input when the shape changes (as in the WRN authors' code)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout_rate: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate else nn.Identity()
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.dropout(self.conv1(act)))))
        return out + (self.shortcut(act) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32×32 images: conv3×3 (16) → three stages of (depth − 4) / 6 blocks of
    width 16k, 32k (stride 2), 64k (stride 2) → BN-ReLU → global average pool → linear. Convolutions have no bias;
    He (fan-out) initialisation, BatchNorm 1/0, linear bias 0."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, *, num_classes: int = 1000, in_chans: int = 3,
                 dropout_rate: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"a WRN's depth is 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), not {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, not {widen_factor}")
        blocks, widths = (depth - 4) // 6, [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes, self.num_features = num_classes, widths[-1]
        self.conv1 = nn.Conv2d(in_chans, 16, 3, padding=1, bias=False)
        in_planes, stages = 16, []
        for width, stride in zip(widths, (1, 2, 2)):
            layers = []
            for i in range(blocks):
                layers.append(WideBasic(in_planes, width, stride if i == 0 else 1, dropout_rate))
                in_planes = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(widths[-1])
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(F.relu(self.bn(x)).mean((2, 3)))


def _create(defaults: dict[str, Any], pretrained: bool, kwargs: dict[str, Any]) -> WideResNet:
    if pretrained:
        raise ValueError("the CIFAR WRNs have no pretrained weights in timm; use pretrained=False")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm.create_model passes them
        kwargs.pop(key, None)
    return WideResNet(**{**defaults, **kwargs})


def wrn16_4(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-16-4 (2.7 M parameters for 10 classes)."""
    return _create(dict(depth=16, widen_factor=4), pretrained, kwargs)


def wrn28_10(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-28-10 (36.5 M parameters for 10 classes)."""
    return _create(dict(depth=28, widen_factor=10), pretrained, kwargs)


def wrn40_2(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-40-2 (2.2 M parameters for 10 classes)."""
    return _create(dict(depth=40, widen_factor=2), pretrained, kwargs)


def _register() -> None:
    from timm.models import register_model

    for entry in (wrn16_4, wrn28_10, wrn40_2):
        register_model(entry)


_register()
