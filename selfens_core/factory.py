"""Build registered things by name: models, components (combiners, distillers, samplers, callbacks), optimizers,
schedules, backbone splits.

The registries come from the plugins; pretrained weights are one layer up (``api``, ``zoo``)."""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from .backbones import BackboneAdapter, BackboneError, BackboneParts, create_timm
from .combiners import Combiner
from .config import ConfigError
from .ensemble import SelfEnsemble, positive_int
from .plugins import registries
from .registry import UnknownNameError
from .schedules import Schedule


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
    """Instantiate a registered component (combiner, distiller, sampler, callback, schedule) by name with checked
    options."""
    registry = getattr(registries(), kind)
    cls = registry.get(name)
    options = dict(options or {})
    check_arguments(f"{registry.kind} {name!r}", cls, options)
    return cls(**options)


def _set_apart(factory: Any) -> tuple[str, ...]:
    """An optimizer factory's arguments that are not its ``args``: the parameter groups (its first) and ``lr``."""
    return next(iter(inspect.signature(factory).parameters), ""), "lr"


def build_optimizer(name: str, groups: list[dict], *, lr: float,
                    args: Mapping[str, Any] = {}) -> torch.optim.Optimizer:
    """The registered optimizer ``name`` over the parameter ``groups`` at base learning rate ``lr``. An unknown name
    is an :class:`~selfens_core.registry.UnknownNameError` listing the registered ones, an argument the optimizer
    does not take a TypeError naming it and those it takes."""
    return check_optimizer(name, args)(groups, lr=lr, **args)


def optimizer_defaults(name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The defaults the registered optimizer ``name`` gives those of ``keys`` it takes as arguments."""
    params = inspect.signature(registries().optimizers.get(name)).parameters
    return {k: params[k].default for k in keys if k in params and params[k].default is not inspect.Parameter.empty}


def check_optimizer(name: str, args: Mapping[str, Any] = {}) -> Any:
    """The factory of the registered optimizer ``name``, once ``args`` are checked against it (errors as
    :func:`build_optimizer`'s)."""
    factory = registries().optimizers.get(name)
    check_arguments(f"optimizer {name!r}", factory, dict(args), skip=_set_apart(factory))
    return factory


def build_schedule(name: str, args: Mapping[str, Any] = {}) -> Schedule:
    """The registered learning-rate schedule ``name`` built with ``args``; errors as :func:`build_optimizer`'s."""
    return build_component("schedules", name, dict(args))


# Optimizer arguments the train section sets with keys of their own, never in train.optimizer_args.
_SET_ELSEWHERE = {"lr": "train.lr", "weight_decay": "train.weight_decay (per parameter group)"}


def check_train_config(train: DictConfig) -> None:
    """The ``train`` section's optimizer and schedule: registered names, and arguments they take (``momentum`` and
    ``nesterov`` when set, ``optimizer_args``, ``schedule_args``). Each problem is a :class:`ConfigError` naming its
    key, before anything is built; values are checked when the optimizer and the schedule are built."""
    for key, where in _SET_ELSEWHERE.items():
        if key in train.optimizer_args:
            raise ConfigError(f"config key 'train.optimizer_args.{key}' cannot be set: it is {where}")
    found = {}
    for kind in ("optimizer", "schedule"):
        try:
            found[kind] = getattr(registries(), f"{kind}s").get(train[kind])
        except UnknownNameError as error:
            raise ConfigError(f"config key 'train.{kind}': {error}") from None
    what, skip = f"optimizer {train.optimizer!r}", (*_set_apart(found["optimizer"]), *_SET_ELSEWHERE)
    checks = [("train.optimizer_args", what, found["optimizer"], train.optimizer_args, skip, ""),
              ("train.schedule_args", f"schedule {train.schedule!r}", found["schedule"], train.schedule_args, (), "")]
    for key in ("momentum", "nesterov"):  # null: the optimizer's own default
        if train[key] is not None:
            if key in train.optimizer_args:
                raise ConfigError(f"config keys 'train.{key}' and 'train.optimizer_args.{key}' are both set; set one")
            checks.append((f"train.{key}", what, found["optimizer"], {key: train[key]}, skip, "; leave it null"))
    for key, what, func, args, skip, hint in checks:
        try:
            check_arguments(what, func, dict(args), skip=skip)
        except TypeError as error:
            raise ConfigError(f"config key {key!r}: {error}{hint}") from None


RECIPE_KEYS = ("distiller", "combiner", "sampler", "phases", "callbacks")


def recipe_defaults(name: str) -> dict[str, Any]:
    """The training recipe a model's plugin registered for it: default distiller / combiner / sampler names, and
    ``phases`` and ``callbacks`` (lists of config mappings, as under ``phases:`` and ``callbacks:`` in a config)."""
    entry, _ = registries().models.resolve(name)
    return {k: entry.options[k] for k in RECIPE_KEYS if k in entry.options}


def build_model(name: str, *, num_classes: int, in_chans: int = 3, combiner: str | Combiner | None = None,
                **overrides: Any) -> SelfEnsemble:
    """Build an untrained self-ensemble by registered name (``selfens_core.create`` without ``pretrained``).

    ``overrides`` are the builder's own arguments (e.g. ``num_members``); an unknown one is an error listing what the
    builder takes. ``combiner`` is a registered combiner name or instance (default: the model's own).
    """
    entry, suffix = registries().models.resolve(name)
    # before the builder runs: timm builds a head-less network for num_classes=0 without a word
    num_classes, in_chans = positive_int("num_classes", num_classes), positive_int("in_chans", in_chans)
    if overrides.get("num_members") is not None:  # builders would take range(True) as one member; None: theirs
        overrides["num_members"] = positive_int("num_members", overrides["num_members"])
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
    """Split a timm model with the first backbone adapter, in name order, that matches it."""
    return _adapter_for(model, name).split(model)


def create_backbone(name: str, *, num_classes: int, in_chans: int, small_images: bool = False,
                    **timm_kwargs) -> nn.Module:
    """``timm.create_model`` for selfens: with ``small_images``, adapted by its family's backbone adapter to
    28×28 / 32×32 inputs (the first two 2× downsamplings removed: total stride 8). Every method builds its timm
    networks through here, so the option means the same thing for all of them."""
    if not isinstance(small_images, bool):
        raise TypeError(f"small_images must be true or false, got {small_images!r}")
    model = create_timm(name, num_classes=num_classes, in_chans=in_chans, **timm_kwargs)
    if small_images:
        adapter = _adapter_for(model, name)
        if getattr(adapter, "small_images", None) is None:
            raise BackboneError(f"the {adapter.family!r} backbone adapter does not support small_images; "
                                f"train {name} at its own resolution or register an adapter that does")
        adapter.small_images(model)  # a BackboneError when the model has nothing to adapt
        _remeasure_feature_info(model, in_chans)
    return model


def _remeasure_feature_info(model: nn.Module, in_chans: int, size: int = 64) -> None:
    """Correct timm's ``feature_info`` reductions after an adapter changed the model's strides: each stage's
    reduction is measured (input size / output size) by one forward pass with hooks, so that consumers that pick
    stages by reduction (a distiller's intermediate taps) get the stages at the resolution they asked for."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not info:
        return
    sizes: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            sizes.setdefault(name, output.shape[-1])
        return hook

    hooks = [model.get_submodule(stage["module"]).register_forward_hook(record(stage["module"])) for stage in info]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_chans, size, size))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    for stage in info:
        stage["reduction"] = size // sizes[stage["module"]]


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
