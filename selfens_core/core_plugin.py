"""The core's own generic components, registered through the same hooks as any plugin."""
from __future__ import annotations

from .backbones import BUILTIN_ADAPTERS
from .combiners import MeanLogits, MeanProbs, Stacking, Voting, WeightedMean
from .distillers import CoDistillation, Independent
from .hookspecs import hookimpl
from .optim import BUILTIN_OPTIMIZERS
from .samplers import AllMembers, Listed, ShuffledPerMember
from .schedules import BUILTIN_SCHEDULES


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
    register("co_distillation", CoDistillation)


@hookimpl
def register_samplers(register):
    register("all", AllMembers)
    register("shuffled", ShuffledPerMember)
    register("listed", Listed)


@hookimpl
def register_backbone_adapters(register):
    for adapter in BUILTIN_ADAPTERS:
        register(adapter.family, adapter)


@hookimpl
def register_optimizers(register):
    for name, factory in BUILTIN_OPTIMIZERS.items():
        register(name, factory)


@hookimpl
def register_schedules(register):
    for name, cls in BUILTIN_SCHEDULES.items():
        register(name, cls)
