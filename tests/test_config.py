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
    cfg = load_config(path, ["data.name=fake", "data.subset=128"])
    setup = engine.build(cfg)
    if "num_members" in cfg.model.args:  # e.g. a single-network baseline (num_members: 1)
        assert setup.model.num_members == cfg.model.args.num_members
    else:  # the recipe's self-ensemble
        assert setup.model.num_members > 1
    assert setup.steps_per_epoch == 128 // cfg.train.batch_size


def test_required_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"hne-resnet-small-fmnist.yaml", "hne-mobilenetv2-fmnist.yaml", "deep-ensemble-fmnist.yaml"} <= names


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", r"unknown config key 'train.epoch'; allowed here: epochs, batch_size"),
    ("trian.epochs=3", r"unknown config key 'trian'; allowed here: model, distiller"),
    ("train.epochs=many", r"bad value for config key 'train.epochs'"),
    ("train.precision=fp8", r"'train.precision' is 'fp8'; allowed: fp32, bf16, fp16"),
    ("train.lr=-1", r"'train.lr' is out of range"),
    ("data.val_split=1.5", r"'data.val_split' is out of range"),
    ("train.init_from=' '", r"'train.init_from' is out of range: ' '; expected null or a model reference"),
    ("train=3", r"config key 'train' is a section, a mapping of its keys \(epochs, batch_size, .*\), not 3"),
])
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.name=hne-resnet-small", override])


@pytest.mark.parametrize("override, message", [
    ("distiller.args.alph=0.3", r"distiller \(name 'hne'\): .*unknown argument\(s\) alph; allowed: objective, alpha"),
    ("distiller.name=nope", r"distiller \(name 'nope'\): Unknown distiller 'nope'.*Known: .*hne, independent"),
    ("model.args.members=3", r"model \(name 'hne-resnet-small', model.args \{'members': 3\}\): .*unknown "
                             r"argument\(s\) members"),
    ("combiner.name=mean", r"Unknown combiner 'mean'.*Known: mean_logits, mean_probs"),
    ("model.args.num_members=-4", r"model \(name 'hne-resnet-small'.*\{'num_members': -4\}"),
])
def test_bad_component_names_the_section(override, message):
    with pytest.raises(ConfigError, match=message):
        engine.build(load_config(None, ["model.name=hne-resnet-small", "data.name=fake", "data.subset=128", override]))


def test_model_name_is_required():
    with pytest.raises(ConfigError, match="'model.name' is required"):
        load_config(None, [])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


@pytest.mark.parametrize("text, message", [
    ("- model\n- train\n", r"holds a list at the top level; expected a mapping of sections \(model:, data:, train:"),
    ("42\n", r"holds a single value .*; expected a mapping of sections"),
    ("model:\n  name: x\n train: [\n", r", line 3 column 2: not valid YAML: did not find expected key"),
    ("train:\n  epochs: 3\ntrain:\n  lr: 1\n", r", line 3 column 1: not valid YAML: found duplicate key train"),
    ("train:\n  epoch: 3\n", r"bad\.yaml: unknown config key 'train.epoch'; allowed here: epochs"),
    ("train:\n  epochs: many\n", r"bad\.yaml: bad value for config key 'train.epochs'"),
    ("model: hne-resnet-small\n", r"bad\.yaml: config key 'model' is a section, a mapping of its keys \(name, args\), "
                                  r"not 'hne-resnet-small'"),
])
def test_bad_yaml_names_the_file_and_what_is_expected(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path, ["model.name=hne-resnet-small"])
    assert str(err.value).startswith(f"config file {path}")


def test_yaml_python_tag_is_refused_and_runs_nothing(tmp_path):
    ran = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"model:\n  name: !!python/object/apply:os.mkdir ['{ran}']\n")
    with pytest.raises(ConfigError, match=r"config file .*evil\.yaml, line 2 column 9: could not determine a "
                                          r"constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.mkdir'; "
                                          r"YAML tags are not allowed \(nothing was run\)"):
        load_config(path)
    assert not ran.exists()


def test_unreadable_config_files(tmp_path):
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match=r"weights\.yaml is not UTF-8 text .*expected a YAML file"):
        load_config(binary)
    with pytest.raises(ConfigError, match=r"is a folder; expected a YAML file"):
        load_config(tmp_path)


def test_empty_config_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path, ["model.name=hne-resnet-small"]).train.epochs == 10


