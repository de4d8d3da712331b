"""Run configuration: a structured OmegaConf schema, so an unknown key or a wrong type is an error naming the key."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CHOICES = {
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
}


class ConfigError(ValueError):
    """A configuration problem, naming the offending key and what is allowed."""


@dataclass
class ModelConfig:
    name: str = MISSING  # a registered model name (`selfens list`)
    args: Dict[str, Any] = field(default_factory=dict)  # the builder's own arguments, e.g. num_members


@dataclass
class ComponentConfig:
    name: Optional[str] = None  # None: the model's recipe default
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    root: Optional[str] = None
    # quick runs: a seeded N of the training images, and N // 5 (at least 100) of the test images, announced when
    # loading and recorded in metrics.json (num_samples, num_samples_of); null: all of both
    subset: Optional[int] = None
    val_split: float = 0.0  # hold out this fraction of train for per-epoch validation (else the test split)
    augment: bool = True  # the dataset's standard crop and flip (data.AUGMENTATIONS)
    random_erasing: float = 0.0  # with augment: the probability that a training image has a random rectangle erased
    eval_batch_size: int = 500
    stream: bool = False  # imagefolder:PATH only: decode the images per batch instead of holding them in memory
    workers: int = 0  # DataLoader processes that assemble batches (decode, crop, flip); 0: the training process


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128  # the global batch: with N processes (torchrun), each takes batch_size / N of it
    optimizer: str = "sgd"  # a registered optimizer (`selfens plugins`)
    optimizer_args: Dict[str, Any] = field(default_factory=dict)  # its own arguments, e.g. {betas: [0.9, 0.99]}
    lr: float = 0.1
    momentum: Optional[float] = None  # null: the optimizer's default (sgd: 0.9); set: passed to the optimizer
    nesterov: Optional[bool] = None  # null: the optimizer's default (sgd: false)
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # a registered learning-rate schedule, after warmup_epochs of linear warm-up
    schedule_args: Dict[str, Any] = field(default_factory=dict)  # its own arguments, e.g. {cycle_epochs: 4}
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # step schedule, fractions of training
    gamma: float = 0.1  # step schedule: the factor at each milestone
    warmup_epochs: float = 0.0
    grad_clip: Optional[float] = None  # max global gradient norm
    precision: str = "fp32"  # bf16: autocast; fp16 (CUDA only): autocast with a gradient scaler
    channels_last: bool = False
    device: str = "auto"
    seed: int = 0
    keep_checkpoints: int = 2
    checkpoint_every_steps: int = 0  # also checkpoint every N optimizer steps (global); 0: at epoch ends only
    precise_bn: int = 0  # re-estimate BatchNorm statistics on this many training batches before each evaluation
    sync_batchnorm: bool = False  # with several processes: BatchNorm normalises over the global batch, not the shard
    compile: bool = False  # torch.compile the training forward (the first step compiles; its time is printed)
    # a fresh run starts from this trained model's weights (NAME[.TAG], hf-hub:, local-dir:; docs/engine.md)
    init_from: Optional[str] = None


@dataclass
class PhaseOptimizerConfig:
    """One of several optimizers of a phase (``phases[i].optimizers``); unset keys come from the phase."""

    params: List[str] = field(default_factory=lambda: ["all"])  # selectors, as in PhaseConfig.trains
    optimizer: Optional[str] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    optimizer_args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PhaseConfig:
    """One phase of a run (see ``phases.py``); unset keys come from the ``train`` section."""

    name: str = ""
    epochs: Optional[int] = None  # null: train.epochs
    trains: List[str] = field(default_factory=lambda: ["all"])  # all, a model parameter group, or name patterns
    frozen: List[str] = field(default_factory=list)  # module name patterns frozen (eval mode, no gradient)
    optimizer: Optional[str] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    optimizer_args: Dict[str, Any] = field(default_factory=dict)
    optimizers: List[PhaseOptimizerConfig] = field(default_factory=list)  # several optimizers, e.g. one per member
    schedule: Optional[str] = None
    schedule_args: Dict[str, Any] = field(default_factory=dict)
    warmup_epochs: Optional[float] = None  # null: train.warmup_epochs in the first phase, 0 after
    distiller: Optional[ComponentConfig] = None  # this phase's objective instead of the run's
    sampler: Optional[ComponentConfig] = None


@dataclass
class CallbackConfig:
    name: str = MISSING  # a registered callback (`selfens plugins`)
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    distiller: ComponentConfig = field(default_factory=ComponentConfig)
    combiner: ComponentConfig = field(default_factory=ComponentConfig)
    sampler: ComponentConfig = field(default_factory=ComponentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    phases: List[PhaseConfig] = field(default_factory=list)  # empty: the recipe's phases, else one of train's keys
    callbacks: List[CallbackConfig] = field(default_factory=list)  # added to the recipe's callbacks


def _allowed_keys(schema: DictConfig, full_key: str) -> str:
    node: Any = schema
    for part in full_key.split(".")[:-1]:
        node = node.get(part) if isinstance(node, DictConfig) else None
    return ", ".join(node.keys()) if isinstance(node, DictConfig) else ", ".join(schema.keys())


# Arguments build() takes from the dataset and the combiner section, never from model.args.
_MODEL_ARGS_SET_ELSEWHERE = {"num_classes": "data.name (the dataset's classes)",
                             "in_chans": "data.name (the dataset's channels)", "combiner": "the combiner section"}


def _read_yaml(path: str | Path) -> DictConfig:
    """The mapping in a YAML config file; anything else is a ConfigError naming the file (and line) and what is
    expected. YAML tags that construct objects (``!!python/...``) are refused by the loader, never run."""
    expected = "a mapping of sections (model:, data:, train:, ...) at the top level"
    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; expected a YAML file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text ({error.reason} at byte {error.start}); expected a "
                          f"YAML file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        if "constructor for the tag" in problem:
            raise ConfigError(f"config file {path}{where}: {problem}; YAML tags are not allowed (nothing was run): a "
                              "config holds plain values (strings, numbers, lists, mappings)") from None
        context = getattr(error, "context", None)
        raise ConfigError(f"config file {path}{where}: not valid YAML: {problem}"
                          + (f" ({context})" if context else "")) from None
    except OSError as error:
        if error.errno is None:  # OmegaConf: the file holds a single value ("Invalid loaded object type: int")
            raise ConfigError(f"config file {path} holds a single value ({error}); expected {expected}") from None
        raise ConfigError(f"config file {path} cannot be read: {error}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} holds a list at the top level; expected {expected}")
    return loaded


def _apply_overrides(schema: DictConfig, cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``cfg`` with ``key=value`` overrides: merged as one dotlist, except those that reach into a list entry
    (``phases.0.epochs=3`` or ``phases[0].epochs=3``), which update that entry in place, after the others."""
    for item in overrides:
        if "=" not in item or not item.partition("=")[0].strip():
            raise ConfigError(f"override {item!r} is not key=value, e.g. train.epochs=3")
    into_list = [o for o in overrides if _reaches_into_list(o.partition("=")[0])]
    cfg = _merge(schema, cfg, OmegaConf.from_dotlist([o for o in overrides if o not in into_list]))
    for item in into_list:
        key, _, raw = item.partition("=")
        section = key.split(".")[0].split("[")[0]
        entries = len(cfg[section]) if section in cfg and OmegaConf.is_list(cfg[section]) else 0
        try:
            OmegaConf.update(cfg, key.strip(), OmegaConf.from_dotlist([f"value={raw}"])["value"], merge=True)
        except OmegaConfBaseException as error:
            reason = str(error).splitlines()[0]
            if "is not a subclass" in reason:  # an index past the end: OmegaConf would append an empty entry
                reason = f"{section} has {entries} entries (0 to {entries - 1}); set the whole list to add one"
            elif type(error).__name__ in ("ConfigAttributeError", "ConfigKeyError") \
                    and getattr(error, "object_type", None) in _LIST_SECTIONS:  # an unknown key inside an entry
                allowed = ", ".join(f.name for f in dataclasses.fields(error.object_type))
                reason = f"unknown key; allowed in a {_LIST_SECTIONS[error.object_type]} entry: {allowed}"
            raise ConfigError(f"override {item!r}: bad value for config key "
                              f"{getattr(error, 'full_key', None) or key!r}: {reason}") from None
    return cfg


