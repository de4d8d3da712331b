"""The ``members_from`` callback: start a SuperNet from networks trained elsewhere.

The thesis merges sub-models that were trained *before* the SuperNet exists: independent networks, each its own run.
This callback fills member ``i`` with the weights of ``sources[i]`` (a zoo entry, ``hf-hub:`` repo or
``local-dir:`` folder, loaded and verified as ``selfens_core.load`` does) when a run starts fresh, so that the run's
phases only retrain what the config says (typically the merge layer alone). Each source is checked before anything is
copied: trained on this run's data (classes, channels, normalisation), and holding a network with exactly the
member's parameter and buffer names and shapes (the first such network: a 1-member ``deep-ensemble-<timm>`` run,
or member 0 of a larger ensemble). A resumed run takes its members from its checkpoint instead.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn


class MembersFrom:
    """Copy ``sources[i]``'s network into member ``i`` of a SuperNet model when training starts fresh."""

    def __init__(self, sources: Sequence[str]):
        if isinstance(sources, str) or not sources or not all(isinstance(s, str) and s for s in sources):
            raise ValueError("sources must be a non-empty list of model references (NAME[.TAG], "
                             f"hf-hub:ORG/REPO@REV, local-dir:PATH), one per member; got {sources!r}")
        self.sources = list(sources)

    def on_train_start(self, state: Any) -> None:
        members = getattr(state.model, "members", None)
        if not isinstance(members, nn.ModuleList):
            raise TypeError(f"members_from fills the members of a SuperNet model (supernet-mlp, supernet-<timm>, "
                            f"snapshots-<timm>), not a {type(state.model).__name__}")
        if len(self.sources) != len(members):
            raise ValueError(f"members_from has {len(self.sources)} source(s) for a model of {len(members)} members; "
                             f"give one per member or build the model with num_members={len(self.sources)}")
        if state.resumed:
            return  # the checkpoint holds the members as this run left them
        run_cfg = state.model.pretrained_cfg
        networks = [_network_like(member, ref, run_cfg) for ref, member in zip(self.sources, members)]
        for index, (ref, member, network) in enumerate(zip(self.sources, members, networks)):
            member.load_state_dict(network.state_dict())
            print(f"members_from: member {index} holds the trained network of {ref}")


def _network_like(member: nn.Module, ref: str, run_cfg: dict[str, Any]) -> nn.Module:
    """The first network of the model ``ref`` whose state dict has ``member``'s names and shapes."""
    from selfens_core.zoo import load_for_run

    source = load_for_run(ref, run_cfg, f"members_from source {ref!r}")
    wanted = {name: tensor.shape for name, tensor in member.state_dict().items()}
    count = sum(1 for _ in member.parameters())
    for module in source.modules():
        if sum(1 for _ in module.parameters()) == count and \
                {name: tensor.shape for name, tensor in module.state_dict().items()} == wanted:
            return module
    cfg = source.pretrained_cfg
    raise ValueError(f"members_from: source {ref!r} ({cfg.get('architecture')}, build_args "
                     f"{cfg.get('build_args', {})}) holds no network with the parameters and buffers of the member "
                     f"it should fill ({type(member).__name__}, {len(wanted)} tensors): train each source with the "
                     "members' architecture and model.args")
