"""Weight grouping: the kept weights of a layer dealt out among the copies of its stage."""
from __future__ import annotations

import torch


def split_balanced(keep: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """``parts`` disjoint bool masks shaped like ``keep`` whose union is ``keep``: each kept weight goes to exactly one
    part, uniformly at random, and the parts' counts differ by at most one (balanced grouping, the paper's best).
    Drawn from the global random number generator of ``keep``'s device, so a seeded run repeats it."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    flat = keep.flatten()
    kept = flat.nonzero().squeeze(1)
    dealt = kept[torch.randperm(len(kept), device=keep.device)]
    owner = torch.full(flat.shape, -1, dtype=torch.long, device=keep.device)
    owner[dealt] = torch.arange(len(dealt), device=keep.device) % parts
    return [(owner == part).view_as(keep) for part in range(parts)]
