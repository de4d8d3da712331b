"""``supernet-<timm>`` and ``snapshots-<timm>``: K whole timm networks as the members of a SuperNet.

``supernet-<timm>`` holds K independently trained networks (the thesis trains them with different optimizers, one
per member, in one phase). ``snapshots-<timm>`` holds K slots of one training run: the last member is the network
being trained, and the ``snapshot`` callback (``snapshot.py``) copies it into the next free slot at the schedule's
minima (cosine restarts: snapshot ensembles; a cyclic phase: fast geometric ensembling). Either is then merged by the
``merge`` combiner.
"""
from __future__ import annotations

import torch
from torch import nn

from selfens_core.backbones import BackboneError
from selfens_core.factory import backbone_parts, create_backbone

from .base import MergeableEnsemble


class SubModels(MergeableEnsemble):
    """K timm networks run one after another; ``members=k`` runs the first ``k``, listed members run alone."""

    def __init__(self, networks: list[nn.Module], **ensemble_args):
        super().__init__(num_members=len(networks), **ensemble_args)
        self.members = nn.ModuleList(networks)
        for network in networks:
            if not isinstance(network.get_classifier(), nn.Linear):
                raise BackboneError(f"{type(network).__name__}'s classifier is a "
                                    f"{type(network.get_classifier()).__name__}, not a linear layer: a SuperNet merges "
                                    "its members' linear classifiers")

    def forward_members(self, x: torch.Tensor, members: int) -> torch.Tensor:
        return torch.stack([network(x) for network in self.members[:members]])

    def forward_subset(self, x: torch.Tensor, indices: tuple[int, ...]) -> torch.Tensor:
        return torch.stack([self.members[i](x) for i in indices])

    def forward_features(self, x: torch.Tensor, members: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = [net.forward_head(net.forward_features(x), pre_logits=True) for net in self.members[:members]]
        logits = torch.stack([net.get_classifier()(f) for net, f in zip(self.members, features)])
        return logits, features

    def member_classifiers(self) -> list[nn.Linear]:
        return [network.get_classifier() for network in self.members]

    def member_layers(self, index: int) -> list[nn.Module]:
        """Stem, stages, neck and classifier as the family's backbone adapter splits the network (those with
        parameters); only the classifier for a network no adapter splits."""
        network = self.members[index]
        try:
            parts = backbone_parts(network)
        except BackboneError:
            return [network.get_classifier()]
        layers = [parts.stem, *parts.stages, parts.neck, parts.classifier]
        return [layer for layer in layers if next(layer.parameters(), None) is not None]


class SnapshotSlots(SubModels):
    """K member slots of one training run: the last member (``live``) is trained, the others are snapshots of it.

    :meth:`take_snapshot` copies the live member into the next free slot. ``snapshots_taken`` (a buffer, so it is in
    checkpoints and saved models) counts the filled slots; slots not yet filled hold their initial random weights.
    """

    def __init__(self, networks: list[nn.Module], **ensemble_args):
        if len(networks) < 2:
            raise ValueError(f"a snapshot ensemble needs at least 2 member slots (snapshots and the trained network), "
                             f"got num_members={len(networks)}")
        super().__init__(networks, **ensemble_args)
        self.register_buffer("snapshots_taken", torch.zeros((), dtype=torch.long))

    @property
    def free_slots(self) -> int:
        return self.num_members - 1 - int(self.snapshots_taken)

    @torch.no_grad()
    def take_snapshot(self) -> int:
        """Copy the live member's weights and buffers into the next free slot; returns that slot's index."""
        if self.free_slots < 1:
            raise RuntimeError(f"all {self.num_members - 1} snapshot slots are full; build the model with more "
                               "members (num_members) or take fewer snapshots")
        slot = int(self.snapshots_taken)
        self.members[slot].load_state_dict(self.members[-1].state_dict())
        self.snapshots_taken += 1
        return slot

    def parameter_groups(self) -> dict[str, list[str]]:
        """Adds ``live``: the parameters of the trained member (the last)."""
        groups = super().parameter_groups()
        groups["live"] = groups[f"member{self.num_members - 1}"]
        return groups


def _networks(architecture: str, num_members: int, num_classes: int, in_chans: int,
              timm_args: dict) -> list[nn.Module]:
    if num_members < 1:
        raise ValueError(f"num_members must be >= 1, got {num_members}")
    return [create_backbone(architecture, num_classes=num_classes, in_chans=in_chans, **timm_args)
            for _ in range(num_members)]


def supernet_timm(architecture: str, *, num_classes: int, in_chans: int = 3, num_members: int = 4,
                  **timm_args) -> SubModels:
    """``num_members`` independently initialised copies of the timm model ``architecture``. ``timm_args`` go to
    ``selfens_core.factory.create_backbone``: ``small_images`` and ``timm.create_model``'s own arguments."""
    networks = _networks(architecture, num_members, num_classes, in_chans, timm_args)
    return SubModels(networks, num_classes=num_classes, in_chans=in_chans, input_size=(32, 32), min_input_size=16)


def snapshots_timm(architecture: str, *, num_classes: int, in_chans: int = 3, num_members: int = 4,
                   **timm_args) -> SnapshotSlots:
    """``num_members`` slots of the timm model ``architecture``: ``num_members - 1`` snapshots and the network
    being trained (the last member). ``timm_args`` as for ``supernet-<timm>``."""
    networks = _networks(architecture, num_members, num_classes, in_chans, timm_args)
    return SnapshotSlots(networks, num_classes=num_classes, in_chans=in_chans, input_size=(32, 32),
                         min_input_size=16)
