"""The training loop end to end on tiny data: metrics files, resume, divergence, run-directory safety."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfens_core import engine
from selfens_core.config import load_config
from selfens_core.distillers import Independent
from selfens_core.pretrained import load_pretrained

TINY = ["model.name=hne-resnet-small", "model.args.num_members=2", "data.name=digits", "data.subset=96",
        "train.batch_size=32", "train.epochs=2", "train.lr=0.05", "train.warmup_epochs=0.5", "data.eval_batch_size=64"]


def _train(out: Path, *overrides: str, resume: bool = False):
    return engine.train(load_config(None, [*TINY, *overrides]), out, resume=resume, progress=False)


def test_train_writes_run_directory(tmp_path):
    metrics = _train(tmp_path / "run")
    run = tmp_path / "run"
    assert {"config.yaml", "metrics.jsonl", "metrics.json", "config.json", "model.safetensors"} <= {
        p.name for p in run.iterdir()}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and set(lines[0]["loss"]) == {"li", "lhd"}
    on_disk = json.loads((run / "metrics.json").read_text())
    assert set(on_disk["members"]) == {"1", "2"}
    assert {"acc", "nll", "ece", "brier", "flops"} <= set(on_disk["members"]["2"])
    assert len(on_disk["member_acc"]) == 2 and 0 <= on_disk["disagreement"] <= 1 and on_disk["params"] > 0
    assert on_disk["members"]["2"]["flops"] > on_disk["members"]["1"]["flops"]
    assert metrics["members"]["1"]["acc"] == on_disk["members"]["1"]["acc"]
    model = load_pretrained(run)
    assert model.pretrained_cfg["dataset"] == "digits" and len(model.pretrained_cfg["class_names"]) == 10
    assert not model.training


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path, monkeypatch):
    _train(tmp_path / "straight")
    save = engine._save

    def save_then_die(out, epoch, *args):
        save(out, epoch, *args)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed")
    monkeypatch.setattr(engine, "_save", save)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    _train(tmp_path / "resumed", resume=True)
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    _train(tmp_path / "run", "train.epochs=1")
    with pytest.raises(FileExistsError, match="pass --resume"):
        _train(tmp_path / "run", "train.epochs=1")


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


def test_bf16_and_channels_last_run(tmp_path):
    metrics = _train(tmp_path / "run", "train.epochs=1", "train.precision=bf16", "train.channels_last=true",
                     "train.optimizer=adamw", "train.lr=0.001", "train.schedule=step", "train.grad_clip=1.0")
    assert 0.0 <= metrics["members"]["2"]["acc"] <= 1.0


def test_learns_on_digits(tmp_path):
    """Not a benchmark: a sanity check that the loop trains (chance is 0.10)."""
    metrics = _train(tmp_path / "run", "data.subset=1200", "train.epochs=3", "train.warmup_epochs=0.2")  # ~0.6
    assert metrics["members"]["2"]["acc"] > 0.5
