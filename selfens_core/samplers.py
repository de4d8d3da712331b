"""Sub-network samplers: which members see which batch at each training step."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Pass:
    """One forward/backward pass of a training step: these inputs through the first ``members`` members."""

    inputs: torch.Tensor
    targets: torch.Tensor
    members: int | None = None


class Sampler:
    """Base class. ``plan`` returns the passes of one step; their gradients accumulate before the optimizer step."""

    def plan(self, inputs: torch.Tensor, targets: torch.Tensor, *, epoch: int, num_epochs: int,
             generator: torch.Generator) -> list[Pass]:
        raise NotImplementedError


class AllMembers(Sampler):
    """Every member on the same batch, in one pass (the default)."""

    def plan(self, inputs, targets, *, epoch, num_epochs, generator):
        return [Pass(inputs, targets, None)]
