"""Combiners turn member logits (M, B, C) into class probabilities (B, C). Some have parameters."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Combiner(nn.Module):
    """Base class. A combiner with trainable parameters is trained by the engine on detached member outputs
    with :meth:`loss` and its own optimizer parameter group (``combiner.lr``)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of the combined prediction."""
        return F.nll_loss(torch.log(self(logits).clamp_min(1e-12)), targets)


class MeanLogits(Combiner):
    """Softmax of the mean member logits (the usual choice for tree and multi-exit self-ensembles)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().mean(0).softmax(-1)


class MeanProbs(Combiner):
    """Mean of the member softmax probabilities (classic deep-ensemble averaging)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1).mean(0)
