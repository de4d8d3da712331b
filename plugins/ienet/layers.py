"""Sliced layers: one set of weights, each sub-network using its own kept channels (IENet, Sec. 3).

A convolution runs ``F.conv2d`` on ``weight[out_idx][:, in_idx]`` (index_select, so the gradient of a sub-network's
loss reaches exactly its selected weights); a depthwise convolution keeps the selected filters and its groups follow
them. BatchNorm is switchable: one BatchNorm per sub-network, keyed by sub-network id (widths repeat), sized to its
kept channels and initialised from the original BatchNorm at those channels.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .channels import ChannelIndices


class Switch:
    """A plain (non-module) reference from every sliced layer to the model's :class:`ChannelIndices`, so the index
    buffers are registered once, on the model, and the layers read the sub-network selected there."""

    def __init__(self, channels: ChannelIndices):
        self.channels = channels

    def index(self, key: int) -> torch.Tensor | None:
        return self.channels.index(key)

    @property
    def member(self) -> int:
        if self.channels.member is None:
            raise RuntimeError("no sub-network selected: run the sliced layers inside ChannelIndices.use(member)")
        return self.channels.member


def _select(t: torch.Tensor | None, dim: int, idx: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or idx is None else t.index_select(dim, idx)


class SlicedConv2d(nn.Module):
    """A ``Conv2d`` whose weights (the original parameters, same names) are sliced per sub-network."""

    def __init__(self, conv: nn.Conv2d, switch: Switch, in_key: int, out_key: int):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.depthwise = conv.groups > 1
        self.switch, self.in_key, self.out_key = switch, in_key, out_key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_idx = self.switch.index(self.out_key)
        weight, bias = _select(self.weight, 0, out_idx), _select(self.bias, 0, out_idx)
        if self.depthwise:
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups=weight.shape[0])
        weight = _select(weight, 1, self.switch.index(self.in_key))
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)


class SlicedLinear(nn.Module):
    """A ``Linear`` whose weights are sliced per sub-network (the classifier: inputs only)."""

    def __init__(self, linear: nn.Linear, switch: Switch, in_key: int, out_key: int):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.switch, self.in_key, self.out_key = switch, in_key, out_key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_idx = self.switch.index(self.out_key)
        weight = _select(_select(self.weight, 0, out_idx), 1, self.switch.index(self.in_key))
        return F.linear(x, weight, _select(self.bias, 0, out_idx))


class SwitchableBatchNorm2d(nn.Module):
    """One ``BatchNorm2d`` per sub-network over its kept channels, then the original's own dropout and activation
    (timm's ``BatchNormAct2d``) if it had them."""

    def __init__(self, bn: nn.BatchNorm2d, switch: Switch, key: int, num_members: int):
        super().__init__()
        self.switch = switch
        self.bns = nn.ModuleList(self._member_bn(bn, switch.channels.index(key, n)) for n in range(num_members))
        self.post = nn.Sequential(*bn.children())

    @staticmethod
    @torch.no_grad()
    def _member_bn(bn: nn.BatchNorm2d, idx: torch.Tensor | None) -> nn.BatchNorm2d:
        idx = torch.arange(bn.num_features) if idx is None else idx
        member = nn.BatchNorm2d(len(idx), eps=bn.eps, momentum=bn.momentum).to(bn.weight.device)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(member, name).copy_(getattr(bn, name).index_select(0, idx))
        return member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.bns[self.switch.member](x))
