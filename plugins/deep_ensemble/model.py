"""N independently initialised networks of one architecture as a SelfEnsemble: the baseline of every paper."""
from __future__ import annotations

import torch
from torch import nn

from selfens_core import SelfEnsemble, create
from selfens_core.backbones import is_timm_model
from selfens_core.factory import create_backbone
from selfens_core.plugins import registries
from selfens_core.registry import UnknownNameError


class DeepEnsemble(SelfEnsemble):
    """Independent member networks run one after another; ``members=k`` runs the first ``k``."""

    def __init__(self, networks: list[nn.Module], **ensemble_args):
        super().__init__(num_members=len(networks), **ensemble_args)
        self.networks = nn.ModuleList(networks)

    def forward_members(self, x: torch.Tensor, members: int) -> torch.Tensor:
        return torch.stack([net(x) for net in self.networks[:members]])

    def forward_subset(self, x: torch.Tensor, indices: tuple[int, ...]) -> torch.Tensor:
        return torch.stack([self.networks[i](x) for i in indices])

    def parameter_groups(self) -> dict[str, list[str]]:
        """Adds ``member<i>``: one group per network (a phase can train each with its own optimizer)."""
        groups = super().parameter_groups()
        for i, net in enumerate(self.networks):
            groups[f"member{i}"] = [f"networks.{i}.{n}" for n, _ in net.named_parameters()]
        return groups


class OneMember(nn.Module):
    """A one-member SelfEnsemble seen as a plain network: images → logits (B, C)."""

    def __init__(self, model: SelfEnsemble):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_members(x, 1)[0]


def _is_selfens_model(name: str) -> bool:
    try:
        registries().models.resolve(name)
    except UnknownNameError:
        return False
    return True


def is_member_architecture(name: str) -> bool:
    """A selfens model or a timm model name."""
    return _is_selfens_model(name) or is_timm_model(name)


def deep_ensemble(architecture: str, *, num_classes: int, in_chans: int = 3, num_members: int = 4,
                  **member_args) -> DeepEnsemble:
    """``num_members`` independent copies of ``architecture``: a selfens model name (each copy built with
    ``num_members=1``: one member path, no tree) or a timm model name. ``member_args`` go to each copy's builder
    (for timm: ``small_images`` and ``timm.create_model``'s own arguments, see ``factory.create_backbone``)."""
    if num_members < 1:
        raise ValueError(f"num_members must be >= 1, got {num_members}")
    args = dict(num_classes=num_classes, in_chans=in_chans)
    if _is_selfens_model(architecture):
        members = [create(architecture, num_members=1, **args, **member_args) for _ in range(num_members)]
        cfg = members[0].pretrained_cfg
        return DeepEnsemble([OneMember(m) for m in members], **args, input_size=cfg["input_size"][1:],
                            min_input_size=cfg["min_input_size"])
    networks = [create_backbone(architecture, **args, **member_args) for _ in range(num_members)]
    return DeepEnsemble(networks, **args, input_size=(32, 32), min_input_size=16)
