"""What every SuperNet model shares: members that each end in a linear classifier over their own features.

A merge layer (``merge.py``) replaces those classifiers by one linear map over all members' features, initialised
from them; progressive last-layer training freezes everything but one depth of every member at a time. Both need to
know where each member's layers are, which a model says through :meth:`MergeableEnsemble.member_classifiers` and
:meth:`MergeableEnsemble.member_layers`.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

from torch import nn

from selfens_core import SelfEnsemble


class MergeableEnsemble(SelfEnsemble):
    """A self-ensemble whose members live in ``self.members`` (an ``nn.ModuleList``, member ``i`` is
    ``members.i``) and end in an ``nn.Linear`` classifier over their penultimate features.

    Besides the default ``members`` and ``combiner`` parameter groups it names ``member<i>`` (everything of member
    ``i``: one optimizer per member) and ``layer-<d>`` (the ``d``-th layer from the end of every member: ``layer-1``
    the classifiers, ``layer-2`` the layers feeding them, ...), which is what progressive last-layer training selects.
    """

    members: nn.ModuleList

    @abstractmethod
    def member_classifiers(self) -> list[nn.Linear]:
        """Each member's last linear layer, in member order: what maps its features (``forward_features``) to its
        logits. A merge layer copies their weights."""

    @abstractmethod
    def member_layers(self, index: int) -> list[nn.Module]:
        """Member ``index``'s trainable layers from input to classifier (the classifier last), at the granularity
        progressive last-layer training unfreezes them."""

    def feature_dims(self) -> list[int]:
        """The width of each member's features."""
        return [classifier.in_features for classifier in self.member_classifiers()]

    def __setattr__(self, name: str, value: Any) -> None:
        # The core binds a combiner to the member and class counts only; a merge layer also needs the feature widths.
        super().__setattr__(name, value)
        if name == "combiner" and hasattr(value, "bind_features"):
            value.bind_features(self.feature_dims())

    def parameter_groups(self) -> dict[str, list[str]]:
        groups = super().parameter_groups()
        names = {id(p): n for n, p in self.named_parameters()}
        for i, member in enumerate(self.members):
            groups[f"member{i}"] = [names[id(p)] for p in member.parameters()]
            for depth, layer in enumerate(reversed(self.member_layers(i)), start=1):
                groups.setdefault(f"layer-{depth}", []).extend(names[id(p)] for p in layer.parameters())
        return groups
