"""The one contract every method implements: a module whose forward returns member logits shaped (M, B, C)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .combiners import Combiner, MeanLogits


class SelfEnsemble(nn.Module, ABC):
    """Several member networks in one module, sharing parameters and computation.

    ``model(x, members=k)`` returns the logits of the first ``k`` members (all when ``None``), shaped (k, B, C), and
    computes only what those members need; ``model(x, members=(2, 0))`` returns the listed members. ``model.predict(x,
    members=k)`` combines them into class probabilities (B, C) through ``model.combiner`` (assigning a combiner binds
    it to this model's member and class counts). Subclasses implement :meth:`forward_members` and may override
    :meth:`forward_subset`.
    """

    def __init__(self, *, num_members: int, num_classes: int, in_chans: int, input_size: tuple[int, int] = (32, 32),
                 min_input_size: int = 8, combiner: Combiner | None = None):
        super().__init__()
        if num_members < 1:
            raise ValueError(f"num_members must be >= 1, got {num_members}")
        self.num_members = num_members
        self.pretrained_cfg: dict[str, Any] = {
            "num_classes": num_classes,
            "in_chans": in_chans,
            "input_size": (in_chans, *input_size),
            "min_input_size": min_input_size,
            "mean": (0.5,) * in_chans,
            "std": (0.5,) * in_chans,
        }
        self.combiner = combiner if combiner is not None else MeanLogits()

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "combiner" and isinstance(value, Combiner):  # size it for this model (stacking: NC×C)
            value.bind(num_members=self.num_members, num_classes=self.num_classes)
        super().__setattr__(name, value)

    @property
    def num_classes(self) -> int:
        return self.pretrained_cfg["num_classes"]

    def budgets(self) -> list[int]:
        """Member counts worth evaluating (each a valid ``members`` argument), smallest first."""
        return list(range(1, self.num_members + 1))

    def member_count(self, members: int | None) -> int:
        """Validate a ``members`` argument and return how many members will run."""
        if members is None:
            return self.num_members
        if not isinstance(members, int) or not 1 <= members <= self.num_members:
            raise ValueError(f"members must be an int in [1, {self.num_members}], a sequence of member indices or "
                             f"None, got {members!r}")
        return members

    def member_indices(self, members: Sequence[int]) -> tuple[int, ...]:
        """Validate an explicit list of member indices (distinct, each in [0, num_members))."""
        indices = tuple(members)
        bad = [i for i in indices if not isinstance(i, int) or not 0 <= i < self.num_members]
        if not indices or bad or len(set(indices)) != len(indices):
            raise ValueError(f"member indices must be distinct ints in [0, {self.num_members - 1}], got {members!r}")
        return indices

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse inputs the model cannot take, with a message that says what it expects."""
        in_chans, min_size = self.pretrained_cfg["in_chans"], self.pretrained_cfg["min_input_size"]
        if x.ndim != 4:
            raise ValueError(f"expected a batch of images shaped (B, {in_chans}, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != in_chans:
            raise ValueError(
                f"expected {in_chans} input channel(s), got {x.shape[1]} (input shape {tuple(x.shape)}); "
                f"create the model with in_chans={x.shape[1]} or convert the images"
            )
        if min(x.shape[-2:]) < min_size:
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} is smaller than this model's minimum {min_size}x{min_size}; "
                f"resize the images (the model was built for {self.pretrained_cfg['input_size'][1:]})"
            )

    def forward(self, x: torch.Tensor, members: int | Sequence[int] | None = None) -> torch.Tensor:
        """Logits (M, B, C) of the first ``members`` members (all when ``None``), or of the listed member indices
        in that order (a sampler that trains members on different batches passes e.g. ``members=(2,)``)."""
        if isinstance(members, Sequence):
            indices = self.member_indices(members)
            self.check_input(x)
            return self.forward_subset(x, indices)
        m = self.member_count(members)
        self.check_input(x)
        return self.forward_members(x, m)

    @abstractmethod
    def forward_members(self, x: torch.Tensor, members: int) -> torch.Tensor:
        """Logits (members, B, C) of the first ``members`` members, computing only what they need."""

    def forward_subset(self, x: torch.Tensor, indices: tuple[int, ...]) -> torch.Tensor:
        """Logits (len(indices), B, C) of the listed members. This default runs the smallest prefix that holds them
        and selects; methods whose members are separate paths override it to compute only the listed ones."""
        return self.forward_members(x, self.member_count(max(indices) + 1))[list(indices)]

    def predict(self, x: torch.Tensor, members: int | None = None) -> torch.Tensor:
        """Combined class probabilities (B, C) of the first ``members`` members."""
        return self.combiner(self(x, members))
