"""Checkpoint round trips, strict checks before any change, corruption errors, atomic replacement and RNG state."""
import errno
import json
import os
import signal
import stat

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import pytest
import torch
from torch import nn

from selfens_core import checkpoint as ckpt
from selfens_core.checkpoint import (
    CheckpointError,
    checkpoint_order,
    clean_interrupted_saves,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.embed.weight


def _train(model, optimizer, scheduler, steps: int) -> None:
    data = torch.linspace(-1, 1, 8 * 6).reshape(8, 6)
    targets = torch.arange(8) % 3
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data), targets).backward()
        optimizer.step()
        scheduler.step()


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_resume_is_bit_identical(tmp_path, name):
    def make(seed):
        model = _net(seed).train()
        optimizer = OPTIMIZERS[name](model.parameters())
        return model, optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)

    model, optimizer, scheduler = make(0)
    _train(model, optimizer, scheduler, 3)
    save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer, scheduler=scheduler, extra_state={"epoch": 3})
    _train(model, optimizer, scheduler, 2)  # dropout draws from the RNG, so the RNG state must be restored too

    model2, optimizer2, scheduler2 = make(1)
    extra = load_checkpoint(tmp_path / "ck", model=model2, optimizer=optimizer2, scheduler=scheduler2)
    assert extra == {"epoch": 3}
    _train(model2, optimizer2, scheduler2, 2)
    for a, b in zip(_params(model), _params(model2)):
        assert torch.equal(a, b)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_files_and_json_layout(tmp_path):
    model = _net(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1), 1)
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer)
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optim.safetensors", "rng.safetensors",
                                                      "state.json"]
    state = json.loads((path / "state.json").read_text())
    first_param_state = state["optimizer"]["state"]["__items__"][0]
    assert first_param_state == [0, {"momentum_buffer": {"__tensor__": "state.0.momentum_buffer"}}]


def test_tied_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    source, target = _Tied(), _Tied()
    save_weights(tmp_path / "w.safetensors", source)
    load_weights(tmp_path / "w.safetensors", target)
    assert torch.equal(target.embed.weight, source.embed.weight)
    assert target.head.weight is target.embed.weight

    save_checkpoint(tmp_path / "ck", model=source)
    load_checkpoint(tmp_path / "ck", model=_Tied())


def _assert_unchanged(model, before):
    for a, b in zip(_params(model), before):
        assert torch.equal(a, b)


def test_shape_mismatch_raises_before_loading(tmp_path):
    save_checkpoint(tmp_path / "ck", model=_net(0))
    model = _net(1)
    model[3] = nn.Linear(16, 4)  # last layer has another shape; the first layer would fit
    before = _params(model)
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"3\.weight: checkpoint \[3, 16\] vs model \[4, 16\]"):
            load_checkpoint(tmp_path / "ck", model=model, strict=strict)
    _assert_unchanged(model, before)


def test_missing_and_unexpected_keys(tmp_path):
    save_weights(tmp_path / "w.safetensors", _net(0))
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3), nn.Linear(3, 3))
    before = _params(model)
    with pytest.raises(ValueError, match=r"missing keys: 4\.bias, 4\.weight"):
        load_weights(tmp_path / "w.safetensors", model)
    _assert_unchanged(model, before)
    load_weights(tmp_path / "w.safetensors", model, strict=False)
    assert torch.equal(model[0].weight, _net(0)[0].weight)

    with pytest.raises(ValueError, match=r"unexpected keys: 3\.bias, 3\.weight"):
        load_weights(tmp_path / "w.safetensors", nn.Sequential(nn.Linear(6, 16)))


def test_optimizer_mismatch_raises_before_loading(tmp_path):
    model = _net(0)
    save_checkpoint(tmp_path / "ck", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    fresh = _net(1)
    before = _params(fresh)
    with pytest.raises(CheckpointError, match="parameter groups"):
        load_checkpoint(tmp_path / "ck", model=fresh, optimizer=torch.optim.SGD(fresh[0].parameters(), lr=0.1))
    _assert_unchanged(fresh, before)


@pytest.mark.parametrize("file", ["model.safetensors", "optim.safetensors"])
def test_truncated_file_raises_clear_error(tmp_path, file):
    model = _net(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1), 1)
    save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer)
    target = tmp_path / "ck" / file
    target.write_bytes(target.read_bytes()[:-20])
    fresh = _net(1)
    before = _params(fresh)
    with pytest.raises(CheckpointError, match=file):
        load_checkpoint(tmp_path / "ck", model=fresh, optimizer=torch.optim.SGD(fresh.parameters(), lr=0.1))
    _assert_unchanged(fresh, before)


