"""Block-wise taps: the outputs of chosen stages of a network, captured by forward hooks, aligned to a fixed length.

A model offers intermediate taps when it holds timm networks (a timm model has ``feature_info``: one entry per stage
with its module name and reduction). ``deep-ensemble-<timm name>`` models, and so every single timm network trained
or stored by selfens, hold one timm network per member. Other models (e.g. HNE's trees of stacked branches) offer
only their logits.

Alignment (MEAL's code): a feature map (B, C, H, W) is flattened to (B, C, H·W), adaptively pooled over the H·W
positions to a fixed length d, and averaged over channels, giving (B, d) whatever the architecture's channel count
(``pool="max"``: max-pooled, and the max over channels).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Stage:
    """One tappable stage of a timm network: its module name, reduction (input size / output size) and channels."""

    module: str
    reduction: int
    channels: int


def is_timm_network(module: nn.Module) -> bool:
    return isinstance(getattr(module, "feature_info", None), list) and hasattr(module, "forward_head")


def timm_networks(model: nn.Module) -> list[nn.Module]:
    """The outermost timm networks inside ``model`` (``[model]`` when it is one), in module order."""
    found: list[nn.Module] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if is_timm_network(module):
            found.append(module)
            inside.append(f"{name}." if name else "")
    return found


def stages(network: nn.Module) -> list[Stage]:
    """The network's stages from timm's ``feature_info``; for a reduction given by several stages, the last one."""
    by_reduction: dict[int, Stage] = {}
    for info in network.feature_info:
        by_reduction[int(info["reduction"])] = Stage(info["module"], int(info["reduction"]), int(info["num_chs"]))
    return [by_reduction[r] for r in sorted(by_reduction)]


@torch.no_grad()
def probe_sizes(model: nn.Module, network: nn.Module, input_size: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """Spatial size (H, W) of each stage output of ``network`` (inside ``model``) for inputs of ``input_size``
    (C, H, W), measured by one forward of ``model`` in eval mode on zeros."""
    sizes: dict[int, tuple[int, int]] = {}
    handles = []
    for stage in stages(network):
        def hook(module, args, output, reduction=stage.reduction):
            sizes[reduction] = tuple(output.shape[-2:])
        handles.append(network.get_submodule(stage.module).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(2, *input_size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return sizes


class FeatureTaps:
    """Forward hooks on ``modules[n][j]``, stage ``j`` of network ``n``, keeping their outputs while ``active()``.

    :meth:`take` hands the kept outputs over and forgets them, so nothing outlives one training step.
    """

    def __init__(self, modules: list[list[nn.Module | None]], active: Callable[[], bool]):
        self.active = active
        self.shape = (len(modules), max((len(row) for row in modules), default=0))
        self.captured: dict[tuple[int, int], torch.Tensor] = {}
        self._handles = [module.register_forward_hook(self._hook(n, j))
                         for n, row in enumerate(modules) for j, module in enumerate(row) if module is not None]

    def _hook(self, n: int, j: int):
        def hook(module, args, output):
            if self.active():
                self.captured[(n, j)] = output
        return hook

    def take(self) -> dict[tuple[int, int], torch.Tensor]:
        captured, self.captured = self.captured, {}
        return captured

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self.captured = [], {}


def align(feature: torch.Tensor, length: int, pool: str = "avg") -> torch.Tensor:
    """(B, C, H, W) → (B, ``length``): adaptive pooling of the H·W positions to ``length``, then the mean (``avg``)
    or max (``max``) over channels. A (B, d) input is taken as d positions of one channel."""
    b = feature.shape[0]
    flat = feature.float().reshape(b, 1, -1) if feature.ndim == 2 else feature.float().flatten(2)
    if pool == "avg":
        return F.adaptive_avg_pool1d(flat, length).mean(1)
    return F.adaptive_max_pool1d(flat, length).amax(1)
