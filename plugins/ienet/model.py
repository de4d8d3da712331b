"""The intra-ensemble: N sub-networks of one backbone, each a width ratio (and optionally a depth path) through
shared weights (IENet, Algorithm 1)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from selfens_core import SelfEnsemble
from selfens_core.backbones import BackboneParts

from .channels import ChannelIndices
from .couplings import Couplings, find_couplings
from .layers import SlicedConv2d, SlicedLinear, Switch, SwitchableBatchNorm2d


class DepthPaths(nn.Module):
    """The order in which each sub-network runs each stage's blocks, as buffers ``member{n}_stage{i}``.

    With ``depth``, every sub-network narrower than the full network does random skip + shuffle layer together, in
    each stage with at least two blocks that can be skipped (identity residual, same shape in and out): it skips one
    of them at random and, if two or more remain, swaps two of those. Other blocks keep their place.
    """

    def __init__(self, skippable: list[list[bool]], widths: Sequence[float], depth: bool):
        super().__init__()
        for n, width in enumerate(widths):
            for i, flags in enumerate(skippable):
                order = _skip_and_shuffle(flags) if depth and width < 1 else list(range(len(flags)))
                self.register_buffer(f"member{n}_stage{i}", torch.tensor(order, dtype=torch.int64))

    def order(self, member: int, stage: int) -> list[int]:
        return getattr(self, f"member{member}_stage{stage}").tolist()


def _skip_and_shuffle(flags: list[bool]) -> list[int]:
    candidates = [j for j, can in enumerate(flags) if can]
    if len(candidates) < 2:
        return list(range(len(flags)))
    skipped = candidates.pop(int(torch.randint(len(candidates), ())))
    order = [j for j in range(len(flags)) if j != skipped]
    if len(candidates) >= 2:
        a, b = (candidates[int(i)] for i in torch.randperm(len(candidates))[:2])
        pa, pb = order.index(a), order.index(b)
        order[pa], order[pb] = b, a
    return order


class IntraEnsemble(SelfEnsemble):
    """N sub-networks sharing one backbone's weights. Sub-network ``n`` keeps ``widths[n]`` of the channels of every
    channel space (``selection``: rc, ro, sc, slimmable), has its own BatchNorms, and with ``depth`` its own block
    order. ``members=k`` runs the first ``k`` sub-networks, each its own forward pass.
    """

    def __init__(self, parts: BackboneParts, *, widths: Sequence[float], selection: str = "rc", depth: bool = False,
                 num_classes: int, in_chans: int, input_size: tuple[int, int] = (32, 32), min_input_size: int = 8):
        if not widths or not all(0 < w <= 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of ratios in (0, 1], got {list(widths)}")
        super().__init__(num_members=len(widths), num_classes=num_classes, in_chans=in_chans,
                         input_size=input_size, min_input_size=min_input_size)
        couplings = find_couplings(parts, in_chans, num_classes, size=max(input_size))
        self.widths, self.selection = list(widths), selection
        self.channels = ChannelIndices(couplings, widths, selection)
        sliced = _sliced_layers(couplings, self.channels, len(widths))
        self.stem = _replace(parts.stem, sliced)
        self.stages = nn.ModuleList(
            nn.ModuleList(_replace(b, sliced) for b in (s if isinstance(s, nn.Sequential) else [s]))
            for s in parts.stages)
        self.neck = _replace(parts.neck, sliced)
        self.classifier = _replace(parts.classifier, sliced)
        self.paths = DepthPaths(couplings.skippable, widths, depth)

    def forward_members(self, x: torch.Tensor, members: int) -> torch.Tensor:
        return self.forward_subset(x, tuple(range(members)))

    def forward_subset(self, x: torch.Tensor, indices: tuple[int, ...]) -> torch.Tensor:
        return torch.stack([self.member_forward(x, n) for n in indices])

    def member_forward(self, x: torch.Tensor, member: int) -> torch.Tensor:
        """Logits (B, C) of sub-network ``member`` alone."""
        with self.channels.use(member):
            x = self.stem(x)
            for i, stage in enumerate(self.stages):
                for j in self.paths.order(member, i):
                    x = stage[j](x)
            return self.classifier(self.neck(x).mean((2, 3)))


def _sliced_layers(couplings: Couplings, channels: ChannelIndices, num_members: int) -> dict[int, nn.Module]:
    """The sliced replacement of every layer with weights, by ``id`` of the original module."""
    switch = Switch(channels)
    replacements: dict[int, nn.Module] = {}
    for layer in couplings.layers:
        in_key, out_key = channels.key(couplings.root(layer.input)), channels.key(couplings.root(layer.output))
        if isinstance(layer.module, nn.Conv2d):
            new: nn.Module = SlicedConv2d(layer.module, switch, in_key, out_key)
        elif isinstance(layer.module, nn.Linear):
            new = SlicedLinear(layer.module, switch, in_key, out_key)
        else:
            new = SwitchableBatchNorm2d(layer.module, switch, out_key, num_members)
        replacements[id(layer.module)] = new
    return replacements


def _replace(module: nn.Module, replacements: dict[int, nn.Module]) -> nn.Module:
    """``module`` with every layer found in ``replacements`` swapped in place (or its replacement, if it is one)."""
    if id(module) in replacements:
        return replacements[id(module)]
    for name, child in module.named_children():
        setattr(module, name, _replace(child, replacements))
    return module
