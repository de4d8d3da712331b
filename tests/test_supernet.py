"""SuperNet: the model contract, the partition as a block-diagonal wide MLP, the merge layer's initialisation, the
snapshot callback, and whole runs through the engine's phases."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from selfens_plugins.supernet.members_from import MembersFrom
from selfens_plugins.supernet.merge import Merge
from selfens_plugins.supernet.snapshot import Snapshot
from torch.nn import functional as F

from selfens_core import create, engine
from selfens_core.config import load_config
from selfens_core.pretrained import load_pretrained, save_pretrained
from selfens_core.schedules import Cosine, CosineRestarts, Cyclic
from selfens_core.testing import CHECKS, check_model_contract

TINY_MLP = dict(num_members=3, hidden=[8, 6])
TINY_CNN = dict(channels=[8, 8, 8, 8], stem_width=8, small_images=True)
MODELS = {"supernet-mlp": TINY_MLP, "supernet-resnet10t": dict(num_members=2, **TINY_CNN),
          "snapshots-resnet10t": dict(num_members=3, **TINY_CNN)}


def _images(model, n: int = 5) -> torch.Tensor:
    return torch.randn(n, *model.pretrained_cfg["input_size"])


def _merged(name: str, **options) -> torch.nn.Module:
    """A model whose merge combiner was initialised from its (untrained) members, recorded as a run records it."""
    model = create(name, num_classes=7, in_chans=1, combiner=Merge(**options), **MODELS[name])
    model.combiner.initialize(model)
    model.pretrained_cfg.update(combiner="merge", combiner_args=options)
    return model


@pytest.mark.parametrize("name", MODELS)
def test_every_supernet_model_meets_the_contract(name):
    check_model_contract(name, **MODELS[name])


@pytest.mark.parametrize("name", ["supernet-mlp", "supernet-resnet10t"])
def test_merged_models_meet_the_contract(name):
    model = _merged(name)
    for check in CHECKS:
        check(model)


def test_partitioned_mlp_is_the_wide_mlp_with_block_diagonal_weights():
    model = create("supernet-mlp", num_classes=4, in_chans=1, image_size=6, num_members=3, hidden=[5, 4]).eval()
    x = _images(model)
    members = model.members
    h = F.relu(F.linear(x.flatten(1), torch.cat([m.hidden[0].weight for m in members]),
                        torch.cat([m.hidden[0].bias for m in members])))
    h = F.relu(F.linear(h, torch.block_diag(*[m.hidden[1].weight for m in members]),
                        torch.cat([m.hidden[1].bias for m in members])))
    wide_logits = F.linear(h, torch.block_diag(*[m.head.weight for m in members]),
                           torch.cat([m.head.bias for m in members]))
    with torch.no_grad():
        outputs = model.outputs(x, features=True)
    torch.testing.assert_close(torch.cat(outputs.features, dim=1), h)
    torch.testing.assert_close(outputs.logits, wide_logits.view(len(x), 3, 4).transpose(0, 1))


def test_mlp_refuses_images_of_another_size():
    model = create("supernet-mlp", num_classes=4, in_chans=1, **TINY_MLP)
    with pytest.raises(ValueError, match="takes 28x28 images.*image_size=\\[32, 32\\]"):
        model(torch.randn(2, 1, 32, 32))


def test_groups_name_each_member_and_each_depth_from_the_end():
    model = create("supernet-mlp", num_classes=4, in_chans=1, **TINY_MLP)
    groups = model.parameter_groups()
    assert groups["member1"] == [f"members.1.{n}" for n, _ in model.members[1].named_parameters()]
    assert groups["layer-1"] == [f"members.{i}.head.{p}" for i in range(3) for p in ("weight", "bias")]
    assert groups["layer-3"] == [f"members.{i}.hidden.0.{p}" for i in range(3) for p in ("weight", "bias")]
    cnn = create("snapshots-resnet10t", num_classes=4, in_chans=1, num_members=2, **TINY_CNN).parameter_groups()
    assert cnn["live"] == cnn["member1"] and cnn["layer-1"] == ["members.0.fc.weight", "members.0.fc.bias",
                                                                "members.1.fc.weight", "members.1.fc.bias"]
    assert all(n.startswith(("members.0.layer4.", "members.1.layer4.")) for n in cnn["layer-2"])


@pytest.mark.parametrize("name", ["supernet-mlp", "supernet-resnet10t"])
def test_copied_merge_layer_is_the_mean_of_member_logits_and_smaller_budgets_stay_that(name):
    model = create(name, num_classes=7, in_chans=1, combiner="merge", **MODELS[name]).eval()
    x = _images(model)
    with torch.no_grad():
        logits = model(x)
        means = [logits[:k].mean(0).softmax(-1) for k in model.budgets()]
        before = [model.predict(x, k) for k in model.budgets()]
        model.combiner.initialize(model)
        after = [model.predict(x, k) for k in model.budgets()]
        model.combiner.weight.add_(torch.randn_like(model.combiner.weight))  # as if trained
        trained = [model.predict(x, k) for k in model.budgets()]
    assert model.combiner.merged
    for k, mean, b, a in zip(model.budgets(), means, before, after):
        torch.testing.assert_close(b, mean, rtol=0, atol=0, msg=lambda m, k=k: f"k={k} before merging: {m}")
        torch.testing.assert_close(a, mean, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"k={k} after copying: {m}")
    for mean, t in zip(means[:-1], trained[:-1]):  # fewer members than the merge layer's: their mean logits
        torch.testing.assert_close(t, mean, rtol=0, atol=0)
    assert not torch.allclose(trained[-1], means[-1])


def test_merge_divisor_scales_the_copied_weights():
    model = create("supernet-mlp", num_classes=7, in_chans=1, combiner=Merge(divisor=1.0), **TINY_MLP).eval()
    model.combiner.initialize(model)
    x = _images(model)
    with torch.no_grad():
        outputs = model.outputs(x, features=True)
        biases = torch.stack([m.head.bias for m in model.members])
        summed = (outputs.logits - biases.unsqueeze(1)).sum(0) + biases.mean(0)
        torch.testing.assert_close(model.combiner.scores(outputs.logits, outputs.features), summed)


def test_random_merge_layer_and_its_l2_penalty():
    model = create("supernet-mlp", num_classes=7, in_chans=1, combiner=Merge(init="random", l2=0.5), **TINY_MLP)
    merge = model.combiner
    merge.initialize(model)
    assert merge.merged and merge.weight.abs().sum() > 0
    outputs, y = model.outputs(_images(model), features=True), torch.tensor([0, 1, 2, 3, 4])
    ce = F.cross_entropy(merge.scores(outputs.logits, outputs.features), y)
    penalty = 0.5 * (merge.weight.square().sum() + merge.bias.square().sum())
    torch.testing.assert_close(merge.loss(outputs.logits, y, outputs.features), ce + penalty)


@pytest.mark.parametrize("options, message", [
    (dict(init="zeros"), "init must be one of copy, random"),
    (dict(divisor=0), "divisor must be a finite number > 0"),
    (dict(init="random", divisor=2), "divisor scales copied weights"),
    (dict(l2=-1), "l2 must be a finite number >= 0"),
])
def test_merge_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        Merge(**options)


def _phase_state(model, trains, name="phase", index=0, schedule=None, epochs=1, steps_per_epoch=1, warmup_steps=0):
    phase = SimpleNamespace(index=index, name=name, epochs=epochs, trains=list(trains), schedule=schedule,
                            warmup_steps=warmup_steps)
    return SimpleNamespace(model=model, phase=phase, steps_per_epoch=steps_per_epoch, phase_step=0,
                           phase_steps=epochs * steps_per_epoch)


def test_merge_layer_is_initialised_once_when_a_phase_trains_it_with_the_classifiers_frozen(tmp_path):
    model = _merged("supernet-mlp")
    merge = model.combiner = Merge()  # a fresh, unmerged one
    groups = model.parameter_groups()
    merge.on_phase_start(_phase_state(model, groups["members"]))
    assert not merge.merged
    with pytest.warns(UserWarning, match="trains the merge layer together with the members' classifiers"):
        merge.on_phase_start(_phase_state(model, groups["combiner"] + groups["layer-1"]))
    assert not merge.merged
    merge.on_phase_start(_phase_state(model, groups["combiner"]))
    assert merge.merged
    copied = merge.weight.detach().clone()
    torch.testing.assert_close(copied, torch.cat([m.head.weight for m in model.members], 1) / 3)
    with torch.no_grad():
        for member in model.members:
            member.head.weight.add_(1.0)
    merge.on_phase_start(_phase_state(model, groups["combiner"]))  # merged already: nothing copied again
    torch.testing.assert_close(merge.weight, copied)
    model.pretrained_cfg.update(combiner="merge", combiner_args={})
    loaded = load_pretrained(save_pretrained(model, tmp_path / "model"))
    assert loaded.combiner.merged
    loaded.combiner.on_phase_start(_phase_state(loaded, loaded.parameter_groups()["combiner"]))
    torch.testing.assert_close(loaded.combiner.weight, copied)


def test_merge_refuses_a_model_without_member_classifiers():
    model = create("deep-ensemble-resnet10t", num_classes=4, in_chans=1, num_members=2, combiner="merge", **TINY_CNN)
    with pytest.raises(RuntimeError, match="merge combiner is not sized"):
        model.combiner.on_phase_start(_phase_state(model, ["all"]))


def _snapshot_run(callback, model, schedule, epochs, steps_per_epoch, name="snapshots", warmup_steps=0):
    """Run one phase of ``epochs`` with the callback, nudging the live member at each step; returns the live
    member's weights after each step (index = steps done)."""
    state = _phase_state(model, model.parameter_groups()["live"], name=name, schedule=schedule, epochs=epochs,
                         steps_per_epoch=steps_per_epoch, warmup_steps=warmup_steps)
    live, history = model.members[-1], [None]
    callback.on_train_start(state)
    callback.on_phase_start(state)
    for step in range(1, state.phase_steps + 1):
        with torch.no_grad():
            live.fc.weight.add_(1.0)  # a training step
        history.append(live.fc.weight.detach().clone())
        state.phase_step = step
        callback.on_step_end(state)
    return history


