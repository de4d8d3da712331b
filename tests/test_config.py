from pathlib import Path

import pytest

from selfens_core import engine
from selfens_core.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
# Configs that distil pretrained teachers need teachers trained on their data: their plugin's tests build them with
# stand-in teachers (tests/test_meal.py).
SELF_CONTAINED = [p for p in CONFIGS if "teachers:" not in p.read_text()]


@pytest.mark.parametrize("path", SELF_CONTAINED, ids=lambda p: p.name)
def test_shipped_configs_resolve(path):
    cfg = load_config(path, ["data.name=fake", "data.subset=16"])
    setup = engine.build(cfg)
    assert setup.model.num_members > 1


def test_required_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"hne-resnet-small-fmnist.yaml", "hne-mobilenetv2-fmnist.yaml", "deep-ensemble-fmnist.yaml"} <= names


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", r"unknown config key 'train.epoch'; allowed here: epochs, batch_size"),
    ("trian.epochs=3", r"unknown config key 'trian'; allowed here: model, distiller"),
    ("train.epochs=many", r"bad value for config key 'train.epochs'"),
    ("train.optimizer=adam", r"'train.optimizer' is 'adam'; allowed: sgd, adamw"),
    ("train.lr=-1", r"'train.lr' is out of range"),
    ("data.val_split=1.5", r"'data.val_split' is out of range"),
])
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.name=hne-resnet-small", override])


@pytest.mark.parametrize("override, message", [
    ("distiller.args.alph=0.3", r"distiller \(name 'hne'\): .*unknown argument\(s\) alph; allowed: objective, alpha"),
    ("distiller.name=nope", r"distiller \(name 'nope'\): Unknown distiller 'nope'.*Known: hne, independent"),
    ("model.args.members=3", r"model \(name 'hne-resnet-small'\): .*unknown argument\(s\) members"),
    ("combiner.name=mean", r"Unknown combiner 'mean'.*Known: mean_logits, mean_probs"),
])
def test_bad_component_names_the_section(override, message):
    with pytest.raises(ConfigError, match=message):
        engine.build(load_config(None, ["model.name=hne-resnet-small", "data.name=fake", "data.subset=16", override]))


def test_model_name_is_required():
    with pytest.raises(ConfigError, match="'model.name' is required"):
        load_config(None, [])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")
