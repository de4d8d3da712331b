import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from selfens_core.cli import main

TINY = ["data.name=digits", "data.subset=96", "train.batch_size=32", "train.epochs=1", "model.args.num_members=2",
        "data.eval_batch_size=64"]
CONFIG = "configs/hne-resnet-small-fmnist.yaml"
ZOO_ENTRY = Path(__file__).parent.parent / "zoo" / "hne-resnet-small.fmnist"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> tuple[Path, str]:
    """A tiny run trained once through ``selfens train`` on digits, and what the command printed."""
    run = tmp_path_factory.mktemp("cli") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["train", CONFIG, "--out", str(run), "--quiet", *TINY])
    return run, printed.getvalue()


def test_list(capsys):
    main(["list", "hne-*"])
    out = capsys.readouterr().out.split()
    assert "hne-resnet-small" in out and "deep-ensemble-resnet18" not in out


def test_eval_of_a_run_reproduces_its_own_metrics_on_its_own_dataset(cli_run, tmp_path, capsys):
    run, printed = cli_run
    assert "members     acc" in printed and f"run directory: {run}" in printed
    main(["eval", str(run), "--subset", "96", "--out", str(tmp_path / "eval")])  # the run's test split (seed 0)
    assert "evaluating on digits (the dataset the model was trained on" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    trained = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == "digits" and metrics["num_samples"] == trained["num_samples"] == 100
    assert metrics["member_acc"] == trained["member_acc"]
    for k in ("1", "2"):
        assert metrics["members"][k]["acc"] == trained["members"][k]["acc"]
        assert metrics["members"][k]["nll"] == pytest.approx(trained["members"][k]["nll"], rel=1e-5)
    assert (tmp_path / "eval" / "budget.png").stat().st_size > 1000


def test_eval_says_when_data_overrides_the_models_dataset(cli_run, tmp_path, capsys):
    main(["eval", str(cli_run[0]), "--data", "fake:1:8:8:10", "--subset", "50", "--out", str(tmp_path / "e")])
    assert "evaluating on fake:1:8:8:10 (--data; the model was trained on digits)" in capsys.readouterr().out


def test_eval_refuses_a_dataset_of_another_shape(cli_run, tmp_path):
    run = cli_run[0]
    with pytest.raises(SystemExit, match="takes 1-channel images of 10 classes; fake:3:32:32:10 has 3 channel"):
        main(["eval", str(run), "--data", "fake:3:32:32:10", "--out", str(tmp_path / "e")])


def test_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="error: unknown config key 'train.epoch'"):
        main(["train", "configs/hne-resnet-small-fmnist.yaml", "--out", str(tmp_path), "train.epoch=1"])
    with pytest.raises(SystemExit, match="error: Unknown model 'hne-resnet-smal'"):
        main(["train", "configs/hne-resnet-small-fmnist.yaml", "--out", str(tmp_path), "model.name=hne-resnet-smal",
              "data.name=fake"])


def test_train_never_replaces_a_model_without_overwrite(tmp_path):
    entry = shutil.copytree(ZOO_ENTRY, tmp_path / "entry")
    with pytest.raises(SystemExit, match=f"error: {re.escape(str(entry))} holds a trained model or run .config.json, "
                                         "manifest.json, metrics.json, model.safetensors.; pass --overwrite"):
        main(["train", CONFIG, "--out", str(entry), *TINY])


def test_resume_with_a_changed_config_needs_allow_change_and_is_recorded(cli_run, tmp_path):
    run = shutil.copytree(cli_run[0], tmp_path / "run")
    with pytest.raises(SystemExit, match=r"error: cannot resume .*\n  train.lr: 0.1 → 0.2\n"):
        main(["train", CONFIG, "--out", str(run), "--resume", *TINY, "train.lr=0.2"])
    main(["train", CONFIG, "--out", str(run), "--resume", "--allow-change", "train.lr", *TINY, "train.lr=0.2"])
    (resume,) = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert resume["changes"] == {"train.lr": {"old": 0.1, "new": 0.2, "changes_result": True}}
    with pytest.raises(SystemExit, match="error: --allow-change train.lr applies to --resume only"):
        main(["train", CONFIG, "--out", str(tmp_path / "new"), "--allow-change", "train.lr", *TINY])
