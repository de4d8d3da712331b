"""``supernet-mlp``: a wide MLP cut into K narrow, independent MLPs (the thesis's "network partitioning").

Removing every connection between K groups of neurons of a wide MLP leaves K narrow MLPs side by side: the wide
network with block-diagonal weight matrices. Each member is trained on its own (its own classifier, its own loss), and
a merge layer over all members' last hidden layers (``merge.py``) turns them back into one wide network whose last
layer alone is retrained.

Each member runs as its own small matrix products. On a CPU that is as fast as one batched matrix product over
stacked (K, out, in) weights, and faster in training; a grouped 1-D convolution is several times slower
(``benchmarks/supernet_mlp.py``). It also keeps each member's parameters apart (``members.<i>.*``), so that a phase
can give each member its own optimizer.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .base import MergeableEnsemble


class MemberMLP(nn.Module):
    """One member: flattened image → hidden ReLU layers (each followed by dropout) → linear classifier."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, drop_rate: float):
        super().__init__()
        widths = [in_features, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.head = nn.Linear(widths[-1], num_classes)
        self.drop_rate = drop_rate

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations (B, hidden[-1]): what ``head`` maps to logits."""
        for layer in self.hidden:
            x = F.dropout(F.relu(layer(x)), self.drop_rate, self.training)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class PartitionedMLP(MergeableEnsemble):
    """K independent MLPs of equal widths on the flattened image; ``members=k`` runs the first k."""

    def __init__(self, *, num_members: int, num_classes: int, in_chans: int, image_size: tuple[int, int],
                 hidden: Sequence[int], drop_rate: float):
        super().__init__(num_members=num_members, num_classes=num_classes, in_chans=in_chans, input_size=image_size,
                         min_input_size=min(image_size))
        in_features = in_chans * image_size[0] * image_size[1]
        self.members = nn.ModuleList(MemberMLP(in_features, hidden, num_classes, drop_rate)
                                     for _ in range(num_members))

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        expected = tuple(self.pretrained_cfg["input_size"][1:])
        if tuple(x.shape[-2:]) != expected:
            raise ValueError(f"this MLP takes {expected[0]}x{expected[1]} images (its first layer has one weight per "
                             f"pixel), got {x.shape[-2]}x{x.shape[-1]}; resize the images or build it with "
                             f"image_size={list(x.shape[-2:])}")
        return x.flatten(1)

    def forward_members(self, x: torch.Tensor, members: int) -> torch.Tensor:
        x = self._flatten(x)
        return torch.stack([member(x) for member in self.members[:members]])

    def forward_subset(self, x: torch.Tensor, indices: tuple[int, ...]) -> torch.Tensor:
        x = self._flatten(x)
        return torch.stack([self.members[i](x) for i in indices])

    def forward_features(self, x: torch.Tensor, members: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self._flatten(x)
        features = [member.features(x) for member in self.members[:members]]
        logits = torch.stack([member.head(f) for member, f in zip(self.members, features)])
        return logits, features

    def member_classifiers(self) -> list[nn.Linear]:
        return [member.head for member in self.members]

    def member_layers(self, index: int) -> list[nn.Module]:
        member = self.members[index]
        return [*member.hidden, member.head]


def supernet_mlp(*, num_classes: int, in_chans: int, num_members: int = 6, hidden: Sequence[int] = (200, 466, 466),
                 drop_rate: float = 0.2, image_size: int | Sequence[int] = 28) -> PartitionedMLP:
    """``num_members`` MLPs, each ``flattened image → hidden[0] → ... → hidden[-1] → num_classes`` with ReLU and
    dropout ``drop_rate`` after every hidden layer. The defaults are the thesis's Fashion-MNIST SuperModel, six
    200-466-466-10 members (its "Large network" 1200-2800-2800-10 cut in six); the single wide network it compares
    with is ``num_members=1, hidden=[480, 1120, 1120]``. ``image_size``: the input's height and width (an int for
    square images); the first layer has one weight per input value."""
    hidden = [int(h) for h in hidden]
    if not hidden or any(h < 1 for h in hidden):
        raise ValueError(f"hidden must list at least one layer width >= 1, got {hidden}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be an int or [height, width] >= 1, got {image_size}")
    return PartitionedMLP(num_members=num_members, num_classes=num_classes, in_chans=in_chans, image_size=size,
                          hidden=hidden, drop_rate=drop_rate)
