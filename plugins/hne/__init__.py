"""HNE — Hierarchical Neural Ensembles (Ruiz & Verbeek): a binary tree of blocks run as grouped convolutions.

Paper: *Distilled Hierarchical Neural Ensembles with Adaptive Inference Cost* (2020); guide: README.md here.
What lives here:

- ``tree.py``: the tree layers (grouped Conv2d / BatchNorm / per-leaf head) and the stacking transform;
- ``model.py``: :class:`HierarchicalEnsemble`, prefix execution (``members=2^b`` costs exactly its sub-tree);
- ``architectures.py``: the paper's CIFAR ResNet HNE (+ small) and MobileNetV2 HNE;
- ``timm_backbone.py``: ``hne-<timm name>``, the transform applied to timm CNN stages;
- ``losses.py``: L_I, L_H, co-distillation and hierarchical co-distillation (default L_I + L_HD, α=0.5, T=2).
"""
from selfens_core.hookspecs import hookimpl


@hookimpl
def register_models(register):
    from selfens_core.backbones import is_timm_model

    from .architectures import hne_mobilenetv2, hne_resnet, hne_resnet_small
    from .timm_backbone import hne_timm

    recipe = dict(distiller="hne", combiner="mean_logits")
    register("hne-resnet", hne_resnet, description="CIFAR ResNet HNE, N=16 (paper Table 2)", **recipe)
    register("hne-resnet-small", hne_resnet_small, description="HNE_small: half-width CIFAR ResNet HNE", **recipe)
    register("hne-mobilenetv2", hne_mobilenetv2, description="MobileNetV2 HNE, N=8, width 0.75", **recipe)
    register.family("hne-", hne_timm, examples=["hne-resnet18", "hne-mobilenetv2_100", "hne-efficientnet_b0"],
                    accepts=is_timm_model, suffix="timm model name", description="HNE tree transform on a timm CNN",
                    **recipe)


@hookimpl
def register_distillers(register):
    from .losses import HierarchicalDistillation

    register("hne", HierarchicalDistillation)
