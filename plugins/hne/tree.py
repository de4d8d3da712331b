"""Tree parameter sharing executed as grouped convolutions.

A block with ``n`` branches holds ``n`` independent copies of a plain block side by side in the channel dimension:
every Conv2d becomes one grouped conv (``groups × n``) and every BatchNorm one wide BatchNorm. Branch ``k``'s
children in the next block are branches ``2k`` and ``2k+1``, so the first ``2^b`` leaves are a contiguous channel
prefix: each tree layer infers how many branches are active from the channels it receives and slices its weights, so
running fewer members costs exactly their sub-tree.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from selfens_core.backbones import BackboneError

try:  # timm's fused BatchNorm + activation; plain BatchNorm2d otherwise
    from timm.layers import BatchNormAct2d
except ImportError:  # pragma: no cover
    BatchNormAct2d = ()


class TreeConv2d(nn.Conv2d):
    """``branches`` copies of one Conv2d as a single grouped conv; runs on the active prefix of its input."""

    def __init__(self, plain: list[nn.Conv2d]):
        first, n = plain[0], len(plain)
        if first.padding_mode != "zeros":
            raise BackboneError(f"padding_mode={first.padding_mode!r} is not supported by the tree transform")
        super().__init__(first.in_channels * n, first.out_channels * n, first.kernel_size, first.stride,
                         first.padding, first.dilation, first.groups * n, first.bias is not None,
                         device=first.weight.device, dtype=first.weight.dtype)
        self.branches, self.branch_in, self.branch_out = n, first.in_channels, first.out_channels
        with torch.no_grad():
            self.weight.copy_(torch.cat([c.weight for c in plain]))
            if self.bias is not None:
                self.bias.copy_(torch.cat([c.bias for c in plain]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = x.shape[1] // self.branch_in
        if active == self.branches:
            return super().forward(x)
        rows = active * self.branch_out
        bias = self.bias[:rows] if self.bias is not None else None
        return F.conv2d(x, self.weight[:rows], bias, self.stride, self.padding, self.dilation,
                        self.groups // self.branches * active)

    def branch(self, k: int) -> nn.Conv2d:
        """Branch ``k`` as a plain Conv2d sharing this layer's storage."""
        conv = nn.Conv2d(self.branch_in, self.branch_out, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups // self.branches, self.bias is not None)
        rows = slice(k * self.branch_out, (k + 1) * self.branch_out)
        conv.weight = nn.Parameter(self.weight[rows])
        if self.bias is not None:
            conv.bias = nn.Parameter(self.bias[rows])
        return conv


class TreeBatchNorm2d(nn.BatchNorm2d):
    """``branches`` copies of one BatchNorm2d (and timm's fused activation, as ``post``) side by side."""

    def __init__(self, plain: list[nn.BatchNorm2d]):
        first, n = plain[0], len(plain)
        super().__init__(first.num_features * n, first.eps, first.momentum, first.affine, first.track_running_stats,
                         device=first.weight.device if first.affine else None)
        self.branches = n
        self.post = nn.Sequential(first.drop, first.act) if isinstance(first, BatchNormAct2d) else nn.Identity()
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                if getattr(self, name) is not None:
                    getattr(self, name).copy_(torch.cat([getattr(b, name) for b in plain]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return self.post(super().forward(x))
        use_batch_stats = self.training or self.running_mean is None
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        track = not self.training or self.track_running_stats
        y = F.batch_norm(
            x,
            self.running_mean[:c] if track and self.running_mean is not None else None,
            self.running_var[:c] if track and self.running_var is not None else None,
            self.weight[:c] if self.affine else None, self.bias[:c] if self.affine else None,
            use_batch_stats, 0.0 if self.momentum is None else self.momentum, self.eps,
        )
        return self.post(y)

    def branch(self, k: int) -> nn.Module:
        """Branch ``k`` as a plain BatchNorm2d (followed by ``post``) sharing this layer's storage."""
        c = self.num_features // self.branches
        rows = slice(k * c, (k + 1) * c)
        bn = nn.BatchNorm2d(c, self.eps, self.momentum, self.affine, self.track_running_stats)
        if self.affine:
            bn.weight, bn.bias = nn.Parameter(self.weight[rows]), nn.Parameter(self.bias[rows])
        if self.track_running_stats:
            bn.running_mean, bn.running_var = self.running_mean[rows], self.running_var[rows]
        return nn.Sequential(bn, self.post) if not isinstance(self.post, nn.Identity) else bn


class TreeLinearHead(nn.Module):
    """Global average pool + one linear classifier per leaf: (B, n·C, H, W) → logits (n, B, K)."""

    def __init__(self, plain: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([lin.weight.detach().t() for lin in plain]).clone())  # (N, C, K)
        self.bias = nn.Parameter(torch.stack([lin.bias.detach() for lin in plain]).clone())  # (N, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[1] // self.weight.shape[1], self.weight.shape[1]
        pooled = x.mean((2, 3)).view(x.shape[0], n, c).transpose(0, 1)  # (n, B, C)
        return torch.baddbmm(self.bias[:n, None, :], pooled, self.weight[:n])

    def branch(self, k: int) -> nn.Linear:
        linear = nn.Linear(self.weight.shape[1], self.weight.shape[2])
        linear.weight, linear.bias = nn.Parameter(self.weight[k].t()), nn.Parameter(self.bias[k])
        return linear


def stack_branches(copies: list[nn.Module]) -> nn.Module:
    """One module running ``len(copies)`` same-architecture modules side by side as grouped layers.

    Conv2d and BatchNorm2d (timm's BatchNormAct2d included) are stacked; parameter-free modules are kept. Any other
    layer with its own parameters cannot be run group-wise and is refused, naming the layer. Channel-mixing
    functional ops (concatenation, channel shuffle) cannot be seen here: :func:`check_tree_equivalence` catches them.
    """
    tree = copy.deepcopy(copies[0])
    per_copy = [dict(c.named_modules()) for c in copies]
    for name, module in list(tree.named_modules()):
        if type(module) is nn.Conv2d:
            replacement = TreeConv2d([m[name] for m in per_copy])
        elif type(module) is nn.BatchNorm2d or isinstance(module, BatchNormAct2d):
            replacement = TreeBatchNorm2d([m[name] for m in per_copy])
        elif any(True for _ in module.parameters(recurse=False)):
            raise BackboneError(f"layer {name!r} ({type(module).__name__}) cannot be run as a tree of groups: "
                                f"only Conv2d, BatchNorm2d and parameter-free layers are supported")
        else:
            continue
        _set_submodule(tree, name, replacement)
    return tree


def branch_of(tree: nn.Module, k: int) -> nn.Module:
    """Branch ``k`` of a stacked module as a plain module sharing its storage (a member's path, for checks)."""
    if isinstance(tree, TREE_LAYERS):
        return tree.branch(k)
    branches = {id(m): m.branch(k) for m in tree.modules() if isinstance(m, TREE_LAYERS)}
    return copy.deepcopy(tree, memo=branches)  # the memo swaps each tree layer for its branch, copying no weights


def replicate(x: torch.Tensor, groups: int, new_groups: int) -> torch.Tensor:
    """Split: each of ``groups`` branches hands its features to ``new_groups // groups`` children (adjacent)."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).repeat_interleave(new_groups // groups, 1).reshape(b, -1, h, w)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


TREE_LAYERS = (TreeConv2d, TreeBatchNorm2d, TreeLinearHead)
