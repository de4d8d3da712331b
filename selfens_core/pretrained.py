"""A trained model on disk: ``config.json`` (``pretrained_cfg``: architecture, build arguments, data facts) and
``model.safetensors``, the layout the model zoo uses too. Loading is strict: weights that do not fit are refused."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, load_weights, save_weights
from .ensemble import SelfEnsemble
from .factory import build_component, build_model
from .registry import UnknownNameError

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_pretrained(model: SelfEnsemble, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(directory / WEIGHTS_FILE, model)
    (directory / CONFIG_FILE).write_text(json.dumps(model.pretrained_cfg, indent=2))
    return directory


def load_pretrained(directory: str | Path) -> SelfEnsemble:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` strictly; returns it in eval mode."""
    directory = Path(directory)
    config_file = directory / CONFIG_FILE
    if not config_file.is_file():
        why = ("does not exist" if not directory.exists() else
               "is a file: give the folder that holds it" if directory.is_file() else
               f"is not a trained model directory: {CONFIG_FILE} is missing")
        raise FileNotFoundError(f"{directory} {why}")
    cfg = _read_config(config_file)
    try:
        combiner = cfg.get("combiner")
        if combiner is not None:  # with the options it was trained with (e.g. a merge layer's options)
            combiner = build_component("combiners", combiner, cfg.get("combiner_args"))
        model = build_model(cfg["architecture"], num_classes=cfg["num_classes"], in_chans=cfg["in_chans"],
                            combiner=combiner, **cfg.get("build_args", {}))
    except UnknownNameError as error:  # a plugin not installed, or an edited config.json
        raise UnknownNameError(f"{config_file}: {error}") from None
    except (TypeError, ValueError) as error:  # e.g. a build argument the installed plugin no longer takes
        raise ValueError(f"{config_file}: cannot build {cfg['architecture']!r} from it: {error}") from error
    try:
        load_weights(directory / WEIGHTS_FILE, model, strict=True)
    except CheckpointError as error:
        raise CheckpointError(f"{error}\n{config_file} builds {cfg['architecture']!r} with build_args "
                              f"{cfg.get('build_args', {})}: the weights were saved from another model, or "
                              f"{CONFIG_FILE} was changed") from None
    model.pretrained_cfg.update(cfg)
    return model.eval()


def check_same_data(what: str, cfg: dict[str, Any], expected: dict[str, Any], whose: str = "this run's data") -> None:
    """Raise ``ValueError`` naming ``what`` (e.g. ``"teacher 'resnet10t.fmnist'"``) when the pretrained config ``cfg``
    says its model was trained on data other than ``expected``'s: number of classes, input channels, normalisation
    (mean/std) or class names. For everything that reuses a trained model inside a run (teachers, initial weights)."""
    for key in ("num_classes", "in_chans"):
        if cfg[key] != expected[key]:
            raise ValueError(f"{what} has {key}={cfg[key]}, but {whose} has {expected[key]}")
    for key in ("mean", "std"):
        a, b = cfg.get(key), expected.get(key)
        if a is None or b is None or len(a) != len(b) or any(not math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6)
                                                             for x, y in zip(a, b)):
            raise ValueError(f"{what} expects inputs normalised with {key}={a}, but {whose} "
                             f"({expected.get('dataset')}) uses {key}={b}: it was trained on other data")
    names, own = cfg.get("class_names"), expected.get("class_names")
    if names is not None and own is not None and list(names) != list(own):
        raise ValueError(f"{what} has classes {list(names)[:4]}..., {whose} ({expected.get('dataset')}) has "
                         f"{list(own)[:4]}...")


_REQUIRED = {"architecture": "str", "num_classes": "int", "in_chans": "int"}
_EXPECTED = ("an object with 'architecture' (the registered model name, as `selfens list` shows it), 'num_classes', "
             "'in_chans' and 'build_args', as save_pretrained writes it")


def _read_config(config_file: Path) -> dict:
    """``config.json`` as a dict holding what :func:`load_pretrained` needs, or a ValueError naming the file and
    what is wrong with it."""
    try:
        cfg = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_file} is not valid JSON ({error}); expected {_EXPECTED}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{config_file} holds a JSON {type(cfg).__name__}, not an object; expected {_EXPECTED}")
    missing = [key for key in _REQUIRED if key not in cfg]
    if missing:
        raise ValueError(f"{config_file} lacks {', '.join(map(repr, missing))}; expected {_EXPECTED}")
    wrong = [f"{key!r} is {type(cfg[key]).__name__} {cfg[key]!r}, not {kind}" for key, kind in _REQUIRED.items()
             if type(cfg[key]).__name__ != kind]
    if not isinstance(cfg.get("build_args", {}), dict):
        wrong.append(f"'build_args' is {type(cfg['build_args']).__name__}, not an object")
    if wrong:
        raise ValueError(f"{config_file}: {'; '.join(wrong)}; expected {_EXPECTED}")
    return cfg
