"""The training lifecycle: phases, frozen modules, several optimizers, callbacks, prepare, resume mid-phase."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from selfens_core import SelfEnsemble, engine
from selfens_core.config import ConfigError, load_config
from selfens_core.hookspecs import hookimpl

TINY = ["model.name=hne-resnet-small", "model.args.num_members=2", "data.name=digits", "data.subset=96",
        "train.batch_size=32", "train.lr=0.05", "data.eval_batch_size=64", "combiner.name=stacking"]
# members for one epoch, then the stacking combiner alone for two (members frozen)
TWO_PHASES = {"phases": [{"name": "members", "epochs": 1, "trains": ["members"]},
                         {"name": "merge", "epochs": 2, "trains": ["combiner"], "optimizer": "adam", "lr": 0.01}]}


def _train(out: Path, extra: dict | None = None, *overrides: str, **options):
    cfg = load_config(None, [*TINY, *overrides])
    if extra:
        cfg = OmegaConf.merge(cfg, extra)
    return engine.train(cfg, out, progress=False, **options)


@pytest.fixture(scope="module")
def two_phases(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("phases") / "run"
    _train(run, TWO_PHASES, "train.precise_bn=2", "train.keep_checkpoints=3")
    return run


def test_frozen_members_keep_weights_and_batchnorm_statistics_while_the_combiner_trains(two_phases):
    after_members = load_file(two_phases / "checkpoints" / "epoch-0001" / "model.safetensors")
    final = load_file(two_phases / "model.safetensors")
    members = [k for k in final if not k.startswith("combiner.")]
    assert any("running_mean" in k for k in members)  # BatchNorm buffers are among the compared tensors
    changed = [k for k in members if not torch.equal(final[k], after_members["model." + k])]
    assert not changed, f"frozen members changed during the combiner phase: {changed[:5]}"
    assert not torch.equal(final["combiner.weight"], after_members["model.combiner.weight"])


def test_each_epoch_record_names_its_phase(two_phases):
    records = [OmegaConf.create(line) for line in (two_phases / "metrics.jsonl").read_text().splitlines()]
    assert [r.phase for r in records] == ["members", "merge", "merge"]


@pytest.mark.parametrize("killed_after", [2, 3])  # in the middle of the merge phase; after its last epoch
def test_resume_in_or_after_a_later_phase_ends_bit_identical(two_phases, tmp_path, monkeypatch, killed_after):
    """Resumed after the last epoch, no phase runs, yet precise BN must still leave the frozen members alone."""
    save = engine._save

    def killed(out, epoch, *args):
        save(out, epoch, *args)
        if epoch == killed_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_save", killed)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", TWO_PHASES, "train.precise_bn=2", "train.keep_checkpoints=3")
    monkeypatch.setattr(engine, "_save", save)
    _train(tmp_path / "run", TWO_PHASES, "train.precise_bn=2", "train.keep_checkpoints=3", resume=True)
    a, b = load_file(two_phases / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_step_checkpoints_inside_a_later_phase_ends_bit_identical(two_phases, tmp_path,
                                                                             kill_after_checkpoints):
    """Killed one step into the merge phase's first epoch (its optimizer and schedule must come from the step
    checkpoint, and the phase must not start again) and two steps into its second epoch."""
    kill_after_checkpoints("epoch-0001-step-000001", "epoch-0002-step-000002")
    options = ["train.precise_bn=2", "train.keep_checkpoints=3", "train.checkpoint_every_steps=2"]
    for _ in range(2):  # 3 steps per epoch: step checkpoints after steps 2, 4 and 8 of the run
        with pytest.raises(KeyboardInterrupt):
            _train(tmp_path / "run", TWO_PHASES, *options, resume=True)
    _train(tmp_path / "run", TWO_PHASES, *options, resume=True)
    a, b = load_file(two_phases / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[OmegaConf.create(line).loss for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (two_phases, tmp_path / "run")]
    assert losses[0] == losses[1]


class _Recorder:
    """A callback recording every event as (event, phase name, epoch, step)."""

    events: list[tuple] = []

    def __init__(self, tag: str = ""):
        self.tag = tag

    def prepare(self, model, batches):
        x, y = next(iter(batches))
        _Recorder.events.append(("prepare", tuple(x.shape), str(x.device)))

    def _record(self, event, state):
        _Recorder.events.append((event, state.phase.name, state.epoch, state.step, state.phase_step))

    def on_train_start(self, state):
        self._record("train_start", state)

    def on_phase_start(self, state):
        self._record("phase_start", state)

    def on_epoch_end(self, state):
        self._record("epoch_end", state)

    def on_phase_end(self, state):
        self._record("phase_end", state)


class _RecorderPlugin:
    @hookimpl
    def register_callbacks(self, register):
        register("recorder", _Recorder)


def test_callbacks_see_every_event_in_order_and_prepare_runs_once_before_training(tmp_path, register_plugin):
    register_plugin(_RecorderPlugin(), "recorder-plugin")
    _Recorder.events = []
    _train(tmp_path / "run", {**TWO_PHASES, "callbacks": [{"name": "recorder"}]})
    steps = 3  # 96 images, batches of 32
    assert _Recorder.events == [
        ("prepare", (32, 1, 8, 8), "cpu"),
        ("train_start", "members", 0, 0, 0),
        ("phase_start", "members", 0, 0, 0),
        ("epoch_end", "members", 0, steps, steps),
        ("phase_end", "members", 0, steps, steps),
        ("phase_start", "merge", 1, steps, 0),
        ("epoch_end", "merge", 1, 2 * steps, steps),
        ("epoch_end", "merge", 2, 3 * steps, 2 * steps),
        ("phase_end", "merge", 2, 3 * steps, 2 * steps),
    ]


def test_a_resume_neither_prepares_again_nor_restarts_the_phase(tmp_path, register_plugin, monkeypatch):
    register_plugin(_RecorderPlugin(), "recorder-plugin")
    save = engine._save

    def killed_after_epoch_two(out, epoch, *args):
        save(out, epoch, *args)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_save", killed_after_epoch_two)
    config = {**TWO_PHASES, "callbacks": [{"name": "recorder"}]}
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", config)
    monkeypatch.setattr(engine, "_save", save)
    _Recorder.events = []
    _train(tmp_path / "run", config, resume=True)
    assert [e[0] for e in _Recorder.events] == ["train_start", "epoch_end", "phase_end"]


def test_a_run_resumed_in_a_later_phase_starts_with_that_phases_components(tmp_path, monkeypatch):
    from selfens_core.samplers import Listed

    save, started = engine._save, []
    monkeypatch.setattr(Listed, "on_train_start", lambda self, state: started.append(self.members), raising=False)

    def killed_after_epoch_two(out, epoch, *args):
        save(out, epoch, *args)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_save", killed_after_epoch_two)
    phases = [{"name": "first", "epochs": 1, "sampler": {"name": "listed", "args": {"members": [0]}}},
              {"name": "second", "epochs": 2, "sampler": {"name": "listed", "args": {"members": [1]}}}]
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", {"phases": phases}, "model.name=deep-ensemble-hne-resnet-small")
    monkeypatch.setattr(engine, "_save", save)
    _train(tmp_path / "run", {"phases": phases}, "model.name=deep-ensemble-hne-resnet-small", resume=True)
    assert started == [[0], [1]]


def test_one_optimizer_per_member(tmp_path, register_plugin):
    seen = {}

    class Types:
        def on_phase_start(self, state):
            seen["optimizers"] = [type(o).__name__ for o in state.optimizers]

    class Plugin:
        @hookimpl
        def register_callbacks(self, register):
            register("types", Types)

    register_plugin(Plugin(), "types-plugin")
    config = {"callbacks": [{"name": "types"}], "phases": [{"epochs": 1, "optimizers": [
        {"params": ["member0"], "optimizer": "sgd", "lr": 0.05},
        {"params": ["member1"], "optimizer": "adam", "lr": 0.001}]}]}
    _train(tmp_path / "run", config, "model.name=deep-ensemble-hne-resnet-small", "combiner.name=mean_logits")
    assert seen["optimizers"] == ["SGD", "Adam"]


def test_optimizers_must_split_what_the_phase_trains(tmp_path):
    config = {"phases": [{"epochs": 1, "optimizers": [{"params": ["member0"]}]}]}
    with pytest.raises(ConfigError, match=r"phases\[0\].optimizers: .* in no optimizer"):
        _train(tmp_path / "run", config, "model.name=deep-ensemble-hne-resnet-small", "combiner.name=mean_logits")


def test_a_selector_that_picks_nothing_names_the_key_and_the_groups(tmp_path):
    with pytest.raises(ConfigError, match=r"phases\[0\].trains.*'head'.*groups: all, combiner, members"):
        _train(tmp_path / "run", {"phases": [{"epochs": 1, "trains": ["head"]}]})
    assert not (tmp_path / "run").exists()


def test_a_warm_up_longer_than_its_phase_names_the_key_before_anything_is_written(tmp_path):
    phases = [{"epochs": 2, "trains": ["all"]}, {"epochs": 1, "trains": ["all"], "warmup_epochs": 1.5}]
    with pytest.raises(ConfigError, match=r"phases\[1\].warmup_epochs is 1.5: it must be in \[0, 1\]"):
        _train(tmp_path / "run", {"phases": phases})
    with pytest.raises(ConfigError, match=r"phases\[0\].warmup_epochs \(train.warmup_epochs.*is 3.0"):
        _train(tmp_path / "run", {"phases": phases}, "train.epochs=3", "train.warmup_epochs=3")
    assert not (tmp_path / "run").exists()


def test_a_misspelt_phase_key_lists_the_phase_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: hne-resnet-small}\nphases:\n  - {epochs: 1, trian: [members]}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'trian' in a phases entry; allowed there: .*trains"):
        load_config(path)


def test_listed_sampler_trains_only_the_listed_member(tmp_path, register_plugin):
    initial = {}

    class Initial:
        def on_train_start(self, state):
            initial.update({k: v.clone() for k, v in state.model.state_dict().items()})

    class Plugin:
        @hookimpl
        def register_callbacks(self, register):
            register("initial", Initial)

    register_plugin(Plugin(), "initial-plugin")
    _train(tmp_path / "run", {"callbacks": [{"name": "initial"}]}, "model.name=deep-ensemble-hne-resnet-small",
           "combiner.name=mean_logits", "train.epochs=1", "sampler.name=listed", "sampler.args.members=[-1]")
    final = load_file(tmp_path / "run" / "model.safetensors")
    first = [k for k in final if k.startswith("networks.0.")]
    last = [k for k in final if k.startswith("networks.1.") and k.endswith("weight")]
    assert first and last
    assert all(torch.equal(final[k], initial[k]) for k in first)
    assert not all(torch.equal(final[k], initial[k]) for k in last)


def test_a_recipe_declares_phases_and_callbacks_and_a_config_replaces_phases_and_adds_callbacks(
        tmp_path, register_plugin):
    from selfens_core.plugins import registries

    builder = registries().models.resolve("hne-resnet-small")[0].obj
    phase_starts = []

    class Recorder:
        def __init__(self, tag: str):
            self.tag = tag

        def on_phase_start(self, state):
            phase_starts.append((self.tag, state.phase.name))

    class Plugin:
        @hookimpl
        def register_models(self, register):
            register("staged-tiny", builder, combiner="stacking",
                     phases=[{"name": "warm", "epochs": 1}, {"name": "stack", "epochs": 1, "trains": ["combiner"]}],
                     callbacks=[{"name": "recorder", "args": {"tag": "recipe"}}])

        @hookimpl
        def register_callbacks(self, register):
            register("recorder", Recorder)

    register_plugin(Plugin(), "staged")
    _train(tmp_path / "recipe", None, "model.name=staged-tiny")
    records = (tmp_path / "recipe" / "metrics.jsonl").read_text()
    assert '"phase": "warm"' in records and '"phase": "stack"' in records
    assert phase_starts == [("recipe", "warm"), ("recipe", "stack")]
    phase_starts.clear()
    config = {"phases": [{"name": "only", "epochs": 1}], "callbacks": [{"name": "recorder", "args": {"tag": "config"}}]}
    _train(tmp_path / "config", config, "model.name=staged-tiny")
    assert "phase" not in (tmp_path / "config" / "metrics.jsonl").read_text()  # one phase: nothing to name
    assert phase_starts == [("recipe", "only"), ("config", "only")]  # the recipe's callbacks, then the config's


def test_a_model_that_reports_its_own_cost_gets_it_beside_the_dense_count():
    from selfens_core.data import DatasetInfo, Split
    from selfens_core.evaluation import evaluate

    class Pruned(SelfEnsemble):
        def __init__(self):
            super().__init__(num_members=2, num_classes=3, in_chans=1, input_size=(8, 8), min_input_size=8)
            self.heads = torch.nn.ModuleList(torch.nn.Linear(64, 3) for _ in range(2))

        def forward_members(self, x, members):
            return torch.stack([head(x.flatten(1)) for head in self.heads[:members]])

        def effective_cost(self, members):
            return {"flops": 10 * members, "params": 7}

    model = Pruned()
    info = DatasetInfo("t", 3, 1, (1, 8, 8), (0.5,), (0.5,), ("a", "b", "c"))
    metrics = evaluate(model, Split(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8), torch.arange(4) % 3), info)
    assert [m["effective_flops"] for m in metrics["members"].values()] == [10, 20]
    assert metrics["effective_params"] == 7 and metrics["params"] > 7
    assert all(m["flops"] > 20 for m in metrics["members"].values())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_evaluation_combines_on_the_models_device_with_a_trainable_combiner():
    import selfens_core
    from selfens_core.data import DatasetInfo, Split
    from selfens_core.evaluation import evaluate

    model = selfens_core.create("hne-resnet-small", num_classes=3, in_chans=1, num_members=2, combiner="stacking")
    info = DatasetInfo("t", 3, 1, (1, 16, 16), (0.5,), (0.5,), ("a", "b", "c"))
    split = Split(torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8), torch.arange(4) % 3)
    metrics = evaluate(model.cuda(), split, info, device="cuda")
    assert set(metrics["members"]) == {"1", "2"}
