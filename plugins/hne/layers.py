"""Plain building blocks of the paper's member networks (one leaf's path); the tree stacks copies of them."""
from __future__ import annotations

from torch import nn


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act(inplace=True)) if act else nn.Sequential(*layers)


class SeparableBottleneck(nn.Module):
    """ResNet bottleneck whose 3×3 conv is depthwise-separable (HNE paper, Table 2), inner width ``cout // 4``.
    ``projection`` gives the 1×1 conv shortcut used by the split blocks. The last BatchNorm scale starts at zero
    (as timm's ``zero_init_last``), our choice: the paper is silent, and it makes short runs train much faster."""

    def __init__(self, cin: int, cout: int, stride: int = 1, projection: bool = False):
        super().__init__()
        mid = max(cout // 4, 1)
        self.body = nn.Sequential(
            conv_bn(cin, mid),
            conv_bn(mid, mid, 3, stride, groups=mid),
            conv_bn(mid, mid),
            conv_bn(mid, cout, act=None),
        )
        self.shortcut = conv_bn(cin, cout, 1, stride, act=None) if projection or stride != 1 or cin != cout \
            else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        nn.init.zeros_(self.body[-1][1].weight)  # each residual starts as identity: deep trees train from step one

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: 1×1 expand, 3×3 depthwise, 1×1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn(cin, hidden, act=nn.ReLU6)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6), conv_bn(hidden, cout, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        if self.residual:
            nn.init.zeros_(self.body[-1][1].weight)  # start as identity, like the bottlenecks above

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)
