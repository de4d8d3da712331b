import json

import pytest

from selfens_core.cli import main

TINY = ["data.name=digits", "data.subset=96", "train.batch_size=32", "train.epochs=1", "model.args.num_members=2",
        "data.eval_batch_size=64"]


def test_list(capsys):
    main(["list", "hne-*"])
    out = capsys.readouterr().out.split()
    assert "hne-resnet-small" in out and "deep-ensemble-resnet18" not in out


def test_train_then_eval(tmp_path, capsys):
    run, ev = tmp_path / "run", tmp_path / "eval"
    main(["train", "configs/hne-resnet-small-fmnist.yaml", "--out", str(run), "--quiet", *TINY])
    assert "members     acc" in capsys.readouterr().out
    main(["eval", str(run), "--data", "digits", "--out", str(ev)])
    metrics = json.loads((ev / "metrics.json").read_text())
    assert set(metrics["members"]) == {"1", "2"} and (ev / "budget.png").stat().st_size > 1000
    train_metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["members"]["2"]["acc"] == pytest.approx(train_metrics["members"]["2"]["acc"]) or \
        metrics["num_samples"] != train_metrics["num_samples"]


def test_eval_refuses_a_dataset_of_another_shape(tmp_path):
    run = tmp_path / "run"
    main(["train", "configs/hne-resnet-small-fmnist.yaml", "--out", str(run), "--quiet", *TINY])
    with pytest.raises(SystemExit, match="takes 1-channel images of 10 classes; fake:3:32:32:10 has 3 channel"):
        main(["eval", str(run), "--data", "fake:3:32:32:10", "--out", str(tmp_path / "e")])


def test_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="error: unknown config key 'train.epoch'"):
        main(["train", "configs/hne-resnet-small-fmnist.yaml", "--out", str(tmp_path), "train.epoch=1"])
    with pytest.raises(SystemExit, match="error: Unknown model 'hne-resnet-smal'"):
        main(["train", "configs/hne-resnet-small-fmnist.yaml", "--out", str(tmp_path), "model.name=hne-resnet-smal",
              "data.name=fake"])
