"""Pruning at initialisation (PaI): which weights of a freshly initialised network to keep.

Every method scores each weight of the masked layers and keeps the global top ``(1 − sparsity)`` fraction over all of
them together (not per layer), as the methods' papers and the public NFE code do:

- ``snip`` (Lee et al. 2019): |θ ⊙ ∂L/∂θ|, the loss's sensitivity to removing each weight, on one batch;
- ``grasp`` (Wang et al. 2020): keeps the largest θ ⊙ Hg (removes the largest −θ ⊙ Hg), the weights whose removal
  would most reduce the gradient flow, with logits divided by T = 200 as in the authors' code;
- ``synflow`` (Tanaka et al. 2020): data-free, |θ ⊙ ∂R/∂θ| with R the sum of the outputs of the network with
  absolute weights on an all-ones input, pruned iteratively (100 rounds, keep fraction (1 − s)^(i/100)) in float64;
- ``random``: uniform random scores (each weight kept with the same chance).

The network scored is a throwaway copy (its BatchNorm statistics and weights are changed by scoring); SNIP and GraSP
run it in training mode (batch statistics, as at the first training step) on one batch of up to 512 images
concatenated from the training batches (the public code's SNIP batch). Unlike that code, SNIP scores the network's own
initial weights with the cross-entropy of its logits (the code re-initialises the copy's weights with Xavier before
scoring, and applies ``nll_loss`` to raw logits).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from .masks import set_mask, stored_weight

METHODS = ("snip", "grasp", "synflow", "random")
SCORE_IMAGES = 512  # SNIP and GraSP score on one batch of this many training images (fewer if the data has fewer)
GRASP_TEMPERATURE = 200.0
SYNFLOW_ROUNDS = 100
TIED_KEEP_LIMIT = 0.01  # a warning when more than this fraction of the kept weights is chosen by tie order

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def check_method(method: str, sparsity: float) -> None:
    """A ValueError naming what exists for an unknown method or a sparsity outside [0, 1)."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity is the fraction of weights pruned, in [0, 1); got {sparsity!r}")


def keep_count(total: int, sparsity: float) -> int:
    """How many of ``total`` weights a sparsity keeps (at least one)."""
    return max(1, round(total * (1.0 - sparsity)))


def prune(method: str, net: nn.Module, layers: list[nn.Module], batches: Batches,
          sparsity: float) -> list[torch.Tensor]:
    """Bool keep-masks, one per layer of ``layers`` (masked layers of ``net``, an images → logits network), with
    ``method`` at ``sparsity`` over all of them together. ``net`` is changed (score it on a copy)."""
    check_method(method, sparsity)
    count = keep_count(sum(stored_weight(layer).numel() for layer in layers), sparsity)
    if method == "synflow":
        images, _ = take_images(iter(batches), 1)
        return synflow_masks(net, layers, tuple(images.shape[1:]), sparsity)
    if method == "random":
        return top_k([torch.rand_like(stored_weight(layer)) for layer in layers], count)
    images, labels = take_images(iter(batches), SCORE_IMAGES)
    net.train()
    scorer = snip_scores if method == "snip" else grasp_scores
    return top_k(scorer(net, layers, images, labels), count)


def take_images(batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` images and labels of ``batches`` (all of them when there are fewer), concatenated."""
    images, labels, have = [], [], 0
    for x, y in batches:
        images.append(x)
        labels.append(y)
        have += len(x)
        if have >= count:
            break
    if not images:
        raise ValueError("pruning needs training images, but the batches were empty")
    return torch.cat(images)[:count], torch.cat(labels)[:count]


def _effective(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach()  # the stored weight times the mask


def snip_scores(net: nn.Module, layers: list[nn.Module], images: torch.Tensor,
                labels: torch.Tensor) -> list[torch.Tensor]:
    """SNIP's connection sensitivity |θ ⊙ ∂L/∂θ| per weight, L the mean cross-entropy of ``net`` on the batch."""
    params = [stored_weight(layer) for layer in layers]
    grads = torch.autograd.grad(F.cross_entropy(net(images), labels), params)
    return [(g * _effective(layer)).abs() for g, layer in zip(grads, layers)]


def grasp_scores(net: nn.Module, layers: list[nn.Module], images: torch.Tensor, labels: torch.Tensor,
                 temperature: float = GRASP_TEMPERATURE) -> list[torch.Tensor]:
    """θ ⊙ Hg per weight, g the gradient of the loss on the batch (logits / T) and H its Hessian: GraSP removes the
    weights with the largest −θ ⊙ Hg, so the largest of these are kept."""
    params = [stored_weight(layer) for layer in layers]
    grads = torch.autograd.grad(F.cross_entropy(net(images) / temperature, labels), params, create_graph=True)
    flow = sum((g * g.detach()).sum() for g in grads)  # one forward: both factors from the same (dropout) network
    hessian_grad = torch.autograd.grad(flow, params)
    return [_effective(layer) * hg for hg, layer in zip(hessian_grad, layers)]


def synflow_masks(net: nn.Module, layers: list[nn.Module], image_shape: tuple[int, ...], sparsity: float,
                  rounds: int = SYNFLOW_ROUNDS) -> list[torch.Tensor]:
    """Iterative SynFlow: ``rounds`` times, score |θ ⊙ ∂R/∂θ| on the network with absolute weights and BatchNorm in
    evaluation mode (R: the sum of its outputs for an all-ones image) and keep the top (1 − s)^(i / rounds) of all
    weights, pruned weights scoring 0. Runs in float64 (R is a product over depth); ``net`` is changed."""
    net.double().eval()
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            if tensor.is_floating_point():
                tensor.abs_()
    params = [stored_weight(layer) for layer in layers]
    total = sum(p.numel() for p in params)
    ones = torch.ones((1, *image_shape), dtype=torch.float64, device=params[0].device)
    keep: list[torch.Tensor] = []
    for i in range(1, rounds + 1):
        grads = torch.autograd.grad(net(ones).sum(), params)
        scores = [(g * _effective(layer)).abs() for g, layer in zip(grads, layers)]
        keep = top_k(scores, keep_count(total, 1.0 - (1.0 - sparsity) ** (i / rounds)))
        for layer, kept in zip(layers, keep):
            set_mask(layer, kept)
    return keep


def top_k(scores: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """Bool masks shaped like ``scores`` that keep exactly the ``count`` highest scores over all of them."""
    flat = torch.cat([s.detach().flatten() for s in scores])
    if not torch.isfinite(flat).all():
        raise ValueError("pruning scores are not finite (the network's outputs overflowed or are NaN at "
                         "initialisation); try another pruning method or check the initialisation")
    top = torch.topk(flat, count, sorted=False)
    threshold = top.values.min()
    by_tie, tied = count - int((flat > threshold).sum()), int((flat == threshold).sum())
    if tied > by_tie > TIED_KEEP_LIMIT * count:  # the order of equal scores chooses some of the kept weights
        warnings.warn(f"pruning scores tell too few weights apart: of the {count:,} weights kept, {by_tie:,} were "
                      f"chosen by tie order among {tied:,} weights scoring exactly {threshold.item():g}. Causes: "
                      "layers with zero gradient at initialisation (a BatchNorm scale initialised to 0, as timm's "
                      "zero_init_last), 3×3 taps that never meet the image (a 1×1 feature map: use small_images), "
                      "or, for GraSP, zero scores ranking above negative ones", stacklevel=2)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[top.indices] = True
    return [part.view_as(s) for part, s in zip(keep.split([s.numel() for s in scores]), scores)]
