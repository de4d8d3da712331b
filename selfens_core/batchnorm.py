"""Precise BatchNorm: re-estimate running statistics on training batches before evaluating.

BatchNorm's running mean and variance are an exponential average over the last few hundred steps, taken while the
weights were still moving. Late in a cosine schedule that lag is small; early in training, with a high learning rate
or after a change of weights that BatchNorm did not see (averaged or pruned weights), it is large, and a model that
is fine in training mode scores far worse in evaluation mode (issue 14 saw one tree member at 21% while the ensemble
scored 49%). ``precise_bn`` recomputes the statistics as a plain average over ``num_batches`` training batches with
the current weights (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021), without touching any weight.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int,
               keep: Iterable[nn.Module] = ()) -> int | None:
    """Replace every BatchNorm's running mean and variance by their average over ``num_batches`` batches of
    ``batches`` (images only), run in training mode through all members. Returns the number of batches used (fewer
    if ``batches`` ran out; None when there is no layer to re-estimate). A layer that no batch reached keeps its
    statistics, and so do the layers inside the modules of ``keep`` (frozen ones: they run in evaluation mode). The
    model's train/eval mode, its weights and the global random state (dropout draws) are left as they were."""
    keep = list(keep)
    kept = {id(m) for module in keep for m in module.modules()}
    layers = [bn for bn in batchnorm_layers(model) if id(bn) not in kept]
    if not layers or num_batches < 1:
        return None
    saved = [(bn.momentum, {k: v.clone() for k, v in bn.state_dict().items()}) for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    modes = {m: m.training for m in model.modules()}
    model.train()
    for module in keep:
        module.eval()
    used = 0
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            for used, x in enumerate(itertools.islice(batches, num_batches), start=1):
                model(x)
    finally:
        for bn, (momentum, state) in zip(layers, saved):
            bn.momentum = momentum
            if bn.num_batches_tracked == 0:  # no batch reached it (a module forward does not run)
                bn.load_state_dict(state)
        for m, mode in modes.items():
            m.training = mode
    return used