@pytest.mark.parametrize("members, schedule, epochs, warmup, copied", [
    (3, CosineRestarts(cycle_epochs=2), 6, 0, [6, 12]),  # SGDR: cycle ends at 6, 12, 18; 18 is the live member
    (4, Cyclic(cycle_epochs=2), 7, 0, [3, 9, 15]),  # FGE: cycle middles at 3, 9, 15, 21 (= the phase's end)
    (3, CosineRestarts(cycle_epochs=3), 6, 0, [9, 18]),  # a free slot left at the end: the last minimum is copied too
    (3, CosineRestarts(cycle_epochs=2), 7, 3, [9, 15]),  # 3 warm-up steps shift every cycle end: 9, 15, 21
])
def test_snapshot_callback_fills_the_slots_at_the_schedule_minima(members, schedule, epochs, warmup, copied,
                                                                  tmp_path):
    model = create("snapshots-resnet10t", num_classes=4, in_chans=1, num_members=members, **TINY_CNN)
    history = _snapshot_run(Snapshot(), model, schedule, epochs, steps_per_epoch=3, warmup_steps=warmup)
    assert int(model.snapshots_taken) == len(copied)
    for slot, step in enumerate(copied):
        torch.testing.assert_close(model.members[slot].fc.weight, history[step])
    loaded = load_pretrained(save_pretrained(model, tmp_path / "model"))
    assert int(loaded.snapshots_taken) == len(copied)
    assert "snapshots_taken" in model.state_dict()
    torch.testing.assert_close(loaded.members[0].fc.weight, history[copied[0]])


