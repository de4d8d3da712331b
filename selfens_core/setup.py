"""Building a run from its config: model, components, phases, data and device, checked before anything trains,
so that every config error comes first and names its key. :mod:`.engine` trains what :func:`build` returns."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError
from .data import AnySplit, DatasetInfo, load_dataset, num_batches
from .distributed import World, launched_world, synced_batchnorm
from .ensemble import SelfEnsemble
from .factory import (
    build_component,
    build_model,
    build_schedule,
    check_optimizer,
    check_train_config,
    optimizer_defaults,
    recipe_defaults,
)
from .phases import Phase, frozen_modules, resolve_phases, select

# The components every model has, and the core's default when its plugin names none.
COMPONENT_DEFAULTS = {"distiller": "independent", "sampler": "all", "combiner": "mean_logits"}


@dataclass
class Setup:
    """Everything a run needs, built from its config before the first step (so config errors come first)."""

    cfg: DictConfig  # with the component names resolved (resolve_recipe)
    model: SelfEnsemble
    distiller: torch.nn.Module
    sampler: Any
    info: DatasetInfo
    splits: dict[str, AnySplit]
    device: torch.device
    steps_per_epoch: int
    phases: list[Phase]
    phase_distillers: dict[int, torch.nn.Module]  # phases with their own objective
    phase_samplers: dict[int, Any]
    callbacks: list[Any]
    world: World  # this process among the run's processes (torchrun); a world of one by default
    forward: Any  # what a training pass calls: model.outputs, compiled with train.compile
    compiled_phases: set[int] = field(default_factory=set)  # phases whose first step (compilation) was reported

    @property
    def epochs(self) -> int:
        """Epochs of the whole run: the sum over its phases."""
        return sum(p.epochs for p in self.phases)

    def first_epoch(self, phase: Phase) -> int:
        return sum(p.epochs for p in self.phases[:phase.index])

    def phase_at(self, epoch: int) -> Phase:
        """The phase that global epoch ``epoch`` (0-based) belongs to."""
        return next(p for p in self.phases if epoch < self.first_epoch(p) + p.epochs)

    def batchnorm_scope(self) -> contextlib.AbstractContextManager:
        """Where BatchNorm in training mode normalises: over the global batch with ``train.sync_batchnorm`` in a run
        of several processes, else over this process's batch."""
        return synced_batchnorm(self.world) if self.cfg.train.sync_batchnorm else contextlib.nullcontext()

    def listeners(self, phase: Phase) -> list[Any]:
        """What callbacks are called on, in order: the run's callbacks, then the model, its combiner, and the
        phase's distiller and sampler."""
        distiller = self.phase_distillers.get(phase.index, self.distiller)
        return [*self.callbacks, self.model, self.model.combiner, distiller,
                self.phase_samplers.get(phase.index, self.sampler)]


def pick_device(name: str, world: World | None = None) -> torch.device:
    """The device ``train.device`` names; on CUDA, the GPU of this process's ``world.local_rank``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use train.device=auto")
    return torch.device("cuda", world.local_rank) if name == "cuda" and world else torch.device(name)


def resolve_recipe(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose unset component names (``distiller``, ``sampler``, ``combiner``) are the model's
    recipe defaults (else the core's) and whose unset ``train.momentum`` / ``train.nesterov`` are the optimizer's
    defaults (where it takes them), so that ``config.yaml`` and resume checks say what actually runs."""
    resolved = copy.deepcopy(cfg)
    recipe = recipe_defaults(cfg.model.name)
    for kind, core_default in COMPONENT_DEFAULTS.items():
        if resolved[kind].name is None:
            resolved[kind].name = recipe.get(kind, core_default)
    check_train_config(resolved.train)
    for key, default in optimizer_defaults(resolved.train.optimizer, ("momentum", "nesterov")).items():
        if resolved.train[key] is None:  # null: the optimizer's own default, written down
            resolved.train[key] = default
    return resolved


def _component(cfg: DictConfig, kind: str, registry: str) -> Any:
    name = cfg[kind].name
    try:
        return build_component(registry, name, OmegaConf.to_container(cfg[kind].args))
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"{kind} (name {name!r}): {error}") from None


def _components_record(cfg: DictConfig) -> dict[str, Any]:
    """Names and arguments of the components, for ``config.json`` (the combiner's also rebuild the model)."""
    record = {}
    for kind in COMPONENT_DEFAULTS:
        record[kind] = cfg[kind].name
        record[f"{kind}_args"] = OmegaConf.to_container(cfg[kind].args)
    return record


def _phase_component(phase: Phase, kind: str, registry: str) -> Any:
    spec = getattr(phase, kind)
    try:
        return build_component(registry, spec["name"], spec.get("args") or {})
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"phases[{phase.index}].{kind} (name {spec['name']!r}): {error}") from None


def _callbacks(cfg: DictConfig, recipe: dict[str, Any]) -> list[Any]:
    """The recipe's callbacks, then the config's, built from the callback registry."""
    specs = [*recipe.get("callbacks", []), *OmegaConf.to_container(cfg.callbacks, resolve=True)]
    built = []
    for index, spec in enumerate(specs):
        try:
            built.append(build_component("callbacks", spec["name"], spec.get("args") or {}))
        except (TypeError, ValueError, KeyError) as error:
            raise ConfigError(f"callbacks[{index}] (name {spec['name']!r}): {error}") from None
    return built


