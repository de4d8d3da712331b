"""Training phases: what trains when, with which optimizers and schedule.

A run is a sequence of phases (``phases:`` in the config, else the model recipe's, else one phase made of the
``train`` keys). Each phase selects the parameters it trains by name: ``all``, a group the model names in
``parameter_groups()`` (``members``, ``combiner``, a head, one group per member ...) or an fnmatch pattern over
parameter names. Every other parameter is frozen for the phase: no gradient, and a module none of whose parameters
train is held in evaluation mode, so its BatchNorm statistics do not drift and its dropout is off. ``frozen:``
patterns over module names freeze more. A phase trains its parameters with one optimizer, or with several
(``optimizers:``, e.g. one per member), all under the phase's schedule.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from .config import ConfigError, PhaseConfig


@dataclass
class OptimizerSpec:
    """One optimizer of a phase: the parameters it steps and how."""

    params: list[str]
    optimizer: str
    lr: float
    weight_decay: float
    args: dict[str, Any]


@dataclass
class Phase:
    """A resolved phase: every setting filled in from the phase, else the ``train`` section."""

    index: int
    name: str
    epochs: int
    trains: list[str]
    frozen: list[str]
    optimizers: list[OptimizerSpec]
    schedule: str
    schedule_args: dict[str, Any]
    warmup_epochs: float
    distiller: dict[str, Any] | None  # {"name", "args"} overriding the run's distiller for this phase
    sampler: dict[str, Any] | None


def _train_args(train: DictConfig) -> dict[str, Any]:
    """The optimizer arguments of the ``train`` section: momentum and nesterov when set, then optimizer_args."""
    args = {k: train[k] for k in ("momentum", "nesterov") if train.get(k) is not None}
    return {**args, **OmegaConf.to_container(train.get("optimizer_args", {}))}


def _optimizer_spec(entry: dict[str, Any], phase: dict[str, Any], train: DictConfig) -> OptimizerSpec:
    """An optimizer entry completed from its phase, then from ``train``. An entry (or phase) naming an optimizer
    other than ``train.optimizer`` does not inherit ``train``'s optimizer arguments (they belong to that one)."""
    name = entry.get("optimizer") or phase.get("optimizer") or train.optimizer
    inherited = _train_args(train) if name == train.optimizer else {}
    if phase.get("optimizer") in (None, name):
        inherited = {**inherited, **(phase.get("optimizer_args") or {})}
    return OptimizerSpec(
        params=list(entry.get("params") or ["all"]),
        optimizer=name,
        lr=_first(entry.get("lr"), phase.get("lr"), train.lr),
        weight_decay=_first(entry.get("weight_decay"), phase.get("weight_decay"), train.weight_decay),
        args={**inherited, **(entry.get("optimizer_args") or {})},
    )


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def resolve_phases(cfg: DictConfig, recipe_phases: Sequence[dict[str, Any]] | None = None) -> list[Phase]:
    """The run's phases: ``cfg.phases``, else the recipe's, else one phase of the ``train`` keys."""
    train = cfg.train
    raw = (OmegaConf.to_container(cfg.phases, resolve=True) if cfg.get("phases")
           else [_checked(phase, i, cfg.model.name) for i, phase in enumerate(recipe_phases or [{}])])
    phases = []
    for index, phase in enumerate(raw):
        where = f"phases[{index}]"
        epochs = phase.get("epochs") if phase.get("epochs") is not None else train.epochs
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"config key '{where}.epochs' is {epochs!r}; expected an int >= 1")
        entries = phase.get("optimizers") or [{"params": ["all"]}]
        phases.append(Phase(
            index=index, name=phase.get("name") or f"phase{index + 1}", epochs=epochs,
            trains=list(phase.get("trains") or ["all"]), frozen=list(phase.get("frozen") or []),
            optimizers=[_optimizer_spec(e, phase, train) for e in entries],
            schedule=phase.get("schedule") or train.schedule,
            schedule_args=_schedule_args(phase, train),
            warmup_epochs=_first(phase.get("warmup_epochs"), train.warmup_epochs if index == 0 else 0.0),
            distiller=phase.get("distiller"), sampler=phase.get("sampler"),
        ))
    return phases


def _checked(phase: dict[str, Any], index: int, model: str) -> dict[str, Any]:
    """A phase of a model's recipe, checked against the schema as strictly as one in a config file."""
    try:
        return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(PhaseConfig), phase))
    except OmegaConfBaseException as error:
        raise ConfigError(f"the recipe of model {model!r}, phases[{index}]: {str(error).splitlines()[0]}") from None


