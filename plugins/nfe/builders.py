"""Builders of the registered NFE models: ``nfe-<timm ResNet or CIFAR WRN>`` and the paper's ``nfe-wrn28-10``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selfens_core.backbones import is_timm_model
from selfens_core.factory import backbone_parts, create_backbone

from .model import FissionEnsemble

# timm modules whose networks split into stem, stages, neck and classifier with plain Conv2d layers: timm's ResNets
# (resnet*, the wide and deep-stem variants) and the core's CIFAR WRNs.
_MODULES = ("resnet", "wide_resnet")


def is_fissionable(name: str) -> bool:
    """A timm ResNet (resnet18, resnet10t, wide_resnet50_2, ...) or a CIFAR WRN (wrn16_4, wrn28_10, wrn40_2)."""
    from timm.models import is_model_in_modules

    return is_timm_model(name) and is_model_in_modules(name, _MODULES)


def nfe_timm(backbone: str, *, num_classes: int, in_chans: int = 3, num_members: int = 3,
             branch_after: Sequence[int] | None = None, pruning: str = "snip", sparsity: float = 0.5,
             small_images: bool = False, **timm_kwargs: Any) -> FissionEnsemble:
    """``num_members`` exits fissioned from timm ``backbone``: exit e ≥ 1 branches after stage ``branch_after[e-1]``
    (default: after stage e). ``pruning`` (snip, grasp, synflow, random) at ``sparsity`` (the fraction of the
    stem's and stages' conv weights pruned) runs when training starts. ``small_images`` and ``timm_kwargs`` go to
    ``selfens_core.factory.create_backbone`` (e.g. ``channels``, or ``depth`` / ``widen_factor`` of a WRN).

    timm's ResNets are built with ``zero_init_last=False`` unless asked otherwise: timm's default zeroes the last
    BatchNorm scale of every residual branch, which gives every conv inside a branch exactly zero gradient at
    initialisation, so SNIP, GraSP and SynFlow would score them all 0 and could not choose among them."""
    from timm.models import is_model_in_modules

    if is_model_in_modules(backbone, ("resnet",)):
        timm_kwargs.setdefault("zero_init_last", False)
    network = create_backbone(backbone, num_classes=num_classes, in_chans=in_chans, small_images=small_images,
                              **timm_kwargs)
    return FissionEnsemble(backbone_parts(network, backbone), num_members=num_members, num_classes=num_classes,
                           in_chans=in_chans, branch_after=branch_after, pruning=pruning, sparsity=sparsity)


def nfe_wrn28_10(*, num_classes: int, in_chans: int = 3, num_members: int = 3,
                 branch_after: Sequence[int] | None = None, pruning: str = "snip", sparsity: float = 0.5,
                 **wrn_kwargs: Any) -> FissionEnsemble:
    """The paper's model: WRN-28-10 (``wrn28_10``) with 3 exits, SNIP at sparsity 0.5. ``wrn_kwargs`` go to the WRN
    (``dropout_rate``; ``depth`` and ``widen_factor`` override 28 and 10, e.g. for a tiny test model)."""
    return nfe_timm("wrn28_10", num_classes=num_classes, in_chans=in_chans, num_members=num_members,
                    branch_after=branch_after, pruning=pruning, sparsity=sparsity, **wrn_kwargs)
