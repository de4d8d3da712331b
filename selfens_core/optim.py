"""Optimizer and learning-rate schedule from the ``train`` config section."""
from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn


def _param_groups(train: DictConfig, model: nn.Module, distiller: nn.Module) -> list[dict]:
    """Model weights (no weight decay on biases and norm scales), then the combiner's and the distiller's own
    parameters in groups of their own, so methods can give them their own learning rate."""
    decay, no_decay = [], []
    combiner_ids = {id(p) for p in model.combiner.parameters()}
    for p in model.parameters():
        if p.requires_grad and id(p) not in combiner_ids:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    for owner in (model.combiner, distiller):
        own = [p for p in owner.parameters() if p.requires_grad]
        if own:
            groups.append({"params": own, "weight_decay": 0.0, "lr": getattr(owner, "lr", None) or train.lr})
    return [g for g in groups if g["params"]]


def make_optimizer(train: DictConfig, model: nn.Module, distiller: nn.Module) -> torch.optim.Optimizer:
    groups = _param_groups(train, model, distiller)
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov)
    return torch.optim.AdamW(groups, lr=train.lr)


def lr_factor(step: int, total: int, warmup: int, train: DictConfig) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine / step / constant."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if train.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if train.schedule == "step":
        return train.gamma ** sum(progress >= m for m in train.milestones)
    return 1.0


def make_scheduler(train: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step LambdaLR (its state is plain numbers, so checkpoints stay JSON)."""
    total = train.epochs * steps_per_epoch
    warmup = round(train.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, train))