def _reaches_into_list(key: str) -> bool:
    """Whether a dotted override key indexes a list: ``phases.0.epochs`` or ``phases[0].epochs``."""
    return "[" in key or any(part.strip().isdigit() for part in key.split("."))


_LIST_SECTIONS = {PhaseConfig: "phases", PhaseOptimizerConfig: "phases[i].optimizers", CallbackConfig: "callbacks"}


def _merge(schema: DictConfig, cfg: DictConfig, layer: Any, origin: str = "") -> DictConfig:
    """``cfg`` merged with ``layer``; an error names the key, after ``origin`` (e.g. the file) when given."""
    for section, value in (layer.items() if OmegaConf.is_dict(layer) or isinstance(layer, dict) else ()):
        if OmegaConf.is_dict(schema.get(section)) and value is not None \
                and not (OmegaConf.is_dict(value) or isinstance(value, dict)):
            raise ConfigError(f"{origin}config key {section!r} is a section, a mapping of its keys "
                              f"({', '.join(schema[section])}), not {value!r}") from None
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or ""
        if type(error).__name__ == "ConfigKeyError":
            section = _LIST_SECTIONS.get(getattr(error, "object_type", None))
            if section:  # a key inside a list entry: OmegaConf's key path stops at the entry
                allowed = ", ".join(f.name for f in dataclasses.fields(error.object_type))
                raise ConfigError(f"{origin}unknown config key {key!r} in a {section} entry; allowed there: "
                                  f"{allowed}") from None
            allowed = _allowed_keys(schema, key)
            raise ConfigError(f"{origin}unknown config key {key!r}; allowed here: {allowed}") from None
        reason = str(error).splitlines()[0]
        raise ConfigError(f"{origin}bad value for config key {key!r}: {reason}") from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> DictConfig:
    """The schema's defaults, merged with a YAML file and ``key=value`` dotlist overrides, validated.

    Every problem is a :class:`ConfigError` naming the file (and line) or the key, and what is expected."""
    schema = OmegaConf.structured(RunConfig)
    cfg = schema
    if path is not None:
        cfg = _merge(schema, cfg, _read_yaml(path), f"config file {path}: ")
    cfg = _apply_overrides(schema, cfg, list(overrides))
    try:
        OmegaConf.resolve(cfg)  # a bad ${interpolation} is an error now, not a traceback later
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or ""
        raise ConfigError(f"bad value for config key {key!r}: {str(error).splitlines()[0]}") from None
    if OmegaConf.is_missing(cfg.model, "name"):
        raise ConfigError("config key 'model.name' is required: a registered model name (see `selfens list`)")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key {key!r} is {value!r}; allowed: {', '.join(allowed)}")
    if cfg.data.stream and not cfg.data.name.startswith("imagefolder:"):
        raise ConfigError(f"config key 'data.stream' is true, but data.name {cfg.data.name!r} is held in memory: only "
                          "imagefolder:PATH datasets are streamed from disk; set data.stream=false")
    for arg, source in _MODEL_ARGS_SET_ELSEWHERE.items():
        if arg in cfg.model.args:
            raise ConfigError(f"config key 'model.args.{arg}' cannot be set: it comes from {source}; remove it")
    _check_ranges(cfg)
    return cfg


