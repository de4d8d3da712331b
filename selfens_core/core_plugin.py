"""The core's own generic components, registered through the same hooks as any plugin."""
from __future__ import annotations

from .backbones import BUILTIN_ADAPTERS
from .combiners import MeanLogits, MeanProbs, Stacking, Voting, WeightedMean
from .distillers import Independent
from .hookspecs import hookimpl
from .samplers import AllMembers, ShuffledPerMember


@hookimpl
def register_combiners(register):
    register("mean_logits", MeanLogits)
    register("mean_probs", MeanProbs)
    register("voting", Voting)
    register("stacking", Stacking)
    register("weighted", WeightedMean)


@hookimpl
def register_distillers(register):
    register("independent", Independent)


@hookimpl
def register_samplers(register):
    register("all", AllMembers)
    register("shuffled", ShuffledPerMember)


@hookimpl
def register_backbone_adapters(register):
    for adapter in BUILTIN_ADAPTERS:
        register(adapter.family, adapter)
