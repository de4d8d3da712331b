"""Build registered things by name: models, components (combiners, distillers, samplers), backbone splits.

The registries come from the plugins; pretrained weights are one layer up (``api``, ``zoo``)."""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .backbones import BackboneAdapter, BackboneError, BackboneParts, create_timm
from .combiners import Combiner
from .ensemble import SelfEnsemble, positive_int
from .plugins import registries


def check_arguments(what: str, func: Any, kwargs: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    """Refuse keyword arguments ``func`` does not take, naming them and listing what it does take."""
    params = inspect.signature(func).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        shown = [n for n in allowed if n not in skip]
        raise TypeError(f"{what} got unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(shown)}")


def build_component(kind: str, name: str, options: dict[str, Any] | None = None) -> Any:
    """Instantiate a registered combiner / distiller / sampler by name with checked options."""
    registry = getattr(registries(), kind)
    cls = registry.get(name)
    options = dict(options or {})
    check_arguments(f"{registry.kind} {name!r}", cls, options)
    return cls(**options)


def recipe_defaults(name: str) -> dict[str, Any]:
    """The default distiller / combiner / sampler names a model's plugin registered for it."""
    entry, _ = registries().models.resolve(name)
    return {k: entry.options[k] for k in ("distiller", "combiner", "sampler") if k in entry.options}


def build_model(name: str, *, num_classes: int, in_chans: int = 3, combiner: str | Combiner | None = None,
                **overrides: Any) -> SelfEnsemble:
    """Build an untrained self-ensemble by registered name (``selfens_core.create`` without ``pretrained``).

    ``overrides`` are the builder's own arguments (e.g. ``num_members``); an unknown one is an error listing what the
    builder takes. ``combiner`` is a registered combiner name or instance (default: the model's own).
    """
    entry, suffix = registries().models.resolve(name)
    # before the builder runs: timm builds a head-less network for num_classes=0 without a word
    num_classes, in_chans = positive_int("num_classes", num_classes), positive_int("in_chans", in_chans)
    check_arguments(f"model {name!r}", entry.obj, overrides, skip=("num_classes", "in_chans"))
    args = (suffix,) if suffix is not None else ()
    model = entry.obj(*args, num_classes=num_classes, in_chans=in_chans, **overrides)
    combiner = combiner or entry.options.get("combiner")
    if isinstance(combiner, str):
        combiner = build_component("combiners", combiner)
    if combiner is not None:
        model.combiner = combiner
    model.pretrained_cfg.update(architecture=name, build_args=dict(overrides))
    return model


def backbone_parts(model: nn.Module, name: str = "") -> BackboneParts:
    """Split a timm model with the first registered backbone adapter that matches it."""
    return _adapter_for(model, name).split(model)


def create_backbone(name: str, *, num_classes: int, in_chans: int, small_images: bool = False,
                    **timm_kwargs) -> nn.Module:
    """``timm.create_model`` for selfens: with ``small_images``, adapted by its family's backbone adapter to
    28×28 / 32×32 inputs (the first two 2× downsamplings removed: total stride 8). Every method builds its timm
    networks through here, so the option means the same thing for all of them."""
    model = create_timm(name, num_classes=num_classes, in_chans=in_chans, **timm_kwargs)
    if small_images:
        adapter = _adapter_for(model, name)
        if getattr(adapter, "small_images", None) is None:
            raise BackboneError(f"the {adapter.family!r} backbone adapter does not support small_images; "
                                f"train {name} at its own resolution or register an adapter that does")
        adapter.small_images(model)  # a BackboneError when the model has nothing to adapt
    return model


def _adapter_for(model: nn.Module, name: str) -> BackboneAdapter:
    adapters = registries().backbone_adapters
    for adapter_name in adapters.names():
        adapter = adapters.get(adapter_name)
        if adapter.matches(model):
            return adapter
    raise BackboneError(
        f"timm model {name or ''} ({type(model).__name__}) has no backbone adapter; supported families: "
        f"{', '.join(adapters.get(n).family for n in adapters.names())}. Register one with the "
        f"register_backbone_adapters hook."
    )
