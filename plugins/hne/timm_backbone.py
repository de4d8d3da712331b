"""HNE on timm CNNs: ``hne-<timm name>``, the tree transform applied to a timm model's stages."""
from __future__ import annotations

import math

import torch
from torch import nn

from selfens_core.backbones import BackboneError, BackboneParts
from selfens_core.factory import backbone_parts, create_backbone

from .model import HierarchicalEnsemble, build_tree, check_tree_equivalence, tree_branches


@torch.no_grad()
def default_split_stages(parts: BackboneParts, in_chans: int, splits: int) -> list[int]:
    """The last ``splits`` stages that halve the resolution (like the paper's blocks), else the last stages.
    Measured by one forward pass in evaluation mode, so that BatchNorm statistics stay as built."""
    modules = [parts.stem, *parts.stages]
    modes = [m.training for m in modules]
    strided = []
    try:
        x = parts.stem.eval()(torch.zeros(1, in_chans, 64, 64))
        for i, stage in enumerate(parts.stages):
            size = x.shape[-1]
            x = stage.eval()(x)
            if x.shape[-1] < size:
                strided.append(i)
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)
    candidates = strided if len(strided) >= splits else list(range(len(parts.stages)))
    return candidates[len(candidates) - splits:] if splits else []


def hne_timm(backbone: str, *, num_classes: int, in_chans: int = 3, num_members: int = 4,
             split_stages: list[int] | None = None, check: bool = True, small_images: bool = False,
             **timm_kwargs) -> HierarchicalEnsemble:
    """``num_members`` copies of timm ``backbone`` as a tree: shared stem, a split before each of ``split_stages``
    (default: the last log2(N) stages that halve the resolution). ``check`` verifies at build time that grouped
    execution equals each member's own path, which catches blocks that mix channels across groups.
    ``small_images`` adapts the backbone to 28×28 / 32×32 inputs (``selfens_core.factory.create_backbone``)."""
    if num_members < 1 or num_members & (num_members - 1):
        raise ValueError(f"num_members must be a power of two, got {num_members}")
    def network() -> nn.Module:
        return create_backbone(backbone, num_classes=num_classes, in_chans=in_chans, small_images=small_images,
                               **timm_kwargs)

    first = backbone_parts(network(), backbone)  # checked before the other members are built
    splits, stages = int(math.log2(num_members)), len(first.stages)
    if splits > stages:
        raise BackboneError(f"{backbone} has {stages} stages, so a tree splitting once per stage has at most "
                            f"{2**stages} members; got num_members={num_members}")
    parts = [first, *(backbone_parts(network(), backbone) for _ in range(num_members - 1))]
    if split_stages is None:
        split_stages = default_split_stages(parts[0], in_chans, splits)
    if len(split_stages) != splits:
        raise ValueError(f"{num_members} members need {splits} split stages, got split_stages={split_stages}")
    branches = tree_branches(stages, list(split_stages))
    model = build_tree(parts, branches, num_classes=num_classes, in_chans=in_chans, input_size=(32, 32),
                       min_input_size=16)
    if check:
        check_tree_equivalence(model, torch.randn(1, in_chans, 32, 32))
    return model
