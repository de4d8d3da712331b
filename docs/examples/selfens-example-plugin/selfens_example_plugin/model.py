"""The ``example-multihead`` method: a small CNN trunk computed once, shared by ``num_members`` linear heads."""
from __future__ import annotations

import torch
from selfens_core import SelfEnsemble
from torch import nn


class MultiHeadCNN(SelfEnsemble):
    """Members share the trunk's features and differ in their heads, so ``members=k`` costs one trunk pass and k
    heads."""

    def __init__(self, *, num_members: int, num_classes: int, in_chans: int, width: int):
        super().__init__(num_members=num_members, num_classes=num_classes, in_chans=in_chans, min_input_size=4)
        self.trunk = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.heads = nn.ModuleList(nn.Linear(width, num_classes) for _ in range(num_members))

    def forward_members(self, x: torch.Tensor, members: int) -> torch.Tensor:
        features = self.trunk(x)
        return torch.stack([head(features) for head in self.heads[:members]])


def multihead(*, num_classes: int, in_chans: int, num_members: int = 4, width: int = 32) -> MultiHeadCNN:
    """The builder selfens calls for ``example-multihead``: the keyword arguments are the config's ``model.args``."""
    return MultiHeadCNN(num_members=num_members, num_classes=num_classes, in_chans=in_chans, width=width)