def _schedule_args(phase: dict[str, Any], train: DictConfig) -> dict[str, Any]:
    if phase.get("schedule") not in (None, train.schedule):
        return dict(phase.get("schedule_args") or {})
    inherited = OmegaConf.to_container(train.get("schedule_args", {}))
    if train.schedule == "step":  # train.milestones and train.gamma: the step schedule's shorthand keys
        inherited = {"milestones": list(train.milestones), "gamma": train.gamma, **inherited}
    return {**inherited, **(phase.get("schedule_args") or {})}


def select(model: nn.Module, selectors: Sequence[str], where: str) -> list[str]:
    """Names of the model's parameters that ``selectors`` pick: ``all``, a group of ``model.parameter_groups()``
    or an fnmatch pattern over parameter names. A selector that picks nothing is a ConfigError listing the groups."""
    names = [n for n, _ in model.named_parameters()]
    groups = {"all": names, **model.parameter_groups()}
    chosen: dict[str, None] = {}
    for selector in selectors:
        picked = groups.get(selector) or [n for n in names if fnmatch.fnmatchcase(n, selector)]
        if not picked:
            raise ConfigError(f"config key '{where}': {selector!r} selects no parameter of this model; groups: "
                              f"{', '.join(sorted(groups))}, or an fnmatch pattern over parameter names such as "
                              f"{names[0]!r}")
        chosen.update(dict.fromkeys(picked))
    return list(chosen)


def frozen_modules(model: nn.Module, patterns: Sequence[str], where: str) -> list[str]:
    """Names of the modules that ``patterns`` (fnmatch over module names) pick; a pattern that picks nothing is a
    ConfigError."""
    names = [n for n, _ in model.named_modules() if n]
    found: dict[str, None] = {}
    for pattern in patterns:
        picked = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not picked:
            raise ConfigError(f"config key '{where}': {pattern!r} matches no module of this model (modules are "
                              f"named like {', '.join(names[:3])})")
        found.update(dict.fromkeys(picked))
    return list(found)


def apply_phase(model: nn.Module, phase: Phase) -> tuple[list[str], list[nn.Module]]:
    """Set ``requires_grad`` for ``phase``: the parameters it trains, minus those under its ``frozen`` modules.
    Returns the trained parameter names and the modules to hold in evaluation mode (each module whose parameters,
    and it has some, all stay frozen; the largest such modules only)."""
    trained = set(select(model, phase.trains, f"phases[{phase.index}].trains"))
    for module in frozen_modules(model, phase.frozen, f"phases[{phase.index}].frozen"):
        trained -= {f"{module}.{n}" for n, _ in model.get_submodule(module).named_parameters()}
    if not trained:
        raise ConfigError(f"phase {phase.name!r} (phases[{phase.index}]) trains no parameter: check trains and frozen")
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
    held, held_names = [], []
    for name, module in model.named_modules():
        if any(name.startswith(h + ".") for h in held_names):
            continue  # inside a module already held
        params = list(module.parameters())
        if name and params and not any(p.requires_grad for p in params):
            held.append(module)
            held_names.append(name)
    return [n for n, _ in model.named_parameters() if n in trained], held


def release(model: nn.Module) -> None:
    """Undo :func:`apply_phase`: every parameter trainable again (as a model loaded from disk is)."""
    for p in model.parameters():
        p.requires_grad_(True)


class OptimizerSet:
    """Several optimizers used together as one (a phase with one optimizer per member; the engine steps each through
    the gradient scaler). Its state dict lists theirs, and loads a single optimizer's plain state dict when it holds
    one optimizer (runs of one optimizer)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        parts = state["optimizers"] if "optimizers" in state else [state]
        if len(parts) != len(self.optimizers):
            raise ValueError(f"optimizer state holds {len(parts)} optimizer(s), this phase has {len(self.optimizers)}")
        for o, part in zip(self.optimizers, parts):
            o.load_state_dict(part)


class ScheduleSet:
    """One LambdaLR per optimizer of an :class:`OptimizerSet`, all following the same multiplier."""

    def __init__(self, optimizers: OptimizerSet, multiplier):
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, multiplier) for o in optimizers.optimizers]

    def step(self) -> None:
        for s in self.schedulers:
            s.step()

    def get_last_lr(self) -> list[float]:
        return [lr for s in self.schedulers for lr in s.get_last_lr()]

    def state_dict(self) -> dict[str, Any]:
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        parts = state["schedulers"] if "schedulers" in state else [state]
        for s, part in zip(self.schedulers, parts, strict=True):
            s.load_state_dict(part)
