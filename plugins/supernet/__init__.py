"""SuperNet — "supermodeling" (Bukowski & Dzwinel): trained sub-models merged by a retrained last layer.

Thesis: *SuperNet — an efficient method of neural networks ensembling* (2020); guide: README.md here.
What lives here:

- ``base.py``: :class:`MergeableEnsemble`, members that end in a linear classifier, with per-member and per-depth
  parameter groups (``member<i>``, ``layer-<d>``) for per-member optimizers and progressive last-layer training;
- ``mlp.py``: ``supernet-mlp``, a wide MLP partitioned into K independent narrow MLPs;
- ``submodels.py``: ``supernet-<timm>`` (K independent networks) and ``snapshots-<timm>`` (K slots of one run);
- ``merge.py``: the ``merge`` combiner, a linear layer over all members' features, initialised from their
  classifiers when its phase starts;
- ``snapshot.py``: the ``snapshot`` callback, which copies the trained member into the next free slot at the
  schedule's minima (snapshot ensembles, FGE);
- ``members_from.py``: the ``members_from`` callback, which starts the members from networks trained in other runs.

The protocols (train the members, retrain their last layers, merge) are training phases: ``configs/supernet-*.yaml``,
``configs/snapshots-*.yaml``, ``configs/fge-*.yaml``.
"""
from selfens_core.hookspecs import hookimpl


@hookimpl
def register_models(register):
    from selfens_core.backbones import is_timm_model

    from .mlp import supernet_mlp
    from .submodels import snapshots_timm, supernet_timm

    register("supernet-mlp", supernet_mlp, description="K narrow MLPs cut from a wide one (thesis: 6 x 200-466-466-10)",
             distiller="independent", combiner="mean_logits")
    register.family("supernet-", supernet_timm, accepts=is_timm_model, suffix="timm model name",
                    examples=["supernet-resnet10t"], description="K independently trained timm networks to merge",
                    distiller="independent", combiner="mean_logits")
    register.family("snapshots-", snapshots_timm, accepts=is_timm_model, suffix="timm model name",
                    examples=["snapshots-resnet10t"],
                    description="K snapshot slots of one timm network; the last member trains",
                    distiller="independent", combiner="mean_logits")


@hookimpl
def register_combiners(register):
    from .merge import Merge

    register("merge", Merge)


@hookimpl
def register_callbacks(register):
    from .members_from import MembersFrom
    from .snapshot import Snapshot

    register("snapshot", Snapshot)
    register("members_from", MembersFrom)