def _check_ranges(cfg: DictConfig) -> None:
    t, d = cfg.train, cfg.data
    checks = {  # key: (holds, what is expected)
        "train.epochs": (t.epochs >= 1, ">= 1"), "train.batch_size": (t.batch_size >= 1, ">= 1"),
        "train.lr": (math.isfinite(t.lr) and t.lr > 0, "a finite number > 0"),
        "train.momentum": (t.momentum is None or 0.0 <= t.momentum < 1.0, "null or in [0, 1)"),
        "train.weight_decay": (math.isfinite(t.weight_decay) and t.weight_decay >= 0, "a finite number >= 0"),
        "train.gamma": (math.isfinite(t.gamma) and t.gamma > 0, "a finite number > 0"),
        "train.milestones": (all(0.0 <= m <= 1.0 for m in t.milestones),
                             "fractions of training in [0, 1], e.g. [0.5, 0.75], not epochs"),
        "train.warmup_epochs": (0.0 <= t.warmup_epochs <= t.epochs, "in [0, train.epochs]"),
        "train.grad_clip": (t.grad_clip is None or t.grad_clip > 0, "null or > 0"),
        "train.keep_checkpoints": (t.keep_checkpoints >= 1, ">= 1"),
        "train.checkpoint_every_steps": (t.checkpoint_every_steps >= 0,
                                         ">= 0 (optimizer steps; 0 checkpoints at epoch ends only)"),
        "train.precise_bn": (t.precise_bn >= 0, ">= 0 (training batches; 0 turns precise BatchNorm off)"),
        "train.init_from": (t.init_from is None or bool(t.init_from.strip()),
                            "null or a model reference: NAME[.TAG], hf-hub:ORG/REPO@REV or local-dir:PATH"),
        "data.val_split": (0.0 <= d.val_split < 1.0, "in [0, 1)"),
        "data.random_erasing": (0.0 <= d.random_erasing <= 1.0, "a probability in [0, 1] (0 turns it off)"),
        "data.subset": (d.subset is None or d.subset >= 1, "null (all images) or >= 1"),
        "data.eval_batch_size": (d.eval_batch_size >= 1, ">= 1"),
        "data.workers": (d.workers >= 0, ">= 0 (DataLoader processes; 0 assembles batches in the training process)"),
    }
    for key, (ok, expected) in checks.items():
        if not ok:
            raise ConfigError(f"config key {key!r} is out of range: {OmegaConf.select(cfg, key)!r}; expected "
                              f"{expected}")
    if d.random_erasing and not d.augment:
        raise ConfigError(f"config key 'data.random_erasing' is {d.random_erasing} but data.augment is false, which "
                          "turns all training augmentation off; set data.augment=true, or data.random_erasing=0")


def save_config(cfg: DictConfig, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))
