"""Weight masks that keep pruned weights exactly zero under any optimizer.

A masked layer's weight is a parametrization (``torch.nn.utils.parametrize``): the module computes with
``original * mask`` in every forward, so a weight whose mask is 0 contributes exactly nothing whatever its stored value,
and its gradient (``grad * mask``) is exactly 0. The stored weight is zeroed too when a mask is set, so SGD with
momentum and (coupled) weight decay, and AdamW's decoupled decay, all leave it at exactly 0: every update of a zero
weight with a zero gradient and zero optimizer state is zero. (Masking the gradient alone, with the stored weight left
non-zero, lets weight decay and momentum move it, and the forward uses it: the bug of the public code.)

The mask is a bool buffer inside the parametrization (``<layer>.parametrizations.weight.0.mask`` in the state dict),
all True until set: a layer computes densely until it is pruned, and a loaded model gets its masks from its weights
file.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize


class WeightMask(nn.Module):
    """The parametrization ``weight ↦ weight · mask`` with a bool ``mask`` buffer (True: kept)."""

    def __init__(self, shape: torch.Size):
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def add_masks(module: nn.Module) -> None:
    """Give every Conv2d inside ``module`` (itself included) a :class:`WeightMask` on its weight, all kept."""
    for layer in list(module.modules()):
        if isinstance(layer, nn.Conv2d) and not parametrize.is_parametrized(layer, "weight"):
            parametrize.register_parametrization(layer, "weight", WeightMask(layer.weight.shape))


def masked_layers(module: nn.Module) -> Iterator[nn.Module]:
    """The layers inside ``module`` whose weight carries a :class:`WeightMask`, in module order."""
    for layer in module.modules():
        if parametrize.is_parametrized(layer, "weight") and isinstance(layer.parametrizations.weight[0], WeightMask):
            yield layer


def mask_of(layer: nn.Module) -> torch.Tensor:
    """The bool mask buffer of a masked layer (True: kept)."""
    return layer.parametrizations.weight[0].mask


def stored_weight(layer: nn.Module) -> nn.Parameter:
    """The trained parameter behind a masked layer's weight (its effective weight is this times the mask)."""
    return layer.parametrizations.weight.original


@torch.no_grad()
def set_mask(layer: nn.Module, keep: torch.Tensor) -> None:
    """Set a masked layer's mask to ``keep`` and zero its stored weight where ``keep`` is False."""
    mask_of(layer).copy_(keep)
    stored_weight(layer).mul_(keep)
