"""Optimizer primitives: parameter groups, the built-in optimizers, and the per-step learning-rate multiplier.

Optimizers are registered (``register_optimizers`` hook) as a class or factory called
``factory(param_groups, lr=..., **args) -> torch.optim.Optimizer``; a ``torch.optim`` class fits as it is. Schedules
(:mod:`.schedules`) give the multiplier of the base learning rate; :func:`lr_lambda` puts linear warm-up before any
of them. Both are built by name in :mod:`.factory`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .schedules import Schedule


def weight_decay_groups(named_params: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """The trainable parameters in two groups: weights with ``weight_decay``, and biases and norm scales
    (``ndim <= 1``) without, as usual (decaying them only fights normalisation and shifts). Empty groups are left
    out."""
    trainable = [p for _, p in named_params if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def sgd(param_groups: Iterable[Any], lr: float, *, momentum: float = 0.9, dampening: float = 0,
        nesterov: bool = False) -> torch.optim.SGD:
    """``torch.optim.SGD`` with momentum 0.9 unless told otherwise (torch's default is none), the usual recipe."""
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov)


BUILTIN_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": sgd, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop, "nadam": torch.optim.NAdam,
}


def _check_warmup(total_steps: int, warmup_steps: int) -> None:
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], not {warmup_steps}")


def lr_lambda(schedule: Schedule, *, total_steps: int, steps_per_epoch: int,
              warmup_steps: int = 0) -> Callable[[int], float]:
    """The multiplier at each 0-based step of a phase: linear warm-up (``(step + 1) / warmup_steps``) over the first
    ``warmup_steps``, then ``schedule`` over the remaining steps. A plain function, so a ``LambdaLR`` stores none of
    its state and checkpoints stay plain numbers."""
    _check_warmup(total_steps, warmup_steps)
    rest = total_steps - warmup_steps

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return schedule(step - warmup_steps, rest, steps_per_epoch)

    return factor


def schedule_minima(schedule: Schedule, *, total_steps: int, steps_per_epoch: int,
                    warmup_steps: int = 0) -> list[int]:
    """The counts of steps done at which ``schedule`` reaches a cycle's minimum, shifted by the warm-up before it
    (see :func:`lr_lambda`); empty for a schedule without ``minima``."""
    _check_warmup(total_steps, warmup_steps)
    minima = getattr(schedule, "minima", None)
    if minima is None:
        return []
    return [warmup_steps + s for s in minima(total_steps - warmup_steps, steps_per_epoch)]
