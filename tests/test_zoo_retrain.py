"""scripts/zoo_retrain.py, the GPU retraining of the zoo: its plan is valid, sources train first, and packed entries
come back verified or not at all."""
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from selfens_core.config import load_config
from selfens_core.hub import IntegrityError

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("zoo_retrain", ROOT / "scripts" / "zoo_retrain.py")
zoo_retrain = sys.modules["zoo_retrain"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(zoo_retrain)


@pytest.mark.parametrize("entry", zoo_retrain.PLAN, ids=lambda e: e.name)
def test_every_planned_recipe_is_a_valid_config(entry):
    cfg = load_config(ROOT / entry.config, [*entry.overrides, *zoo_retrain.smoke_overrides(ROOT / entry.config)])
    assert cfg.train.epochs == 1


def test_every_zoo_entry_and_every_method_is_planned():
    planned = {e.name for e in zoo_retrain.PLAN}
    bundled = {p.name for p in (ROOT / "zoo").iterdir() if (p / "manifest.json").exists()}
    assert bundled <= planned
    families = {load_config(ROOT / e.config, list(e.overrides)).model.name.split("-")[0] for e in zoo_retrain.PLAN}
    assert {"hne", "ienet", "deep", "nfe", "supernet"} <= families
    readers = {load_config(ROOT / e.config, list(e.overrides)).model.name.split("-")[0] for e in zoo_retrain.PLAN
               if e.sources}
    assert readers == {"deep", "supernet"}  # the MEAL student (a deep-ensemble-* network) and the SuperNet


@pytest.mark.parametrize("entry", [e for e in zoo_retrain.PLAN if e.sources], ids=lambda e: e.name)
def test_sources_go_where_the_config_reads_them(entry):
    given = OmegaConf.select(load_config(ROOT / entry.config, list(entry.overrides)), entry.sources_key)
    assert len(given) == len(entry.sources)  # the config lists them there already: the key is no new, unread one
    refs = [f"'local-dir:/zoo/{name}'" for name in entry.sources]
    cfg = load_config(ROOT / entry.config, [*entry.overrides, f"{entry.sources_key}=[{','.join(refs)}]"])
    assert OmegaConf.select(cfg, entry.sources_key) == [f"local-dir:/zoo/{name}" for name in entry.sources]


def test_supernet_members_are_planned_with_the_supernets_architecture():
    plan = {e.name: e for e in zoo_retrain.PLAN}
    supernets = [e for e in zoo_retrain.PLAN if e.sources and e.config.startswith("configs/supernet")]
    assert supernets
    for entry in supernets:
        args = load_config(ROOT / entry.config, list(entry.overrides)).model.args
        for name in entry.sources:
            member = load_config(ROOT / plan[name].config, list(plan[name].overrides)).model.args
            assert {k: v for k, v in member.items() if k != "num_members"} == \
                {k: v for k, v in args.items() if k != "num_members"}, name


def test_an_entry_with_sources_names_where_they_go():
    with pytest.raises(ValueError, match="sources and sources_key go together"):
        zoo_retrain.Entry("x.fmnist", "configs/meal-fmnist.yaml", sources=("resnet10t.fmnist",))


def test_sources_train_in_an_earlier_stage():
    plan = {e.name: e for e in zoo_retrain.PLAN}
    order = {e.name: i for i, stage in enumerate(zoo_retrain.stages(list(zoo_retrain.PLAN))) for e in stage}
    for entry in zoo_retrain.PLAN:
        assert all(order[t] < order[entry.name] for t in entry.sources if t in plan)
    student = next(e for e in zoo_retrain.PLAN if e.sources)
    assert zoo_retrain.stages([student]) == [[student]]  # sources not retrained come from the zoo


def test_an_entry_whose_source_failed_is_not_trained():
    supernet = next(e for e in zoo_retrain.PLAN if e.name == "supernet-resnet10t.fmnist")
    meal = next(e for e in zoo_retrain.PLAN if e.name == "meal-resnet10t.fmnist")
    rows = [{"entry": "resnet10t.fmnist-seed2", "error": "boom"}, {"entry": "resnet10t.fmnist", "acc": 0.9}]
    blocked = zoo_retrain.blocked_rows([supernet, meal], rows)
    assert blocked == [{"entry": supernet.name, "error": "not trained: its source resnet10t.fmnist-seed2 failed",
                        "minutes": 0.0}]


def test_pack_then_unpack_verifies_every_file(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_retrain, "PACK_LIMIT", 100_000)  # several parts
    packed, left = zoo_retrain.pack(exported.directory.parent, [exported.full_name], tmp_path / "packed")
    assert not left and len(packed) > 1 and all(p.stat().st_size <= 100_000 for p in packed)
    target = tmp_path / "target"
    target.mkdir()
    zoo_retrain.unpack(tmp_path / "packed", target)
    assert [p.name for p in target.iterdir()] == [exported.full_name]
    for name in exported.files:
        assert (target / exported.full_name / name).read_bytes() == (exported.directory / name).read_bytes()


def test_unpack_refuses_a_corrupted_entry_and_keeps_the_old_one(exported, tmp_path):
    bad = tmp_path / "bad" / exported.full_name
    shutil.copytree(exported.directory, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    zoo_retrain.pack(bad.parent, [exported.full_name], tmp_path / "packed")
    target = tmp_path / "target"
    shutil.copytree(exported.directory, target / exported.full_name)
    with pytest.raises(IntegrityError, match="model.safetensors"):
        zoo_retrain.unpack(tmp_path / "packed", target)
    assert [p.name for p in target.iterdir()] == [exported.full_name]
    assert (target / exported.full_name / "model.safetensors").read_bytes() == \
        (exported.directory / "model.safetensors").read_bytes()


def test_pack_leaves_out_what_the_device_tool_cannot_bring_back(exported, tmp_path, monkeypatch):
    other = shutil.copytree(exported.directory, tmp_path / "zoo" / "other.digits")
    size = len(zoo_retrain._targz(exported.directory.parent, [exported.full_name]))
    monkeypatch.setattr(zoo_retrain, "PACK_LIMIT", size // 3)
    monkeypatch.setattr(zoo_retrain, "PACK_FILES", 4)  # room for one entry, not two
    packed, left = zoo_retrain.pack(exported.directory.parent, [exported.full_name, other.name], tmp_path / "packed")
    assert left == [other.name] and 3 <= len(packed) <= 4
