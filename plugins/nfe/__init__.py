"""NFE — Network Fission Ensembles (Lee & Lee): one network pruned at initialisation, its kept weights grouped into
full-depth exits that share their early stages, trained with ensemble knowledge distillation.

Paper: *Network Fission Ensembles for Low-Cost Self-Ensembles* (2024); guide: README.md here. What lives here:

- ``masks.py``: weight masks as parametrizations (masked weights exactly zero under any optimizer);
- ``pruning.py``: pruning at initialisation, SNIP, GraSP, SynFlow, random (global top-k);
- ``grouping.py``: each kept weight dealt to exactly one copy of its stage, balanced;
- ``model.py``: :class:`FissionEnsemble`, the multi-exit network, its fission (``prepare``) and effective cost;
- ``builders.py``: ``nfe-<timm ResNet or CIFAR WRN>`` and the paper's ``nfe-wrn28-10``.

The objective is the core's ``co_distillation`` distiller (Σ CE + Σ T²·KL from the detached mean logits, T = 3).
"""
from selfens_core.hookspecs import hookimpl


@hookimpl
def register_models(register):
    from .builders import is_fissionable, nfe_timm, nfe_wrn28_10

    recipe = dict(distiller="co_distillation", combiner="mean_logits")
    register("nfe-wrn28-10", nfe_wrn28_10, description="NFE on the CIFAR WRN-28-10, 3 exits, SNIP at 0.5 (paper)",
             **recipe)
    register.family("nfe-", nfe_timm, accepts=is_fissionable, suffix="timm ResNet or CIFAR WRN name",
                    examples=["nfe-resnet18"], description="NFE fission of a timm ResNet (or CIFAR WRN)", **recipe)
