"""Discriminators (one per tap) and gradient reversal."""
from __future__ import annotations

import torch
from torch import nn


class Discriminator(nn.Sequential):
    """Three fully connected layers d → d/2 → d/4 → 2 (MEAL's code: 1×1 convolutions on a (B, d, 1, 1) view, the
    same thing). Output logits: column 0 "student", column 1 "teacher".

    Our choices where the code differs: LeakyReLU(0.2) between the layers instead of ReLU, and no activation on the
    output (the code's ReLU there clamps the logits at 0). With widths as small as d/4 (2 units for 10 classes), ReLU
    units die on log-probability inputs and the discriminator stalls at chance; LeakyReLU is the usual GAN choice."""

    def __init__(self, dim: int):
        hidden, inner = max(1, dim // 2), max(1, dim // 4)
        super().__init__(nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, inner), nn.LeakyReLU(0.2),
                         nn.Linear(inner, 2))
        self.dim = dim


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient flowing back is multiplied by ``-scale``."""
    return _GradReverse.apply(x, scale)
