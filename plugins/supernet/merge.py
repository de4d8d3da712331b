"""The ``merge`` combiner: one linear layer over the concatenated penultimate features of all members (SuperNet).

The thesis merges K trained sub-models by concatenating their penultimate features (Σ d_i values) into a new softmax
layer Σ d_i → C, the only part trained afterwards. It initialises the new layer from the members' own last layers:
their weights side by side, the bias the mean of their biases, optionally dividing the weights by a factor. Dividing
by K makes the merged layer compute exactly the mean of the member logits, so merging starts from logit averaging.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from selfens_core import Combiner

INITS = ("copy", "random")


class Merge(Combiner):
    """softmax(W · [f_1 … f_K] + b): a learned linear map of the members' concatenated features.

    ``init``: ``copy`` (default) sets ``W = [W_1 … W_K] / divisor`` and ``b = mean(b_i)`` from the members' last
    layers (``divisor`` defaults to K: exactly the mean of the member logits); ``random`` draws W and b as
    ``nn.Linear`` does. ``l2`` adds ``l2 · (‖W‖² + ‖b‖²)`` to the merge layer's loss (the thesis's L2 penalty, Keras
    style; the engine puts no weight decay on combiner parameters). ``lr``: the merge layer's own learning rate.

    The layer is initialised (:meth:`initialize`) when it starts to learn: at the start of the first training phase
    that trains it while the members' classifiers stay frozen (:meth:`on_phase_start`). Until then it combines as the
    mean of the member logits, which the copy initialisation reproduces exactly. The buffer ``merged`` records that
    it happened, so a resumed run or a loaded model never initialises it again.

    The merge layer is the combination of all K members. The first ``k < K`` members (smaller budgets) combine as the
    mean of their logits, through their own classifiers, which merging leaves untouched: a slice of a trained merge
    layer is no average of anything (scaled by K/k as core stacking does, it fell below a single member's accuracy on
    Fashion-MNIST), and the mean of the logits is what the copy starts from anyway.

    Needs a model that exposes its members' classifiers and feature widths (``supernet-*`` and ``snapshots-*``
    models: ``MergeableEnsemble``), which sizes it when it is assigned as the model's combiner.
    """

    consumes_features = True

    def __init__(self, init: str = "copy", divisor: float | None = None, l2: float = 0.0, lr: float | None = None):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if divisor is not None and not (math.isfinite(divisor) and divisor > 0):
            raise ValueError(f"divisor must be a finite number > 0 (or null: the member count), got {divisor!r}")
        if init == "random" and divisor is not None:
            raise ValueError("divisor scales copied weights; init: random copies none")
        if not (math.isfinite(l2) and l2 >= 0):
            raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
        self.init, self.divisor, self.l2, self.lr = init, divisor, l2, lr
        self.num_members: int | None = None
        self.num_classes: int | None = None
        self.feature_dims: list[int] | None = None
        self.weight: nn.Parameter | None = None
        self.bias: nn.Parameter | None = None
        self.register_buffer("merged", torch.zeros((), dtype=torch.bool))

    def bind(self, *, num_members: int, num_classes: int) -> None:
        if self.num_members is not None and (self.num_members, self.num_classes) != (num_members, num_classes):
            raise ValueError(f"this merge layer is sized for {self.num_members} members and {self.num_classes} "
                             f"classes, not {num_members} and {num_classes}; use a new one")
        self.num_members, self.num_classes = num_members, num_classes

    def bind_features(self, feature_dims: Sequence[int]) -> None:
        """Size the layer for members with these feature widths (called by the model after :meth:`bind`)."""
        dims = [int(d) for d in feature_dims]
        if len(dims) != self.num_members:
            raise ValueError(f"{len(dims)} feature widths for {self.num_members} members")
        if self.weight is not None:
            if dims != self.feature_dims:
                raise ValueError(f"this merge layer is sized for feature widths {self.feature_dims}, not {dims}; "
                                 "use a new one")
            return
        self.feature_dims = dims
        self.weight = nn.Parameter(torch.zeros(self.num_classes, sum(dims)))
        self.bias = nn.Parameter(torch.zeros(self.num_classes))

    @torch.no_grad()
    def initialize(self, model: Any) -> None:
        """Initialise the layer from ``model``'s member classifiers (``copy``) or at random, and mark it merged."""
        self._check_sized()
        if self.init == "copy":
            heads = model.member_classifiers()
            biases = [h.bias if h.bias is not None else torch.zeros_like(h.weight[:, 0]) for h in heads]
            self.weight.copy_(torch.cat([h.weight for h in heads], dim=1) / (self.divisor or self.num_members))
            self.bias.copy_(torch.stack(biases).mean(0))
        else:
            bound = 1 / math.sqrt(self.weight.shape[1])
            nn.init.uniform_(self.weight, -bound, bound)
            nn.init.uniform_(self.bias, -bound, bound)
        self.merged.fill_(True)

    def on_phase_start(self, state: Any) -> None:
        """Initialise at the start of the first phase that trains this layer with the member classifiers frozen."""
        if self.merged:
            return
        self._check_sized()
        names = {id(p): n for n, p in state.model.named_parameters()}
        trains = set(state.phase.trains)
        if not any(names[id(p)] in trains for p in self.parameters()):
            return
        classifiers = [names[id(p)] for head in state.model.member_classifiers() for p in head.parameters()]
        if any(n in trains for n in classifiers):
            warnings.warn(f"phase {state.phase.name!r} trains the merge layer together with the members' "
                          "classifiers: it stays the mean of the member logits (and learns nothing) until a phase "
                          "trains it with the members' classifiers frozen", stacklevel=2)
            return
        self.initialize(state.model)

    def _check_sized(self) -> None:
        if self.weight is None:
            raise RuntimeError("the merge combiner is not sized: assign it to a model that exposes its members' "
                               "features and classifiers (supernet-mlp, supernet-<timm>, snapshots-<timm>)")

    def scores(self, logits: torch.Tensor, features: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """The class scores (B, C) of the first ``k = len(logits)`` members, before the softmax: the merge layer's
        when ``k`` is every member and the layer is merged, else the mean of the member logits."""
        k = logits.shape[0]
        if not self.merged or k < self.num_members:
            return logits.float().mean(0)
        if k > self.num_members:
            raise ValueError(f"the merge layer was sized for {self.num_members} members, got {k}")
        if features is None or len(features) != k:
            raise ValueError(f"the merge layer needs the features of the {k} members it combines, got "
                             f"{'none' if features is None else len(features)}")
        return torch.cat([f.float() for f in features], dim=1) @ self.weight.T + self.bias

    def forward(self, logits: torch.Tensor, features: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        return self.scores(logits, features).softmax(-1)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor,
             features: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        loss = F.cross_entropy(self.scores(logits, features), targets)
        if self.l2 and self.merged:
            loss = loss + self.l2 * (self.weight.square().sum() + self.bias.square().sum())
        return loss