@pytest.mark.parametrize("override, message", [
    ("train.epochs", r"override 'train.epochs' is not key=value, e.g. train.epochs=3"),
    ("train.lr=${nope}", r"bad value for config key 'train.lr': Interpolation key 'nope' not found"),
    ("model.args.num_classes=-1", r"'model.args.num_classes' cannot be set: it comes from data.name"),
    ("model.args.in_chans=3", r"'model.args.in_chans' cannot be set: it comes from data.name"),
    ("model.args.combiner=mean_probs", r"'model.args.combiner' cannot be set: it comes from the combiner section"),
    ("train.lr=inf", r"'train.lr' is out of range: inf; expected a finite number > 0"),
    ("train.momentum=1.5", r"'train.momentum' is out of range: 1.5; expected null or in \[0, 1\)"),
    ("train.weight_decay=-0.1", r"'train.weight_decay' is out of range"),
    ("train.gamma=0", r"'train.gamma' is out of range"),
    ("train.milestones=[30,60]", r"'train.milestones' is out of range: \[30.0, 60.0\]; expected fractions of training"),
    ("train.warmup_epochs=20", r"'train.warmup_epochs' is out of range: 20.0; expected in \[0, train.epochs\]"),
    ("train.grad_clip=0", r"'train.grad_clip' is out of range: 0.0; expected null or > 0"),
    ("train.checkpoint_every_steps=-1", r"'train.checkpoint_every_steps' is out of range: -1; expected >= 0"),
    ("data.workers=-1", r"'data.workers' is out of range: -1; expected >= 0"),
    ("data.stream=true", r"'data.stream' is true, but data.name 'fashion-mnist' is held in memory"),
    ("data.eval_batch_size=0", r"'data.eval_batch_size' is out of range: 0; expected >= 1"),
    ("data.subset=0", r"'data.subset' is out of range: 0; expected null \(all images\) or >= 1"),
    ("data.random_erasing=1.5", r"'data.random_erasing' is out of range: 1.5; expected a probability in \[0, 1\]"),
])
def test_bad_config_values_say_what_is_expected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.name=hne-resnet-small", override])


def test_random_erasing_without_augmentation_is_refused():
    with pytest.raises(ConfigError, match=r"'data.random_erasing' is 0.25 but data.augment is false.*set "
                                          r"data.augment=true, or data.random_erasing=0"):
        load_config(None, ["model.name=hne-resnet-small", "data.augment=false", "data.random_erasing=0.25"])


SUPERNET = Path(__file__).parents[1] / "configs" / "supernet-mlp-fmnist.yaml"


def test_overrides_reach_into_list_entries():
    cfg = load_config(SUPERNET, ["phases.0.epochs=3", "phases[4].lr=0.5", "train.epochs=2"])
    assert (cfg.phases[0].epochs, cfg.phases[4].lr, cfg.train.epochs) == (3, 0.5, 2)


@pytest.mark.parametrize("override, message", [
    ("phases.9.epochs=3", r"'phases.9.epochs=3'.*phases has 5 entries \(0 to 4\)"),
    ("phases.0.epochs=abc", r"'phases\[0\].epochs'.*could not be converted to Integer"),
    ("phases.0.bogus=1", r"'phases\[0\].bogus': unknown key; allowed in a phases entry: name, epochs, trains"),
])
def test_bad_overrides_of_list_entries_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SUPERNET, [override])


def test_interpolations_resolve_after_the_overrides():
    cfg = load_config(None, ["model.name=hne-resnet-small", "train.warmup_epochs=${train.epochs}", "train.epochs=4"])
    assert cfg.train.warmup_epochs == 4


@pytest.mark.parametrize("overrides, message", [
    (["data.subset=20", "train.batch_size=32"],
     r"the training split has 20 images, fewer than one batch of 32 \(train.batch_size\), so no training step would "
     r"run; set train.batch_size to at most 20, or train on more images \(a larger data.subset, a smaller "
     r"data.val_split\)"),
    (["data.subset=64", "data.val_split=0.75", "train.batch_size=32"], r"the training split has 16 images"),
    (["data.subset=600"], r"subset=600 \(data.subset\) is more than the 512 training images of 'fake'"),
])
def test_build_refuses_data_that_cannot_train(overrides, message):
    with pytest.raises(ValueError, match=message):
        engine.build(load_config(None, ["model.name=hne-resnet-small", "data.name=fake", *overrides]))
