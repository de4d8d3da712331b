"""A trained model on disk: ``config.json`` (``pretrained_cfg``: architecture, build arguments, data facts) and
``model.safetensors``, the layout the model zoo uses too. Loading is strict: weights that do not fit are refused."""
from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import load_weights, save_weights
from .ensemble import SelfEnsemble
from .factory import build_component, build_model

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
        raise FileNotFoundError(f"{directory} is not a trained model directory: {CONFIG_FILE} is missing")
    cfg = json.loads(config_file.read_text())
    combiner = cfg.get("combiner")
    if combiner is not None:  # with the options it was trained with (e.g. the voting seed)
        combiner = build_component("combiners", combiner, cfg.get("combiner_args"))
    model = build_model(cfg["architecture"], num_classes=cfg["num_classes"], in_chans=cfg["in_chans"],
                   combiner=combiner, **cfg.get("build_args", {}))
    load_weights(directory / WEIGHTS_FILE, model, strict=True)
    model.pretrained_cfg.update(cfg)
    return model.eval()