def test_snapshot_every_epochs_and_in_named_phases_only():
    model = create("snapshots-resnet10t", num_classes=4, in_chans=1, num_members=2, **TINY_CNN)
    history = _snapshot_run(Snapshot(every_epochs=1, phases=["snapshots"]), model, Cosine(), 2, steps_per_epoch=2)
    assert int(model.snapshots_taken) == 1  # after epoch 1; the end of epoch 2 is the live member
    torch.testing.assert_close(model.members[0].fc.weight, history[2])
    model = create("snapshots-resnet10t", num_classes=4, in_chans=1, num_members=2, **TINY_CNN)
    _snapshot_run(Snapshot(every_epochs=1, phases=["other"]), model, Cosine(), 2, steps_per_epoch=2)
    assert int(model.snapshots_taken) == 0


def test_snapshot_callback_skips_phases_without_minima_or_without_the_live_member():
    model = create("snapshots-resnet10t", num_classes=4, in_chans=1, num_members=3, **TINY_CNN)
    _snapshot_run(Snapshot(), model, Cosine(), 2, steps_per_epoch=2)  # a cosine phase: no minima
    callback, merge_phase = Snapshot(), _phase_state(model, ["combiner.x"], schedule=CosineRestarts(cycle_epochs=1))
    callback.on_phase_start(merge_phase)
    merge_phase.phase_step = 1
    callback.on_step_end(merge_phase)
    assert int(model.snapshots_taken) == 0
    with pytest.raises(ValueError, match="schedule \\(Cosine\\) has no minima"):
        _snapshot_run(Snapshot(phases=["snapshots"]), model, Cosine(), 2, steps_per_epoch=2)


