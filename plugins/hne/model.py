"""The hierarchical neural ensemble: a binary tree of blocks over member networks of one architecture."""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from selfens_core import SelfEnsemble
from selfens_core.backbones import BackboneError, BackboneParts

from .tree import TreeLinearHead, branch_of, replicate, stack_branches


class HierarchicalEnsemble(SelfEnsemble):
    """``N = 2^B`` leaf networks sharing a tree of blocks; block ``i`` has ``branches[i]`` parameter sets.

    ``members`` that is not a power of two is rounded up to the next one, with a warning: the first ``2^b`` leaves
    are the only prefixes whose cost is a whole sub-tree.
    """

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], branches: list[int], head: TreeLinearHead,
                 **ensemble_args):
        super().__init__(num_members=branches[-1], **ensemble_args)
        self.stem, self.blocks, self.head = stem, nn.ModuleList(blocks), head
        self.branches = list(branches)

    def budgets(self) -> list[int]:
        return [2**b for b in range(int(math.log2(self.num_members)) + 1)]

    def member_count(self, members: int | None) -> int:
        m = super().member_count(members)
        rounded = 1 << (m - 1).bit_length()
        if rounded != m:
            warnings.warn(f"members={m} is not a power of two; running the first {rounded} members (a whole sub-tree)",
                          stacklevel=3)
        return rounded

    def forward_members(self, x: torch.Tensor, members: int) -> torch.Tensor:
        x, groups = self.stem(x), 1
        for block, branches in zip(self.blocks, self.branches):
            active = max(1, members * branches // self.num_members)
            if active > groups:
                x, groups = replicate(x, groups, active), active
            x = block(x)
        return self.head(x)

    def member_path(self, n: int) -> nn.Module:
        """Member ``n`` alone as a plain network (shared storage): what the grouped execution must equal."""
        blocks = [branch_of(block, n * b // self.num_members) for block, b in zip(self.blocks, self.branches)]
        head = self.head.branch(n)
        return nn.Sequential(self.stem, *blocks, _PoolLinear(head)).train(self.training)


class _PoolLinear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean((2, 3)))


def tree_branches(num_stages: int, split_stages: list[int]) -> list[int]:
    """Branch count of each stage when the tree splits in two before each stage in ``split_stages``."""
    bad = [s for s in split_stages if not 0 <= s < num_stages]
    if bad or len(set(split_stages)) != len(split_stages):
        raise ValueError(f"split_stages {split_stages} must be distinct stage indices in [0, {num_stages - 1}]")
    branches, n = [], 1
    for stage in range(num_stages):
        n *= 2 if stage in split_stages else 1
        branches.append(n)
    return branches


def build_tree(networks: list[BackboneParts], branches: list[int], **ensemble_args) -> HierarchicalEnsemble:
    """Stack ``N`` independently initialised member networks into a tree.

    Branch ``k`` of a stage with ``n`` branches takes its weights from network ``k·N/n``, so leaf 0 is exactly
    ``networks[0]``. The neck (e.g. a final 1×1 conv) belongs to the leaves.
    """
    n_leaves = branches[-1]
    if len(networks) != n_leaves:
        raise ValueError(f"need {n_leaves} member networks for {branches}, got {len(networks)}")
    blocks = []
    for i, n in enumerate(branches):
        last = i == len(branches) - 1
        copies = [networks[k * n_leaves // n] for k in range(n)]
        stage = [nn.Sequential(p.stages[i], p.neck) if last else p.stages[i] for p in copies]
        try:
            blocks.append(stack_branches(stage))
        except BackboneError as error:
            raise BackboneError(f"stage {i}: {error}") from None
    head = TreeLinearHead([p.classifier for p in networks])
    return HierarchicalEnsemble(networks[0].stem, blocks, branches, head, **ensemble_args)


@torch.no_grad()
def check_tree_equivalence(model: HierarchicalEnsemble, example: torch.Tensor) -> None:
    """Raise if grouped execution differs from running each member's path alone (e.g. a block concatenates or
    shuffles channels, which group-wise execution cannot preserve)."""
    was_training = model.training
    model.eval()
    try:
        try:
            grouped = model(example)
        except RuntimeError as error:
            raise BackboneError(f"grouped execution failed ({error}); a block probably mixes channels across "
                                f"groups (concatenation, channel shuffle) and cannot be run as a tree") from None
        for n in range(model.num_members):
            alone = model.member_path(n)(example)
            if not torch.allclose(grouped[n], alone, rtol=1e-3, atol=1e-4):
                raise BackboneError(
                    f"member {n}: grouped execution differs from the member's own path (max error "
                    f"{(grouped[n] - alone).abs().max():.2e}); a block probably mixes channels across groups "
                    f"(concatenation, channel shuffle) and cannot be run as a tree"
                )
    finally:
        model.train(was_training)
