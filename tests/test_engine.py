"""The training loop end to end on tiny data: metrics files, resume, divergence, run-directory safety."""
import contextlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file

from selfens_core import checkpoint, data, engine, rundir
from selfens_core.config import load_config
from selfens_core.distillers import Independent
from selfens_core.hookspecs import hookimpl
from selfens_core.init_from import copy_weights_from
from selfens_core.pretrained import load_pretrained

TINY = ["model.name=hne-resnet-small", "model.args.num_members=2", "data.name=digits", "data.subset=96",
        "train.batch_size=32", "train.epochs=2", "train.lr=0.05", "train.warmup_epochs=0.5", "data.eval_batch_size=64"]
ZOO_ENTRY = Path(__file__).parent.parent / "zoo" / "hne-resnet-small.fmnist"


def _train(out: Path, *overrides: str, **options):
    return engine.train(load_config(None, [*TINY, *overrides]), out, progress=False, **options)


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    """A finished 2-epoch run of TINY (trained once for the module, under umask 002) and what it printed."""
    run = tmp_path_factory.mktemp("engine") / "run"
    printed = io.StringIO()
    umask = os.umask(0o002)
    try:
        with contextlib.redirect_stdout(printed):
            _train(run)
    finally:
        os.umask(umask)
    return run, printed.getvalue()


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    """A copy of the finished run to modify."""
    return Path(shutil.copytree(finished[0], tmp_path / "run"))


def test_train_writes_run_directory(finished):
    run, printed = finished
    assert {"config.yaml", "metrics.jsonl", "metrics.json", "config.json", "model.safetensors"} <= {
        p.name for p in run.iterdir()}
    assert not (run / rundir.LOCK_FILE).exists()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and set(lines[0]["loss"]) == {"li", "lhd"}
    on_disk = json.loads((run / "metrics.json").read_text())
    assert set(on_disk["members"]) == {"1", "2"}
    assert {"acc", "nll", "ece", "brier", "flops"} <= set(on_disk["members"]["2"])
    assert len(on_disk["member_acc"]) == 2 and 0 <= on_disk["disagreement"] <= 1 and on_disk["params"] > 0
    assert on_disk["members"]["2"]["flops"] > on_disk["members"]["1"]["flops"]
    model = load_pretrained(run)
    assert model.pretrained_cfg["dataset"] == "digits" and len(model.pretrained_cfg["class_names"]) == 10
    assert not model.training


def test_per_epoch_accuracy_names_the_split_it_was_measured_on(finished):
    run, printed = finished
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("test_acc" in r and "val_acc" not in r for r in lines)  # data.val_split is 0: no validation split
    assert "no validation split is held out" in printed and "epoch 1: loss" in printed
    assert "test acc by members" in printed and "val acc" not in printed


def test_config_yaml_and_config_json_name_every_component(finished):
    run, _ = finished
    resolved = load_config(run / "config.yaml")
    assert (resolved.distiller.name, resolved.sampler.name, resolved.combiner.name) == ("hne", "all", "mean_logits")
    pretrained_cfg = json.loads((run / "config.json").read_text())
    assert pretrained_cfg["distiller"] == "hne" and pretrained_cfg["sampler"] == "all"
    assert pretrained_cfg["distiller_args"] == {} and pretrained_cfg["sampler_args"] == {}
    assert pretrained_cfg["combiner"] == "mean_logits"


def test_config_json_without_distiller_and_sampler_still_loads(run_copy):
    pretrained_cfg = json.loads((run_copy / "config.json").read_text())
    for key in ("distiller", "distiller_args", "sampler", "sampler_args"):
        del pretrained_cfg[key]
    (run_copy / "config.json").write_text(json.dumps(pretrained_cfg))
    assert load_pretrained(run_copy).num_members == 2


def test_weights_and_checkpoints_respect_the_umask_like_json_files(finished):
    run, _ = finished  # written under umask 002
    files = [run / "model.safetensors", run / "config.json", *(run / "checkpoints").rglob("*.safetensors")]
    assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {"0o664"}


