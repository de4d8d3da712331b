"""Backbone adapters: split a timm CNN into the parts methods rebuild (stem, stages, neck, classifier).

Methods never reach into a timm model's attributes themselves; they ask :func:`backbone_parts`, and a model family
is supported once an adapter for it is registered (``register_backbone_adapters``).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import torch
from torch import nn


class BackboneError(ValueError):
    """A backbone that selfens cannot take apart, with the reason."""


@dataclass
class BackboneParts:
    """A CNN as stem → stages → neck → global average pool → classifier."""

    stem: nn.Module
    stages: list[nn.Module]
    neck: nn.Module
    classifier: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C), exactly what the original network computes in eval mode."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.classifier(self.neck(x).mean((2, 3)))


@dataclass(frozen=True)
class BackboneAdapter:
    """Knows one timm model family: ``matches(model)``, ``split(model) -> BackboneParts`` and, optionally,
    ``small_images(model)``: change the model in place for 28×28 / 32×32 inputs by removing the first two 2×
    downsamplings (total stride 32 → 8), so that an ImageNet stem does not take 28×28 to 7×7 at once."""

    family: str
    matches: Callable[[nn.Module], bool]
    split: Callable[[nn.Module], BackboneParts]
    small_images: Callable[[nn.Module], None] | None = None


def _class_named(*names: str) -> Callable[[nn.Module], bool]:
    return lambda model: type(model).__name__ in names


def _check_plain_head(model: nn.Module, pool: nn.Module, classifier: nn.Module) -> None:
    if getattr(pool, "pool_type", "avg") != "avg" or not isinstance(classifier, nn.Linear):
        raise BackboneError(f"{type(model).__name__}: only average pooling with a linear classifier is supported")
    if getattr(model, "drop_rate", 0.0):
        raise BackboneError(f"{type(model).__name__}: head dropout (drop_rate) is not supported; use drop_rate=0")


def _split_resnet(model: nn.Module) -> BackboneParts:
    _check_plain_head(model, model.global_pool, model.fc)
    stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    return BackboneParts(stem, stages, nn.Identity(), model.fc)


def _small_images_resnet(model: nn.Module) -> None:
    """Stride 1 in the stem's first conv (the deep stems of ``resnet*t``/``*d`` included) and no max-pool."""
    first = model.conv1[0] if isinstance(model.conv1, nn.Sequential) else model.conv1
    first.stride = (1, 1)
    model.maxpool = nn.Identity()


def _split_wide_resnet(model: nn.Module) -> BackboneParts:
    """The CIFAR WRN (:mod:`.wide_resnet`): conv1 → layer1-3 → BN-ReLU → classifier. It takes 32×32 images already
    (total stride 4), so it has nothing for ``small_images`` to adapt."""
    return BackboneParts(model.conv1, [model.layer1, model.layer2, model.layer3],
                         nn.Sequential(model.bn, nn.ReLU()), model.fc)


def _split_efficientnet(model: nn.Module) -> BackboneParts:
    _check_plain_head(model, model.global_pool, model.classifier)
    return BackboneParts(nn.Sequential(model.conv_stem, model.bn1), list(model.blocks),
                         nn.Sequential(model.conv_head, model.bn2), model.classifier)


def _small_images_efficientnet(model: nn.Module) -> None:
    """Stride 1 in the stem and in the first strided block (MobileNetV2: the 24-channel stage)."""
    model.conv_stem.stride = (1, 1)
    strided = next((m for m in model.blocks.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)), None)
    if strided is None:
        raise BackboneError(f"{type(model).__name__}: no strided convolution in its blocks to adapt to small images")
    strided.stride = (1, 1)


BUILTIN_ADAPTERS = [
    BackboneAdapter("resnet", _class_named("ResNet"), _split_resnet, _small_images_resnet),
    BackboneAdapter("efficientnet", _class_named("EfficientNet"), _split_efficientnet, _small_images_efficientnet),
    BackboneAdapter("wide_resnet", _class_named("WideResNet"), _split_wide_resnet),
]


def _timm() -> ModuleType:
    """timm, with the CIFAR WRNs of :mod:`.wide_resnet` in its registry."""
    import timm

    from . import wide_resnet  # noqa: F401 (registers wrn16_4, wrn28_10, wrn40_2 with timm)

    return timm


def is_timm_model(name: str) -> bool:
    return _timm().is_model(name)


def create_timm(name: str, *, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    """``timm.create_model`` with an error that lists similar names when ``name`` is not a timm model."""
    timm = _timm()

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0][:6]}*")[:8]
        raise BackboneError(f"{name!r} is not a timm model. Similar timm models: {', '.join(close) or '(none)'}")
    return timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
