"""The paper's two HNE architectures, adapted to 28×28 / 32×32 inputs (HNE paper, Tables 2 and 3)."""
from __future__ import annotations

import math

from torch import nn

from selfens_core.backbones import BackboneParts

from .layers import InvertedResidual, SeparableBottleneck, conv_bn
from .model import HierarchicalEnsemble, build_tree

# (channels per group, stride, residual layers after the split block) for the four blocks of Table 2.
RESNET_BLOCKS = [(64, 1, 2), (128, 2, 3), (256, 2, 3), (256, 1, 4)]

# MobileNetV2 (expansion, channels, repeats, stride) grouped into the HNE's four blocks (Table 3). The first two
# strides of ImageNet MobileNetV2 (stem and the 24-channel stage) are 1 here, for 28×28 / 32×32 inputs [I].
MOBILENETV2_BLOCKS = [
    [(1, 16, 1, 1), (6, 24, 2, 1)],
    [(6, 32, 3, 2)],
    [(6, 64, 4, 2), (6, 96, 3, 1)],
    [(6, 160, 3, 2), (6, 320, 1, 1)],
]


def _ensemble_args(num_classes: int, in_chans: int) -> dict:
    return dict(num_classes=num_classes, in_chans=in_chans, input_size=(32, 32), min_input_size=8)


def _check_members(num_members: int, max_members: int) -> int:
    if num_members < 1 or num_members & (num_members - 1) or num_members > max_members:
        raise ValueError(f"num_members must be a power of two in [1, {max_members}], got {num_members}")
    return int(math.log2(num_members))


def _branches(num_blocks: int, num_members: int) -> list[int]:
    """Split at the last log2(N) blocks, so with N = 2^(blocks) every block splits as in the paper."""
    splits = _check_members(num_members, 2**num_blocks)
    return [2 ** max(0, b - (num_blocks - splits) + 1) for b in range(num_blocks)]


def resnet_member(num_classes: int, in_chans: int, width: float) -> BackboneParts:
    """One leaf of the CIFAR ResNet HNE: stem conv3×3 → 16, conv1×1 → 64, then four blocks of bottlenecks."""
    w = lambda c: max(int(c * width), 4)
    stem = nn.Sequential(conv_bn(in_chans, w(16), 3), conv_bn(w(16), w(64)))
    stages, cin = [], w(64)
    for channels, stride, layers in RESNET_BLOCKS:
        cout = w(channels)
        blocks = [SeparableBottleneck(cin, cout, stride, projection=True)]
        blocks += [SeparableBottleneck(cout, cout) for _ in range(layers)]
        stages.append(nn.Sequential(*blocks))
        cin = cout
    return BackboneParts(stem, stages, nn.Identity(), nn.Linear(cin, num_classes))


def mobilenetv2_member(num_classes: int, in_chans: int, width: float, head_channels: int) -> BackboneParts:
    """One leaf of the MobileNetV2 HNE; the last conv is a 1×1 conv to ``head_channels`` followed by a linear."""
    w = lambda c: max(8, int(c * width + 4) // 8 * 8)  # MobileNet channel rounding
    stem = conv_bn(in_chans, w(32), 3, 1, act=nn.ReLU6)
    stages, cin = [], w(32)
    for block in MOBILENETV2_BLOCKS:
        layers = []
        for expand, channels, repeats, stride in block:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, w(channels), stride if i == 0 else 1, expand))
                cin = w(channels)
        stages.append(nn.Sequential(*layers))
    neck = conv_bn(cin, head_channels, act=nn.ReLU6)
    return BackboneParts(stem, stages, neck, nn.Linear(head_channels, num_classes))


def hne_resnet(*, num_classes: int, in_chans: int = 3, num_members: int = 16, width: float = 1.0
               ) -> HierarchicalEnsemble:
    """The paper's CIFAR ResNet HNE (N=16); ``width=0.5`` is HNE_small."""
    branches = _branches(len(RESNET_BLOCKS), num_members)
    networks = [resnet_member(num_classes, in_chans, width) for _ in range(num_members)]
    return build_tree(networks, branches, **_ensemble_args(num_classes, in_chans))


def hne_resnet_small(*, num_classes: int, in_chans: int = 3, num_members: int = 16) -> HierarchicalEnsemble:
    """HNE_small: the CIFAR ResNet HNE with every channel count halved."""
    return hne_resnet(num_classes=num_classes, in_chans=in_chans, num_members=num_members, width=0.5)


def hne_mobilenetv2(*, num_classes: int, in_chans: int = 3, num_members: int = 8, width: float = 0.75,
                    head_channels: int = 960) -> HierarchicalEnsemble:
    """The paper's MobileNetV2 HNE (N=8, width 0.75) with early strides reduced for small images."""
    branches = _branches(len(MOBILENETV2_BLOCKS), num_members)
    networks = [mobilenetv2_member(num_classes, in_chans, width, head_channels) for _ in range(num_members)]
    return build_tree(networks, branches, **_ensemble_args(num_classes, in_chans))