def test_missing_file_and_corrupted_json(tmp_path):
    save_checkpoint(tmp_path / "ck", model=_net(0))
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(tmp_path / "ck", model=_net(0))
    (tmp_path / "ck" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json"):
        load_checkpoint(tmp_path / "ck", model=_net(0))


def test_atomic_replace(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    save_checkpoint(path, model=_net(0), extra_state={"v": 1})
    save_checkpoint(path, model=_net(0), extra_state={"v": 2})
    assert load_checkpoint(path, model=_net(0)) == {"v": 2}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_text", fail)  # fails after the weights are written
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=_net(5), extra_state={"v": 3})
    monkeypatch.undo()

    real_replace = ckpt.os.replace
    calls = []

    def fail_second_replace(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the old checkpoint is renamed away, then moving the new one in fails
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", fail_second_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(path, model=_net(5), extra_state={"v": 4})
    monkeypatch.undo()

    model = _net(1)
    assert load_checkpoint(path, model=model) == {"v": 2}
    assert torch.equal(model[0].weight, _net(0)[0].weight)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary or old directories left behind


def test_extra_state_must_be_json(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "ck", model=_net(0), extra_state={"t": torch.ones(1)})
    assert not (tmp_path / "ck").exists()


def test_rng_state_restored(tmp_path):
    model = _net(0)
    torch.manual_seed(123)
    save_checkpoint(tmp_path / "ck", model=model)
    expected = torch.rand(5)
    torch.rand(7)
    load_checkpoint(tmp_path / "ck", model=model)
    assert torch.equal(torch.rand(5), expected)

    torch.manual_seed(9)
    unrestored = torch.rand(5)
    torch.manual_seed(9)
    load_checkpoint(tmp_path / "ck", model=model, restore_rng=False)
    assert torch.equal(torch.rand(5), unrestored)


def test_latest_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for name in ["epoch-0002", "epoch-0010", "epoch-0003"]:
        save_checkpoint(tmp_path / "checkpoints" / name, model=_net(0), rng=False)
    (tmp_path / "checkpoints" / "epoch-0011").mkdir()  # incomplete
    (tmp_path / "checkpoints" / ".epoch-0012.tmp-abc").mkdir()  # a save in progress
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "epoch-0010"


def test_step_checkpoints_sort_between_the_epoch_checkpoints_around_them(tmp_path):
    names = ["epoch-0010", "epoch-0003-step-1000000", "epoch-0003", "epoch-0003-step-999999", "epoch-0003-step-000040"]
    assert sorted(names, key=checkpoint_order) == [
        "epoch-0003", "epoch-0003-step-000040", "epoch-0003-step-999999", "epoch-0003-step-1000000", "epoch-0010"]
    for name in names[1:]:  # wider step numbers than the name's format pads to still count as numbers
        save_checkpoint(tmp_path / "checkpoints" / name, model=_net(0), rng=False)
    assert latest_checkpoint(tmp_path).name == "epoch-0003-step-1000000"


def test_weights_and_checkpoints_get_the_mode_the_umask_gives_any_file(tmp_path):
    umask = os.umask(0o002)
    try:
        save_weights(tmp_path / "w.safetensors", _net(0))
        model = _net(0)
        save_checkpoint(tmp_path / "ck", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1,
                                                                                momentum=0.9))
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(umask)
    files = [tmp_path / "w.safetensors", tmp_path / "plain.json", *(tmp_path / "ck").iterdir()]
    assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {"0o664"}  # safetensors alone writes 0600


@pytest.mark.skipif(resource is None, reason="needs a file-size limit (POSIX) to fail a real write")
def test_a_failed_write_is_an_oserror_with_its_errno_and_keeps_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "ck", model=_net(0), extra_state={"v": 1})
    big = nn.Linear(512, 512)  # 1 MiB of weights, over the limit below
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limits[1]))
    try:
        with pytest.raises(OSError) as failed:
            save_checkpoint(tmp_path / "ck", model=big, extra_state={"v": 2})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert failed.value.errno == errno.EFBIG and failed.value.filename.endswith("model.safetensors")
    assert load_checkpoint(tmp_path / "ck", model=_net(1)) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_clean_interrupted_saves_touches_only_what_saves_leave(tmp_path):
    hexa = "0123456789abcdef" * 2
    (tmp_path / f".epoch-0001.tmp-{hexa}").mkdir()  # killed while writing
    (tmp_path / f".model.safetensors.tmp-{hexa}").write_bytes(b"partial")  # save_weights killed
    save_checkpoint(tmp_path / f".epoch-0002.old-{hexa}", model=_net(0), extra_state={"v": 2}, rng=False)
    (tmp_path / "epoch-0003").mkdir()
    (tmp_path / f".epoch-0003.old-{hexa}").mkdir()  # killed after the new one moved in
    (tmp_path / ".hidden-notes").write_text("mine")
    (tmp_path / ".epoch-0004.tmp-notauuid").mkdir()
    done = clean_interrupted_saves(tmp_path)
    assert sorted(done) == [f"removed .epoch-0001.tmp-{hexa}", f"removed .epoch-0003.old-{hexa}",
                            f"removed .model.safetensors.tmp-{hexa}",
                            f"restored epoch-0002 from .epoch-0002.old-{hexa}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".epoch-0004.tmp-notauuid", ".hidden-notes", "epoch-0002",
                                                          "epoch-0003"]
    assert load_checkpoint(tmp_path / "epoch-0002", model=_net(1)) == {"v": 2}  # killed between the two renames
    assert clean_interrupted_saves(tmp_path / "absent") == []
