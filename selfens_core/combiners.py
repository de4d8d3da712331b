"""Combiners turn member logits (M, B, C) into class probabilities (B, C). Some have parameters.

Every combiner accepts any member count ``k`` up to the model's (``model.predict(x, members=k)`` combines the first
``k``). A combiner whose parameters depend on the model's sizes (stacking: an NC×C matrix) gets them from
:meth:`Combiner.bind`, which a :class:`~selfens_core.SelfEnsemble` calls when the combiner is assigned to it.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Combiner(nn.Module):
    """Base class. A combiner with trainable parameters is trained by the engine on detached member outputs
    with :meth:`loss` and its own optimizer parameter group (``lr`` attribute, default: the model's).

    A combiner that sets ``consumes_features = True`` is called as ``combiner(logits, features=...)`` with the
    members' penultimate features (a tuple of (B, d_k) tensors, see ``SelfEnsemble.forward_features``); the model
    then runs its members with features wherever it combines (``predict``, evaluation, training)."""

    lr: float | None = None
    consumes_features: bool = False

    def bind(self, *, num_members: int, num_classes: int) -> None:
        """Size the combiner for a model with ``num_members`` members and ``num_classes`` classes (default: nothing
        to size)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, targets: torch.Tensor,
             features: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """Negative log-likelihood of the combined prediction (``features``: for a combiner that consumes them)."""
        probs = self(logits) if features is None else self(logits, features=features)
        return F.nll_loss(torch.log(probs.clamp_min(1e-12)), targets)


class MeanLogits(Combiner):
    """Softmax of the mean member logits (the usual choice for tree and multi-exit self-ensembles)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().mean(0).softmax(-1)


class MeanProbs(Combiner):
    """Mean of the member softmax probabilities (classic deep-ensemble averaging)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1).mean(0)


class Voting(Combiner):
    """Majority vote of the members' predicted classes; a tie goes to the tied class of highest mean probability.

    The probabilities are the vote shares, with the chosen class nudged by ``1e-3`` of a vote so that ``argmax`` is
    the vote's winner. Breaking ties by the members' mean probability (not at random, not towards low class
    indices) keeps each image's answer a function of its own member outputs: the same in any batch, and repeatable.
    """

    NUDGE = 1e-3

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        m, b, c = logits.shape
        votes = F.one_hot(logits.argmax(-1), c).sum(0).float()  # (B, C)
        mean_probs = logits.float().softmax(-1).mean(0)
        tied = votes == votes.amax(-1, keepdim=True)
        winner = torch.where(tied, mean_probs, torch.full_like(mean_probs, -1.0)).argmax(-1)
        return (votes + self.NUDGE * F.one_hot(winner, c)) / (m + self.NUDGE)


class Stacking(Combiner):
    """A learned linear map of the concatenated member probabilities: softmax([p_1 … p_N] · W), W of shape NC×C,
    no bias (stacked generalisation). Trained by the engine on detached member outputs.

    ``W`` starts as N stacked identities divided by N, so before training the decision equals averaging's. The first
    ``k < N`` members use the first ``kC`` rows scaled by N/k (an average of k members under that initialisation).
    """

    def __init__(self, lr: float | None = None, num_members: int | None = None, num_classes: int | None = None):
        super().__init__()
        self.lr = lr
        self.weight: nn.Parameter | None = None
        if num_members is not None and num_classes is not None:
            self.bind(num_members=num_members, num_classes=num_classes)

    def bind(self, *, num_members: int, num_classes: int) -> None:
        shape = (num_members * num_classes, num_classes)
        if self.weight is not None:
            if tuple(self.weight.shape) != shape:
                raise ValueError(f"this stacking combiner is sized for a {tuple(self.weight.shape)} map, not "
                                 f"{num_members} members × {num_classes} classes; use a new one")
            return
        self.weight = nn.Parameter(torch.eye(num_classes).repeat(num_members, 1) / num_members)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The stacked class scores (B, C) before the softmax."""
        if self.weight is None:
            raise RuntimeError("stacking combiner is not sized: assign it to a model (model.combiner = ...) first")
        m, b, c = logits.shape
        n = self.weight.shape[0] // c
        if m > n:
            raise ValueError(f"stacking combiner was sized for {n} members, got {m}")
        probs = logits.float().softmax(-1).permute(1, 0, 2).reshape(b, m * c)
        return probs @ self.weight[: m * c] * (n / m)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.scores(logits).softmax(-1)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.scores(logits), targets)


class WeightedMean(Combiner):
    """A learned weighted average of the member probabilities: Σ_n softmax(a)_n p_n, one score a_n per member
    (zeros at the start: plain averaging). The first ``k`` members renormalise their own weights."""

    def __init__(self, lr: float | None = None, num_members: int | None = None):
        super().__init__()
        self.lr = lr
        self.scores: nn.Parameter | None = None
        if num_members is not None:
            self.bind(num_members=num_members, num_classes=0)

    def bind(self, *, num_members: int, num_classes: int) -> None:
        if self.scores is not None:
            if len(self.scores) != num_members:
                raise ValueError(f"this weighted combiner is sized for {len(self.scores)} members, not {num_members}")
            return
        self.scores = nn.Parameter(torch.zeros(num_members))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scores is None:
            raise RuntimeError("weighted combiner is not sized: assign it to a model (model.combiner = ...) first")
        weights = self.scores[: logits.shape[0]].softmax(0)
        return torch.einsum("m,mbc->bc", weights, logits.float().softmax(-1))