def test_snapshot_callback_refuses_more_snapshots_than_slots_before_the_phase_starts():
    model = create("snapshots-resnet10t", num_classes=4, in_chans=1, num_members=2, **TINY_CNN)
    with pytest.raises(ValueError, match="3 snapshot points but the model has 1 free slot.*num_members=3"):
        _snapshot_run(Snapshot(), model, CosineRestarts(cycle_epochs=1), 3, steps_per_epoch=2)
    with pytest.raises(ValueError, match="2 snapshot points but the model has 1 free slot.*num_members=3"):
        _snapshot_run(Snapshot(every_epochs=2), model, Cosine(), 5, steps_per_epoch=1)  # epochs 2, 4: none at the end
    with pytest.raises(TypeError, match="snapshots-<timm model> model"):
        Snapshot().on_train_start(SimpleNamespace(model=create("supernet-mlp", num_classes=4, in_chans=1)))
    with pytest.raises(ValueError, match="every_epochs must be an int >= 1"):
        Snapshot(every_epochs=0)


# ------------------------------------------------------------------------------------------------- whole runs

def _train(out: Path, overrides: list[str], extra: dict) -> None:
    cfg = OmegaConf.merge(load_config(None, ["data.subset=64", "train.batch_size=32", "data.eval_batch_size=64",
                                             "train.keep_checkpoints=5", *overrides]), extra)
    engine.train(cfg, out, progress=False)


def test_supernet_mlp_run_merges_with_members_frozen(tmp_path):
    run = tmp_path / "run"
    _train(run, ["model.name=supernet-mlp", "data.name=digits", "combiner.name=merge", "train.optimizer=adam",
                 "train.lr=0.01", "model.args.num_members=2", "model.args.hidden=[16]", "model.args.image_size=8"],
           {"phases": [{"name": "members", "epochs": 1, "trains": ["members"]},
                       {"name": "layer-1", "epochs": 1, "trains": ["layer-1"]},
                       {"name": "merge", "epochs": 2, "trains": ["combiner"]}]})
    before_merge = load_file(run / "checkpoints" / "epoch-0002" / "model.safetensors")
    final = load_file(run / "model.safetensors")
    members = [k for k in final if k.startswith("members.")]
    assert members and all(torch.equal(final[k], before_merge["model." + k]) for k in members)
    assert not before_merge["model.combiner.merged"] and final["combiner.merged"]
    copied = torch.cat([final[f"members.{i}.head.weight"] for i in range(2)], 1) / 2
    assert not torch.equal(final["combiner.weight"], copied)  # trained from the copy
    assert load_pretrained(run).combiner.merged


def test_snapshot_run_fills_its_slots_then_merges(tmp_path):
    run = tmp_path / "run"
    _train(run, ["model.name=snapshots-resnet10t", "data.name=fake", "model.args.num_members=3",
                 "model.args.channels=[8,8,8,8]", "model.args.stem_width=8", "model.args.small_images=true",
                 "sampler.name=listed", "sampler.args.members=[-1]",
                 "combiner.name=merge", "train.schedule=cosine_restarts", "train.schedule_args.cycle_epochs=1"],
           {"callbacks": [{"name": "snapshot"}],
            "phases": [{"name": "snapshots", "epochs": 3, "trains": ["live"]},
                       {"name": "merge", "epochs": 1, "trains": ["combiner"], "optimizer": "adam", "lr": 0.001,
                        "schedule": "constant", "sampler": {"name": "all"}}]})
    model = load_pretrained(run)
    assert int(model.snapshots_taken) == 2 and model.combiner.merged
    weights = [m.fc.weight for m in model.members]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])


