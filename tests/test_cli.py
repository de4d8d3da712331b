import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfens_core.cli import main
from selfens_core.rundir import LOCK_FILE

TINY = ["data.name=digits", "data.subset=96", "train.batch_size=32", "train.epochs=1", "model.args.num_members=2",
        "data.eval_batch_size=64"]
# 10 steps an epoch (half a second on one thread): long enough to be killed in the middle of one.
TWO_EPOCHS = ["data.name=digits", "data.subset=320", "train.batch_size=32", "train.epochs=2",
              "model.args.num_members=2", "data.eval_batch_size=64"]
ROOT = Path(__file__).parent.parent
CONFIG = "configs/hne-resnet-small-fmnist.yaml"
ZOO_ENTRY = ROOT / "zoo" / "hne-resnet-small.fmnist"


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


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_eval_never_replaces_a_runs_own_metrics_without_overwrite(cli_run, tmp_path, capsys):
    run = Path(shutil.copytree(cli_run[0], tmp_path / "run"))
    before = _files(run)
    refused = (f"error: {re.escape(str(run))} holds checkpoints/, config.json, config.yaml, metrics.jsonl, "
               r"model.safetensors \(a trained model or run\); `selfens eval` would replace its metrics.json. Pass "
               f"--overwrite to write anyway .nothing else in {re.escape(str(run))} is touched., or choose another "
               "--out$")
    with pytest.raises(SystemExit, match=refused):
        main(["eval", str(run), "--subset", "96", "--out", str(run)])
    assert _files(run) == before

    earlier_eval = tmp_path / "eval"  # what an earlier `selfens eval` left: replaced without --overwrite
    earlier_eval.mkdir()
    (earlier_eval / "metrics.json").write_text("{}")
    (earlier_eval / "budget.png").write_bytes(b"png")
    main(["eval", str(run), "--data", "fake:1:8:8:10", "--subset", "50", "--out", str(earlier_eval)])
    assert json.loads((earlier_eval / "metrics.json").read_text())["dataset"] == "fake:1:8:8:10"

    main(["eval", str(run), "--data", "fake:1:8:8:10", "--subset", "50", "--out", str(run), "--overwrite"])
    assert f"--overwrite: replacing metrics.json in {run}" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text())["dataset"] == "fake:1:8:8:10"
    after = _files(run)
    assert after.keys() == before.keys() | {"budget.png"}
    assert all(after[name] == content for name, content in before.items() if name != "metrics.json")


def test_eval_says_when_data_overrides_the_models_dataset(cli_run, tmp_path, capsys):
    main(["eval", str(cli_run[0]), "--data", "fake:1:8:8:10", "--subset", "50", "--out", str(tmp_path / "e")])
    assert "evaluating on fake:1:8:8:10 (--data; the model was trained on digits)" in capsys.readouterr().out


def test_eval_refuses_a_dataset_of_another_shape(cli_run, tmp_path):
    run = cli_run[0]
    with pytest.raises(SystemExit, match="takes 1-channel images of 10 classes; fake:3:32:32:10 has 3 channel"):
        main(["eval", str(run), "--data", "fake:3:32:32:10", "--out", str(tmp_path / "e")])


