"""Run configuration: a structured OmegaConf schema, so an unknown key or a wrong type is an error naming the key."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CHOICES = {
    "train.optimizer": ("sgd", "adamw"),
    "train.schedule": ("cosine", "step", "constant"),
    "train.precision": ("fp32", "bf16"),
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
    subset: Optional[int] = None  # keep the first N training images (and N//5 test images): quick runs
    val_split: float = 0.0  # hold out this fraction of train for per-epoch validation (else the test split)
    augment: bool = True
    eval_batch_size: int = 500


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # step schedule, fractions of training
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    grad_clip: Optional[float] = None  # max global gradient norm
    precision: str = "fp32"
    channels_last: bool = False
    device: str = "auto"
    seed: int = 0
    keep_checkpoints: int = 2


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    distiller: ComponentConfig = field(default_factory=ComponentConfig)
    combiner: ComponentConfig = field(default_factory=ComponentConfig)
    sampler: ComponentConfig = field(default_factory=ComponentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _allowed_keys(schema: DictConfig, full_key: str) -> str:
    node: Any = schema
    for part in full_key.split(".")[:-1]:
        node = node.get(part) if isinstance(node, DictConfig) else None
    return ", ".join(node.keys()) if isinstance(node, DictConfig) else ", ".join(schema.keys())


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> DictConfig:
    """The schema's defaults, merged with a YAML file and ``key=value`` dotlist overrides, validated."""
    schema = OmegaConf.structured(RunConfig)
    try:
        layers = [OmegaConf.load(path)] if path is not None else []
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.merge(schema, *layers)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or ""
        if type(error).__name__ == "ConfigKeyError":
            raise ConfigError(f"unknown config key {key!r}; allowed here: {_allowed_keys(schema, key)}") from None
        reason = str(error).splitlines()[0]
        raise ConfigError(f"bad value for config key {key!r}: {reason}") from None
    if OmegaConf.is_missing(cfg.model, "name"):
        raise ConfigError("config key 'model.name' is required: a registered model name (see `selfens list`)")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key {key!r} is {value!r}; allowed: {', '.join(allowed)}")
    _check_ranges(cfg)
    return cfg


def _check_ranges(cfg: DictConfig) -> None:
    checks = {
        "train.epochs": cfg.train.epochs >= 1, "train.batch_size": cfg.train.batch_size >= 1,
        "train.lr": cfg.train.lr > 0, "data.val_split": 0.0 <= cfg.data.val_split < 1.0,
        "data.subset": cfg.data.subset is None or cfg.data.subset >= 1,
        "train.keep_checkpoints": cfg.train.keep_checkpoints >= 1,
    }
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(f"config key {key!r} is out of range: {OmegaConf.select(cfg, key)!r}")


def save_config(cfg: DictConfig, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))
