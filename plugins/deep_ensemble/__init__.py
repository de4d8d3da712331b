"""Deep ensemble: N independent networks of one architecture, the baseline every self-ensemble paper compares with.

``deep-ensemble-<name>`` where ``<name>`` is any selfens model (each member is its one-member version, e.g.
``deep-ensemble-hne-resnet-small``: 16 independent leaf networks) or any timm model (``deep-ensemble-resnet18``).
Trained by the same engine with the ``independent`` objective, so "HNE vs independent networks" is one config change.
"""
from selfens_core.hookspecs import hookimpl


@hookimpl
def register_models(register):
    from .model import deep_ensemble, is_member_architecture

    register.family("deep-ensemble-", deep_ensemble, accepts=is_member_architecture,
                    suffix="selfens or timm model name",
                    examples=["deep-ensemble-resnet18", "deep-ensemble-hne-resnet-small"],
                    description="N independent networks", distiller="independent", combiner="mean_probs")