def test_eval_refuses_what_it_cannot_read_or_write_before_loading_any_data(tmp_path, capsys, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was loaded")

    monkeypatch.setattr("selfens_core.data.load_dataset", no_data)
    out = str(tmp_path / "e")
    with pytest.raises(SystemExit, match=r"'hne-resnet-small.fmnst' is no zoo entry, folder or model name. Zoo "
                                         r"entries close to it: hne-resnet-small.fmnist. Unknown model"):
        main(["eval", "hne-resnet-small.fmnst", "--out", out])
    with pytest.raises(SystemExit, match=f"error: {re.escape(str(tmp_path))}/nope does not exist"):
        main(["eval", str(tmp_path / "nope"), "--out", out])
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit, match="a-file is a file, not a folder; choose another --out"):
        main(["eval", "hne-resnet-small", "--out", str(tmp_path / "a-file")])
    with pytest.raises(SystemExit, match="a-file/e cannot be made: .*a-file is a file"):
        main(["eval", "hne-resnet-small", "--out", str(tmp_path / "a-file" / "e")])
    with pytest.raises(SystemExit):
        main(["train", CONFIG, "--out", ""])
    assert "--out is empty: name a folder" in capsys.readouterr().err


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
    with (pytest.raises(SystemExit, match=r"error: cannot resume .*\n  train.lr: 0.1 → 0.2\n"),
          pytest.warns(UserWarning, match="--allow-change train.lrr: this config has no such key")):
        main(["train", CONFIG, "--out", str(run), "--resume", "--allow-change", "train.lrr", *TINY, "train.lr=0.2"])
    with pytest.raises(SystemExit, match="train.lr changed, even with --allow-change: checkpoint epoch-0001 restores "
                                         "the optimizer's own settings"):  # recorded but not applied: refused
        main(["train", CONFIG, "--out", str(run), "--resume", "--allow-change", "train.lr", *TINY, "train.lr=0.2"])
    main(["train", CONFIG, "--out", str(run), "--resume", "--allow-change", "train.grad_clip", *TINY,
          "train.grad_clip=1.0"])
    (resume,) = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert resume["changes"] == {"train.grad_clip": {"old": None, "new": 1.0, "changes_result": True}}
    with pytest.raises(SystemExit, match="error: --allow-change train.lr applies to --resume only"):
        main(["train", CONFIG, "--out", str(tmp_path / "new"), "--allow-change", "train.lr", *TINY])


def _start_train(out: Path) -> subprocess.Popen:
    """``selfens train`` of TWO_EPOCHS into ``out`` in its own process, on one thread (as _train_on_one_thread)."""
    command = [sys.executable, "-m", "selfens_core.cli", "train", str(ROOT / CONFIG), "--out", str(out), "--quiet",
               *TWO_EPOCHS]
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _kill_in_epoch_two(process: subprocess.Popen, out: Path) -> None:
    """SIGKILL ``process`` a third of an epoch's time after epoch 1's checkpoint appeared: in the middle of epoch 2."""
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "epoch-0001").is_dir():
        assert process.poll() is None, f"selfens train stopped before its first checkpoint:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.01)
    epoch_one = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])  # logged before the checkpoint
    time.sleep(epoch_one["seconds"] / 3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "selfens train finished before it was killed"


def _train_on_one_thread(out: Path, *options: str) -> None:
    """``selfens train`` of TWO_EPOCHS in this process on one thread, like _start_train's process: bit-identical
    results need equal thread counts (and one thread is quick on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["train", CONFIG, "--out", str(out), "--quiet", *options, *TWO_EPOCHS])
    finally:
        torch.set_num_threads(threads)


def test_kill_9_mid_epoch_then_resume_ends_bit_identical_and_takes_over_the_stale_lock(tmp_path, capsys):
    run = tmp_path / "killed"
    killed = _start_train(run)
    _kill_in_epoch_two(killed, run)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 2 had not ended
    assert not (run / "model.safetensors").exists()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == killed.pid  # the lock kill -9 leaves behind

    _train_on_one_thread(run, "--resume")
    printed = capsys.readouterr().out
    assert f"{run / LOCK_FILE} is a stale lock: pid {killed.pid} on host" in printed and "taking it over" in printed
    assert f"resuming {run} from epoch-0001 (epoch 1 of 2)" in printed
    assert not (run / LOCK_FILE).exists()

    _train_on_one_thread(tmp_path / "uninterrupted")
    expected = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    weights = load_file(run / "model.safetensors")
    assert weights.keys() == expected.keys()
    assert [name for name in expected if not torch.equal(weights[name], expected[name])] == []