def test_resume_after_a_kill_ends_bit_identical_with_one_record_per_epoch_and_no_leftovers(finished, tmp_path,
                                                                                          monkeypatch):
    save = engine._save

    def killed_while_saving_epoch_two(out, epoch, *args):
        if epoch == 2:  # what kill -9 during the write leaves: a partial temporary folder, the epoch already logged
            partial = out / "checkpoints" / f".epoch-0002.tmp-{'a' * 32}"
            partial.mkdir()
            (partial / "model.safetensors").write_bytes(b"partial")
            raise KeyboardInterrupt
        save(out, epoch, *args)

    monkeypatch.setattr(engine, "_save", killed_while_saving_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed")
    monkeypatch.setattr(engine, "_save", save)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 2
    _train(tmp_path / "resumed", resume=True)
    a = load_file(finished[0] / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["epoch-0001", "epoch-0002"]
    resumes = [json.loads(line) for line in (tmp_path / "resumed" / "resumes.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["checkpoint"], r["changes"]) for r in resumes] == [(1, "epoch-0001", {})]


class _Jitter:
    """A callback that draws from the global RNG at every step (noise on one weight): a resume must restore it."""

    def on_step_end(self, state):
        with torch.no_grad():
            weight = next(state.model.parameters())
            weight.add_(torch.randn_like(weight), alpha=1e-4)


class _JitterPlugin:
    @hookimpl
    def register_callbacks(self, register):
        register("jitter", _Jitter)


def _without_timing(log: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
            for line in log.read_text().splitlines()]


def test_resume_from_step_checkpoints_ends_bit_identical(tmp_path, monkeypatch, register_plugin,
                                                         kill_after_checkpoints):
    """Killed after a step checkpoint of the first epoch (before any epoch checkpoint) and again inside the second,
    the run ends with the weights and epoch records of an uninterrupted run without step checkpoints. Every random
    stream is in play: the data's augmentation (random erasing too), the shuffled sampler's generator and the pool of
    batches it keeps, and the global RNG (a callback)."""
    register_plugin(_JitterPlugin(), "jitter-plugin")
    monkeypatch.setitem(data.AUGMENTATIONS, "digits", data.Augmentation(crop_pad=1, hflip=True))

    def train(out: Path, *overrides: str, **options):
        cfg = load_config(None, [*TINY, "sampler.name=shuffled", "sampler.args.shuffle_epochs=1.0",
                                 "data.random_erasing=0.5", *overrides])
        return engine.train(OmegaConf.merge(cfg, {"callbacks": [{"name": "jitter"}]}), out, progress=False, **options)

    train(tmp_path / "uninterrupted")
    run = tmp_path / "run"
    kill_after_checkpoints("epoch-0000-step-000002", "epoch-0001-step-000001")
    for _ in range(2):  # 3 steps per epoch, a checkpoint every 2 steps of the run: after steps 2 and 4
        with pytest.raises(KeyboardInterrupt):
            train(run, "train.checkpoint_every_steps=2", resume=True)
    train(run, "train.checkpoint_every_steps=2", resume=True)

    a, b = load_file(tmp_path / "uninterrupted" / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert _without_timing(run / "metrics.jsonl") == _without_timing(tmp_path / "uninterrupted" / "metrics.jsonl")
    resumes = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"], r["checkpoint"]) for r in resumes] == [
        (0, 2, "epoch-0000-step-000002"), (1, 1, "epoch-0001-step-000001")]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0001-step-000001", "epoch-0002"]


def test_a_step_checkpoint_from_a_longer_epoch_is_refused(tmp_path, kill_after_checkpoints):
    run = tmp_path / "run"
    kill_after_checkpoints("epoch-0000-step-000002")
    with pytest.raises(KeyboardInterrupt):
        _train(run, "train.checkpoint_every_steps=2")
    with pytest.raises(rundir.ConfigChanged, match="after step 2 of epoch 1, but an epoch now has 2 steps"):
        _train(run, "train.checkpoint_every_steps=2", "data.subset=64", resume=True, allow_changes=["data.subset"])


# ---------------------------------------------------------------------------------------- what is never overwritten


def test_a_run_with_checkpoints_needs_resume_or_overwrite(run_copy):
    before = _files(run_copy)
    with pytest.raises(FileExistsError, match="already holds a run .checkpoint epoch-0002.; pass --resume"):
        _train(run_copy)
    assert _files(run_copy) == before


def test_a_finished_run_without_checkpoints_is_not_overwritten(run_copy):
    shutil.rmtree(run_copy / "checkpoints")
    before = _files(run_copy)
    with pytest.raises(rundir.RunDirectoryOccupied, match=r"holds a trained model or run \(config.json, config.yaml, "
                                                          r"metrics.json, .*model.safetensors\); pass --overwrite"):
        _train(run_copy)
    with pytest.raises(rundir.RunDirectoryOccupied, match="and no checkpoint to resume from; pass --overwrite"):
        _train(run_copy, resume=True)
    assert _files(run_copy) == before


def test_a_copy_of_a_zoo_entry_is_not_overwritten(tmp_path):
    entry = Path(shutil.copytree(ZOO_ENTRY, tmp_path / "entry"))
    before = _files(entry)
    with pytest.raises(rundir.RunDirectoryOccupied, match=r"holds a trained model or run \(config.json, manifest.json"
                                                          r", metrics.json, model.safetensors\).*it also holds "
                                                          r"README.md, which --overwrite keeps"):
        _train(entry)
    assert _files(entry) == before


def test_a_directory_of_other_files_is_refused_naming_them(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(rundir.RunDirectoryOccupied, match=r"is not empty and holds no selfens run \(notes.txt\)"):
        _train(tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_a_refused_run_leaves_no_directory_behind(tmp_path):
    with pytest.raises(ValueError, match="--resume continues the run .* and --overwrite replaces it"):
        _train(tmp_path / "new", resume=True, overwrite=True)
    assert not (tmp_path / "new").exists()


def test_init_from_starts_a_fresh_run_from_a_trained_model(finished, tmp_path, capsys):
    run, _ = finished
    model = load_pretrained(run)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    copy_weights_from(model, f"local-dir:{run}")
    trained = load_pretrained(run).state_dict()
    assert all(torch.equal(trained[name], tensor) for name, tensor in model.state_dict().items())

    _train(tmp_path / "warm", f"train.init_from=local-dir:{run}", "train.epochs=1")
    assert f"train.init_from: the run starts from the weights of local-dir:{run}" in capsys.readouterr().out
    first_epoch = json.loads((tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()[0])
    from_scratch = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    # it trained on from the source's weights: its first epoch's loss is below a fresh start's
    assert sum(first_epoch["loss"].values()) < sum(from_scratch["loss"].values())


@pytest.mark.parametrize("overrides, message", [
    (["model.args.num_members=4"], r"is hne-resnet-small with build_args \{'num_members': 2\}; this run builds "
                                   r"hne-resnet-small with \{'num_members': 4\}"),
    (["combiner.name=stacking"], r"does not have this run's parameters and buffers \(\d+ differ, e.g. combiner\."),
    (["data.name=fake:1:8:8:7"], "has num_classes=10, but this run's data has 7"),
])
def test_init_from_refuses_another_model_before_training(finished, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=f"train.init_from 'local-dir:.*' {message}"):
        _train(tmp_path / "warm", f"train.init_from=local-dir:{finished[0]}", *overrides)
    assert not (tmp_path / "warm" / "model.safetensors").exists()


def test_overwrite_replaces_the_run_and_keeps_other_files(run_copy, capsys):
    (run_copy / "notes.txt").write_text("mine")
    (run_copy / "checkpoints" / "epoch-0007").mkdir()  # would be "the newest checkpoint" of the new run if kept
    _train(run_copy, "train.epochs=1", overwrite=True)
    assert "--overwrite: removing checkpoints/, config.json, config.yaml, metrics.json" in capsys.readouterr().out
    assert (run_copy / "notes.txt").read_text() == "mine"
    assert [p.name for p in (run_copy / "checkpoints").iterdir()] == ["epoch-0001"]
    assert len((run_copy / "metrics.jsonl").read_text().splitlines()) == 1


# ------------------------------------------------------------------------------------------------------- the lock


@pytest.fixture
def live_pid():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def _write_lock(out: Path, pid: int) -> Path:
    out.mkdir(exist_ok=True)
    lock = out / rundir.LOCK_FILE
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "earlier"}))
    return lock


def test_a_run_directory_in_use_is_refused_naming_the_owner(tmp_path, live_pid):
    lock = _write_lock(tmp_path / "out", live_pid)
    with pytest.raises(rundir.RunDirectoryBusy, match=f"in use by another `selfens train` .pid {live_pid} on host"):
        _train(tmp_path / "out")
    assert json.loads(lock.read_text())["pid"] == live_pid  # the owner's lock is untouched
    assert [p.name for p in (tmp_path / "out").iterdir()] == [rundir.LOCK_FILE]


def test_two_trainings_in_one_process_cannot_share_a_directory(tmp_path):
    with rundir.locked(tmp_path / "out"):
        with pytest.raises(rundir.RunDirectoryBusy, match=f"pid {os.getpid()} "):
            _train(tmp_path / "out")
    assert not (tmp_path / "out").exists()  # created by the lock, left empty: removed with it


def test_a_stale_lock_is_reported_and_taken_over(tmp_path, capsys):
    finished_process = subprocess.Popen([sys.executable, "-c", "pass"])
    finished_process.wait()
    lock = _write_lock(tmp_path / "out", finished_process.pid)
    with rundir.locked(tmp_path / "out"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"is a stale lock: pid {finished_process.pid} on host" in capsys.readouterr().out
    assert not lock.exists()


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path, live_pid):
    """A lock whose pid now belongs to another process (a restarted container's trainer often gets its old pid,
    even ours) is stale: the start time recorded in the lock differs."""
    for pid in (live_pid, os.getpid()):
        lock = _write_lock(tmp_path / "out", pid)
        lock.write_text(json.dumps({**json.loads(lock.read_text()), "pid_start": 1}))  # started at boot: not it
        with rundir.locked(tmp_path / "out"):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    with rundir.locked(tmp_path / "out"), pytest.raises(rundir.RunDirectoryBusy):  # but a live owner still holds
        with rundir.locked(tmp_path / "out"):
            pass


# --------------------------------------------------------------------------------------------- resuming honestly


def test_resume_refuses_a_config_that_changes_the_result(run_copy):
    before = _files(run_copy)
    with pytest.raises(rundir.ConfigChanged) as refused:
        _train(run_copy, "train.lr=0.1", "train.seed=3", "data.subset=128", resume=True)
    message = str(refused.value)
    assert message.startswith(f"cannot resume {run_copy}: the config differs from the one checkpoint epoch-0002 was "
                              "trained with, and these keys change the result:")
    for line in ("data.subset: 96 → 128", "train.lr: 0.05 → 0.1", "train.seed: 0 → 3"):
        assert line in message
    assert "(data.subset=96 train.lr=0.05 train.seed=0)" in message and "--allow-change KEY" in message
    assert _files(run_copy) == before


def test_resume_records_neutral_and_allowed_changes(run_copy):
    metrics = _train(run_copy, "train.epochs=3", "train.keep_checkpoints=3", "data.eval_batch_size=50",
                     resume=True, allow_changes=["train.epochs"])
    (resume,) = [json.loads(line) for line in (run_copy / "resumes.jsonl").read_text().splitlines()]
    assert resume["epoch"] == 2 and resume["changes"] == {
        "data.eval_batch_size": {"old": 64, "new": 50, "changes_result": False},
        "train.epochs": {"old": 2, "new": 3, "changes_result": True},
        "train.keep_checkpoints": {"old": 2, "new": 3, "changes_result": False}}
    assert [r["changes"] for r in metrics["resumed_with_changes"]] == [resume["changes"]]
    assert json.loads((run_copy / "metrics.json").read_text())["resumed_with_changes"] == metrics[
        "resumed_with_changes"]
    assert load_config(run_copy / "config.yaml").train.epochs == 3
    assert [json.loads(line)["epoch"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_resume_of_a_run_from_before_configs_were_checkpointed(run_copy, capsys):
    """Older checkpoints carry no config and older config.yaml files leave recipe defaults unset: still comparable."""
    for state_file in (run_copy / "checkpoints").glob("*/state.json"):
        state = json.loads(state_file.read_text())
        del state["extra_state"]["config"]
        state_file.write_text(json.dumps(state))
    config_yaml = OmegaConf.load(run_copy / "config.yaml")
    config_yaml.distiller.name = config_yaml.sampler.name = None
    OmegaConf.save(config_yaml, run_copy / "config.yaml")
    _train(run_copy, resume=True)  # nothing left to train: evaluates and writes the model again
    assert "resuming" in capsys.readouterr().out
    with pytest.raises(rundir.ConfigChanged, match="train.lr: 0.05 → 0.2"):
        _train(run_copy, "train.lr=0.2", resume=True)


# ------------------------------------------------------------------------------------------------------ failures


def test_disk_full_while_checkpointing_says_what_to_do_and_keeps_the_last_checkpoint(run_copy, monkeypatch):
    def no_space(model, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_model", no_space)  # safetensors reports a full disk as SafetensorError
    with pytest.raises(engine.OutOfDiskSpace) as stopped:
        _train(run_copy, "train.epochs=3", resume=True, allow_changes=["train.epochs"])
    assert str(stopped.value).startswith(f"no space left on the disk of {run_copy} (writing ")
    assert f"the last complete checkpoint, {run_copy / 'checkpoints' / 'epoch-0002'}, is intact" in str(stopped.value)
    assert str(stopped.value).endswith(f"Free space there, then continue with: selfens train CONFIG --out {run_copy} "
                                       "--resume")
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["epoch-0001", "epoch-0002"]
    assert checkpoint.read_extra_state(run_copy / "checkpoints" / "epoch-0002")["epoch"] == 2
    assert not (run_copy / rundir.LOCK_FILE).exists()


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = Independent.forward

    def nan_in_epoch_two(self, outputs, targets, **kwargs):
        calls["n"] += 1
        terms = original(self, outputs, targets, **kwargs)
        return {"ce": terms["ce"] * float("nan")} if calls["n"] == 5 else terms  # 3 steps per epoch

    monkeypatch.setattr(Independent, "forward", nan_in_epoch_two)
    with pytest.raises(engine.TrainingDiverged, match=r"at epoch 2, step 2 \(global step 5.*epoch-0001"):
        _train(tmp_path / "run", "distiller.name=independent")
    assert (tmp_path / "run" / "checkpoints" / "epoch-0001").is_dir()
    assert not (tmp_path / "run" / "checkpoints" / "epoch-0002").exists()


def test_bf16_and_channels_last_take_effect(tmp_path, monkeypatch):
    seen = []
    original = Independent.forward

    def record(self, outputs, targets, *, model, **kwargs):
        conv = next(p for p in model.parameters() if p.ndim == 4)
        seen.append((outputs.dtype, conv.is_contiguous(memory_format=torch.channels_last)))
        return original(self, outputs, targets, model=model, **kwargs)

    monkeypatch.setattr(Independent, "forward", record)
    metrics = _train(tmp_path / "run", "train.epochs=1", "train.precision=bf16", "train.channels_last=true",
                     "train.optimizer=adamw", "train.lr=0.001", "train.schedule=step", "train.grad_clip=1.0",
                     "distiller.name=independent")
    assert set(seen) == {(torch.bfloat16, True)} and len(seen) == 3  # every step: bf16 logits, channels_last weights
    assert torch.isfinite(torch.tensor(metrics["members"]["2"]["nll"]))


def test_learns_on_digits(tmp_path):
    """Not a benchmark: a sanity check that the loop trains (chance is 0.10)."""
    metrics = _train(tmp_path / "run", "data.subset=1200", "train.epochs=3", "train.warmup_epochs=0.2")  # ~0.6
    assert metrics["members"]["2"]["acc"] > 0.5


def test_precise_bn_recomputes_statistics_before_every_evaluation(tmp_path, capsys):
    """train.precise_bn=N: each evaluation sees BatchNorm statistics averaged over N training batches of the final
    weights (reset, then a cumulative average: every BN has counted exactly N batches)."""
    _train(tmp_path / "run", "train.epochs=1", "train.precise_bn=2")
    assert "precise BatchNorm is on: statistics are re-estimated on 2 training batches" in capsys.readouterr().out
    model = load_pretrained(tmp_path / "run")
    counts = {int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert counts == {2}  # a plain training run would have counted every step (3 per epoch) instead


def test_compiled_training_reports_its_compilation_and_trains_the_eager_model(tmp_path, capsys):
    """train.compile: the same weights as eager within float tolerance, the same state-dict keys, the first step's
    time (compilation included) printed."""
    mlp = ["model.name=supernet-mlp", "model.args.num_members=2", "model.args.hidden=[16]", "model.args.drop_rate=0",
           "model.args.image_size=8", "data.name=digits", "data.subset=256", "train.batch_size=64", "train.epochs=1",
           "train.lr=0.05"]
    engine.train(load_config(None, mlp), tmp_path / "eager", progress=False)
    engine.train(load_config(None, [*mlp, "train.compile=true"]), tmp_path / "compiled", progress=False)
    assert "train.compile: the phase's first step took" in capsys.readouterr().out
    eager, compiled = (load_file(tmp_path / run / "model.safetensors") for run in ("eager", "compiled"))
    assert eager.keys() == compiled.keys()
    assert all(torch.allclose(eager[k], compiled[k], atol=1e-5) for k in eager)
