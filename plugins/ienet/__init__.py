"""IENet — Intra-Ensemble (Gao et al.): several sub-networks of one backbone, different channel subsets (and
optionally layer paths) through shared weights, trained together and combined by stacking.

Paper: *Intra-Ensemble in Neural Networks* (2019); guide: README.md here. What lives here:

- ``couplings.py``: which layers' channels are coupled (residual adds, depthwise convs, concatenations), found by
  a torch.fx pass over the backbone;
- ``channels.py``: the kept channels per sub-network and channel space (RC, RO, SC, slimmable), kept as buffers;
- ``layers.py``: sliced Conv2d / Linear and switchable BatchNorm;
- ``model.py``: :class:`IntraEnsemble` and the depth paths (random skip + shuffle layer);
- ``architectures.py``: ``ienet-mobilenetv2`` and ``ienet-<timm name>``.

The training recipe uses the core's components: ``independent`` (each sub-network's CE on its own forward pass),
``shuffled`` (its own shuffled batches for the first 10% of training) and ``stacking`` (trained on detached member
outputs in its own parameter group).
"""
from selfens_core.hookspecs import hookimpl


@hookimpl
def register_models(register):
    from selfens_core.backbones import is_timm_model

    from .architectures import ienet_mobilenetv2, ienet_timm

    recipe = dict(distiller="independent", combiner="stacking", sampler="shuffled")
    register("ienet-mobilenetv2", ienet_mobilenetv2,
             description="IENet on MobileNetV2 1.0x for small images, widths 0.9/0.9/0.9/1.0, RC", **recipe)
    register.family("ienet-", ienet_timm, examples=["ienet-resnet18", "ienet-efficientnet_b0"],
                    accepts=is_timm_model, suffix="timm model name", description="IENet sub-networks of a timm CNN",
                    **recipe)