def _check_phase(model: SelfEnsemble, phase: Phase) -> None:
    """Everything about ``phase`` that can be checked before training: selectors, schedule, optimizer names and
    arguments."""
    where = f"phases[{phase.index}]"
    select(model, phase.trains, f"{where}.trains")
    frozen_modules(model, phase.frozen, f"{where}.frozen")
    phase_schedule(phase)
    if not 0.0 <= phase.warmup_epochs <= phase.epochs:
        inherited = " (train.warmup_epochs, which phase 0 takes when it sets none)" if phase.index == 0 else ""
        raise ConfigError(f"{where}.warmup_epochs{inherited} is {phase.warmup_epochs}: it must be in [0, "
                          f"{phase.epochs}], the phase's epochs")
    for index, spec in enumerate(phase.optimizers):
        select(model, spec.params, f"{where}.optimizers[{index}].params")
        try:
            check_optimizer(spec.optimizer, spec.args)
        except (TypeError, KeyError) as error:
            raise ConfigError(f"{where} optimizer {spec.optimizer!r}: {error}") from None


def build(cfg: DictConfig, world: World | None = None) -> Setup:
    """Resolve the config into model, components, phases and data; every error names the config key at fault.
    ``world``: this process's place in a run of several (default: as ``torchrun`` describes it, else one)."""
    world = world or launched_world()
    cfg = resolve_recipe(cfg)
    _check_scale_out(cfg, world)
    recipe = recipe_defaults(cfg.model.name)
    torch.manual_seed(cfg.train.seed)
    distiller = _component(cfg, "distiller", "distillers")
    sampler = _component(cfg, "sampler", "samplers")
    combiner = _component(cfg, "combiner", "combiners")
    phases = resolve_phases(cfg, recipe.get("phases"))
    phase_distillers = {p.index: _phase_component(p, "distiller", "distillers") for p in phases if p.distiller}
    phase_samplers = {p.index: _phase_component(p, "sampler", "samplers") for p in phases if p.sampler}
    callbacks = _callbacks(cfg, recipe)
    info, splits = load_dataset(cfg.data.name, root=cfg.data.root, subset=cfg.data.subset,
                                val_split=cfg.data.val_split, seed=cfg.train.seed, stream=cfg.data.stream,
                                workers=cfg.data.workers)
    model_args = OmegaConf.to_container(cfg.model.args)
    try:
        model = build_model(cfg.model.name, num_classes=info.num_classes, in_chans=info.in_chans, combiner=combiner,
                            **model_args)
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"model (name {cfg.model.name!r}, model.args {model_args}): {error}") from None
    except (AttributeError, IndexError, RuntimeError) as error:  # raised deep in a builder: name what was asked
        raise ConfigError(f"model (name {cfg.model.name!r}) cannot be built from model.args {model_args}: "
                          f"{type(error).__name__}: {error}") from error
    model.pretrained_cfg.update(
        **_components_record(cfg), input_size=info.input_size, mean=info.mean, std=info.std,
        class_names=list(info.class_names), dataset=info.name,
    )
    for where, objective in [(f"distiller (name {cfg.distiller.name!r})", distiller),
                             *((f"phases[{i}].distiller", d) for i, d in phase_distillers.items())]:
        if hasattr(objective, "attach"):  # hooks and parameters sized from the model, before the optimizer exists
            try:
                objective.attach(model)
            except ValueError as error:
                raise ConfigError(f"{where}: {error}") from None
    for phase in phases:  # a config error now, before anything is written, not at the phase's start
        _check_phase(model, phase)
    device = pick_device(cfg.train.device, world)
    if cfg.train.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision is 'fp16', which trains with a gradient scaler on CUDA; this run is on "
                          f"{device.type}: use train.precision=bf16 or fp32")
    model.to(device)
    for objective in (distiller, *phase_distillers.values()):
        objective.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    steps = num_batches(splits["train"], cfg.train.batch_size, drop_last=True)
    # dynamic=False: one graph per input shape and member count, never symbolic channel counts (tree layers derive
    # their active branches from them, which inductor could not order for a tree model)
    forward = torch.compile(model.outputs, dynamic=False) if cfg.train.compile else model.outputs
    return Setup(cfg, model, distiller, sampler, info, splits, device, steps, phases, phase_distillers,
                 phase_samplers, callbacks, world, forward)


def _check_scale_out(cfg: DictConfig, world: World) -> None:
    """What several processes need of a config: a global batch that splits evenly (each rank's mean loss then weighs
    the same), and no compilation under synced BatchNorm."""
    if cfg.train.compile and cfg.train.sync_batchnorm and world.size > 1:
        raise ConfigError("train.compile and train.sync_batchnorm cannot be combined yet (synced BatchNorm intercepts "
                          "torch functions, which compiled code bypasses); turn one of them off")
    if cfg.train.batch_size % world.size:
        raise ConfigError(f"train.batch_size is the global batch, {cfg.train.batch_size}, which {world.size} "
                          f"processes cannot share evenly; use a multiple of {world.size}")


def phase_schedule(phase: Phase) -> Any:
    """The learning-rate schedule ``phase`` names, built from the schedule registry."""
    try:
        return build_schedule(phase.schedule, phase.schedule_args)
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"phases[{phase.index}] schedule {phase.schedule!r}: {error}") from None
