"""The ``median_probs`` combiner."""
from __future__ import annotations

import torch
from selfens_core import Combiner


class MedianProbs(Combiner):
    """Per-class median of the member probabilities, renormalised to sum to one.

    One confidently wrong member moves a mean of probabilities; it barely moves the median. With two members the
    median is the mean.
    """

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        median = torch.quantile(logits.float().softmax(-1), 0.5, dim=0)
        return median / median.sum(-1, keepdim=True).clamp_min(torch.finfo(median.dtype).tiny)
