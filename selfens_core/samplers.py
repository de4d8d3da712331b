"""Sub-network samplers: which members see which batch at each training step."""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Pass:
    """One forward/backward pass of a training step: these inputs through some members.

    ``members`` is ``None`` (all), an int ``k`` (the first ``k``) or a sequence of member indices (exactly those,
    in that order: ``model(inputs, members=(2,))`` trains member 2 alone on these inputs).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    members: int | Sequence[int] | None = None

    def runs_all(self, num_members: int) -> bool:
        """Whether this pass runs every member, in order, on one batch (what a trainable combiner learns from)."""
        if self.members is None or isinstance(self.members, int):
            return self.members in (None, num_members)
        return tuple(self.members) == tuple(range(num_members))


class Sampler:
    """Base class. ``plan`` returns the passes of one step; their gradients accumulate before the optimizer step.

    The engine calls ``plan(inputs, targets, **context)`` with the context keywords the method names (as pluggy does
    for hooks, so the context can grow without breaking samplers): ``epoch``, ``num_epochs``, ``generator`` (seeded
    per epoch), ``progress`` (fraction of training done before this step, in [0, 1)) and ``num_members``.
    """

    def plan(self, inputs: torch.Tensor, targets: torch.Tensor, *, epoch: int, num_epochs: int,
             generator: torch.Generator) -> list[Pass]:
        raise NotImplementedError


def plan_passes(sampler: Sampler, inputs: torch.Tensor, targets: torch.Tensor, **context: Any) -> list[Pass]:
    """Call ``sampler.plan`` with the subset of ``context`` it accepts."""
    params = inspect.signature(sampler.plan).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        context = {k: v for k, v in context.items() if k in params}
    return sampler.plan(inputs, targets, **context)


class AllMembers(Sampler):
    """Every member on the same batch, in one pass (the default)."""

    def plan(self, inputs, targets):
        return [Pass(inputs, targets, None)]


class ShuffledPerMember(Sampler):
    """Each member trains on its own, differently shuffled batch for the first ``shuffle_epochs`` fraction of
    training (one data loader per member); afterwards every member sees the same batch in one pass.

    While shuffling, the sampler keeps the last ``pool`` batches of the epoch (default: as many as there are members)
    and gives each member a batch drawn from them with its own random permutation, one pass per member. A sample
    stays in the pool for ``pool`` steps and each draw takes 1/``pool`` of it, so every member sees each sample once
    per epoch in expectation, in its own order and batch composition. The pool is emptied at each epoch start, so a
    run resumed from an epoch checkpoint draws exactly what an uninterrupted run draws.
    """

    def __init__(self, shuffle_epochs: float = 0.1, pool: int | None = None):
        if not 0.0 <= shuffle_epochs <= 1.0:
            raise ValueError(f"shuffle_epochs is a fraction of training in [0, 1], got {shuffle_epochs}")
        if pool is not None and pool < 1:
            raise ValueError(f"pool must be >= 1 batch, got {pool}")
        self.shuffle_epochs, self.pool = shuffle_epochs, pool
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._epoch = -1

    def plan(self, inputs, targets, *, epoch, progress, num_members, generator):
        if progress >= self.shuffle_epochs:
            self._batches = []
            return [Pass(inputs, targets, None)]
        if epoch != self._epoch:
            self._batches, self._epoch = [], epoch
        self._batches = [*self._batches, (inputs, targets)][-(self.pool or num_members):]
        xs = torch.cat([x for x, _ in self._batches])
        ys = torch.cat([y for _, y in self._batches])
        passes = []
        for member in range(num_members):
            chosen = torch.randperm(len(xs), generator=generator)[: len(inputs)]
            passes.append(Pass(xs[chosen], ys[chosen], (member,)))
        return passes


class Listed(Sampler):
    """Only the listed members train, on the same batch in one pass (``members=[-1]``: the last member; negative
    indices count from the end). For runs whose other members are filled otherwise, e.g. by a callback that copies
    snapshots of the trained member into them."""

    def __init__(self, members: Sequence[int]):
        if isinstance(members, (int, str)) or not members:
            raise ValueError(f"members must be a non-empty list of member indices, got {members!r}")
        self.members = [int(m) for m in members]

    def plan(self, inputs, targets, *, num_members):
        indices = [m % num_members if -num_members <= m < num_members else None for m in self.members]
        if None in indices:
            raise ValueError(f"sampler 'listed': members {self.members} out of range for a model of {num_members} "
                             "members")
        return [Pass(inputs, targets, tuple(indices))]