SMALL_CNN = ["data.name=fake", "model.args.channels=[8,8,8,8]", "model.args.stem_width=8",
             "model.args.small_images=true"]
MERGE_ONLY = {"phases": [{"name": "merge", "epochs": 1, "trains": ["combiner"], "optimizer": "adam", "lr": 0.001,
                          "schedule": "constant"}]}


def _members_from(sources: list[str]) -> dict:
    return {**MERGE_ONLY, "callbacks": [{"name": "members_from", "args": {"sources": sources}}]}


def test_members_from_merges_networks_trained_in_other_runs(tmp_path):
    sources = []
    for seed in (1, 2):  # two single networks, each its own run
        _train(tmp_path / f"single{seed}", ["model.name=deep-ensemble-resnet10t", "model.args.num_members=1",
                                             f"train.seed={seed}", "train.epochs=1", *SMALL_CNN], {})
        sources.append(f"local-dir:{tmp_path / f'single{seed}'}")
    run = tmp_path / "merged"
    _train(run, ["model.name=supernet-resnet10t", "model.args.num_members=2", "combiner.name=merge", *SMALL_CNN],
           _members_from(sources))
    merged = load_file(run / "model.safetensors")
    for index, seed in enumerate((1, 2)):
        single = load_file(tmp_path / f"single{seed}" / "model.safetensors")
        for name, tensor in single.items():  # networks.0.<name> of the single run is members.<index>.<name>
            torch.testing.assert_close(merged[name.replace("networks.0.", f"members.{index}.", 1)], tensor)
    assert load_pretrained(run).combiner.merged

    # a resumed run keeps its members as its checkpoint holds them, whatever the sources hold now
    model = load_pretrained(run)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    MembersFrom(sources[::-1]).on_train_start(SimpleNamespace(model=model, resumed=True))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # nothing changes unless every source fits: the wrong second source leaves member 0 alone too
    _train(tmp_path / "wide", ["model.name=deep-ensemble-resnet10t", "model.args.num_members=1", "train.epochs=1",
                               *SMALL_CNN, "model.args.channels=[8,8,8,16]"], {})
    with pytest.raises(ValueError, match=r"source 'local-dir:.*wide' \(deep-ensemble-resnet10t, build_args .*\) "
                                         r"holds no network with the parameters and buffers of the member"):
        MembersFrom([sources[1], f"local-dir:{tmp_path / 'wide'}"]).on_train_start(
            SimpleNamespace(model=model, resumed=False))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_members_from_refuses_bad_sources_before_training(tmp_path):
    model = create("supernet-resnet10t", num_classes=10, in_chans=1, num_members=2, **TINY_CNN)
    fresh = SimpleNamespace(model=model, resumed=False)
    with pytest.raises(ValueError, match="1 source\\(s\\) for a model of 2 members; give one per member or build "
                                         "the model with num_members=1"):
        MembersFrom(["a"]).on_train_start(fresh)
    with pytest.raises(ValueError, match="source 'local-dir:/nonexistent' could not be loaded"):
        MembersFrom(["local-dir:/nonexistent", "local-dir:/nonexistent"]).on_train_start(fresh)
    with pytest.raises(ValueError, match="sources must be a non-empty list"):
        MembersFrom("resnet10t.fmnist")
    deep = create("deep-ensemble-resnet10t", num_classes=4, in_chans=1, num_members=1, **TINY_CNN)
    with pytest.raises(TypeError, match="fills the members of a SuperNet model"):
        MembersFrom(["a"]).on_train_start(SimpleNamespace(model=deep, resumed=False))
    ten = tmp_path / "ten-classes"
    _train(ten, ["model.name=deep-ensemble-resnet10t", "model.args.num_members=1", "train.epochs=1", *SMALL_CNN], {})
    with pytest.raises(ValueError, match="members_from source 'local-dir:.*ten-classes' has num_classes=10, but this "
                                         "run's data has 7"):
        _train(tmp_path / "merged", ["model.name=supernet-resnet10t", "model.args.num_members=1", "combiner.name=merge",
                                     *SMALL_CNN, "data.name=fake:1:28:28:7"], _members_from([f"local-dir:{ten}"]))
