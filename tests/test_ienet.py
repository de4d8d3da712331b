"""IENet: channel selection, couplings from the graph, sliced layers, switchable BN, depth, save/load, training."""
import json

import pytest
import torch
from selfens_plugins.ienet.channels import draw_indices, kept_channels
from selfens_plugins.ienet.layers import SlicedConv2d, SlicedLinear, SwitchableBatchNorm2d
from selfens_plugins.ienet.model import IntraEnsemble
from torch import nn
from torch.nn import functional as F

import selfens_core
from selfens_core import engine
from selfens_core.backbones import BackboneError, BackboneParts
from selfens_core.config import load_config
from selfens_core.pretrained import load_pretrained, save_pretrained


class InvertedResidual(nn.Module):
    """1×1 expand, depthwise 3×3 with an SE gate, 1×1 project, identity residual: every coupling but concat."""

    def __init__(self, c: int):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c, bias=False), nn.BatchNorm2d(2 * c))
        self.se = nn.Conv2d(2 * c, 2 * c, 1)
        self.project = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        h = self.dw(self.expand(x))
        h = h * torch.sigmoid(self.se(h.mean((2, 3), keepdim=True)))
        return x + self.project(h)


class Dense(nn.Module):
    """Concatenates its input with new features (DenseNet style)."""

    def __init__(self, c: int, growth: int):
        super().__init__()
        self.conv = nn.Conv2d(c, growth, 3, padding=1)

    def forward(self, x):
        return torch.cat([x, F.relu(self.conv(x))], 1)


def tiny_parts(classes: int = 3) -> BackboneParts:
    stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    stages = [nn.Sequential(InvertedResidual(8), InvertedResidual(8), InvertedResidual(8)),
              nn.Sequential(Dense(8, 4), nn.Conv2d(12, 10, 1))]
    return BackboneParts(stem, stages, nn.Sequential(nn.Conv2d(10, 16, 1), nn.BatchNorm2d(16)), nn.Linear(16, classes))


def tiny(widths=(0.5, 0.75, 1.0), selection="rc", depth=False) -> IntraEnsemble:
    return IntraEnsemble(tiny_parts(), widths=widths, selection=selection, depth=depth, num_classes=3, in_chans=1,
                         input_size=(8, 8), min_input_size=4)


@pytest.mark.parametrize("selection", ["rc", "ro", "sc", "slimmable"])
def test_channel_selections(selection):
    idx = draw_indices(selection, 20, 0.7)
    assert len(idx) == kept_channels(20, 0.7) == 14 and len(set(idx.tolist())) == 14 and idx.max() < 20
    dropped = sorted(set(range(20)) - set(idx.tolist()))
    if selection == "rc":  # one contiguous block removed, the rest kept in order
        assert idx.tolist() == sorted(idx.tolist()) and dropped == list(range(dropped[0], dropped[0] + 6))
    if selection == "ro":  # one contiguous window kept
        assert idx.tolist() == list(range(idx[0], idx[0] + 14))
    if selection == "slimmable":
        assert idx.tolist() == list(range(14))
    with pytest.raises(ValueError, match="unknown channel selection 'cut'; choose one of rc, ro, sc, slimmable"):
        draw_indices("cut", 20, 0.7)


def _sliced(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


def test_couplings_residual_depthwise_gate_and_concat():
    model = tiny()
    convs = {name: m for name, m in model.named_modules() if isinstance(m, SlicedConv2d)}
    stem, block = convs["stem.0"], "stages.0.{}.{}"
    for b in range(3):  # residual adds tie every block's output to the stem's
        assert convs[block.format(b, "project.0")].out_key == stem.out_key
        expand, dw, se = (convs[block.format(b, n)] for n in ("expand.0", "dw.0", "se"))
        assert dw.in_key == dw.out_key == expand.out_key == se.out_key  # depthwise and the SE gate
        assert se.in_key == expand.out_key
    after_cat = convs["stages.1.1"]
    for n in range(3):
        with model.channels.use(n):
            x_idx, new_idx = model.channels.index(stem.out_key), model.channels.index(convs["stages.1.0.conv"].out_key)
            torch.testing.assert_close(model.channels.index(after_cat.in_key), torch.cat([x_idx, 8 + new_idx]))


@pytest.mark.parametrize("selection", ["rc", "sc"])
def test_each_subnet_touches_exactly_its_selected_weights(selection):
    model = tiny(selection=selection).train()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
    for n in range(model.num_members):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x, members=(n,))[0], y).backward()
        for layer in _sliced(model, SlicedConv2d) + _sliced(model, SlicedLinear):
            out_idx, in_idx = (model.channels.index(k, n) for k in (layer.out_key, layer.in_key))
            mask = torch.zeros_like(layer.weight, dtype=torch.bool)
            rows = out_idx if out_idx is not None else slice(None)
            if getattr(layer, "depthwise", False) or in_idx is None:
                mask[rows] = True
            else:
                mask[rows, in_idx[:, None] if out_idx is not None else in_idx] = True
            assert layer.weight.grad[~mask].abs().max() == 0 if (~mask).any() else True
            assert layer.weight.grad[mask].abs().sum() > 0
        for bn in _sliced(model, SwitchableBatchNorm2d):
            assert all((member.weight.grad is not None) == (m == n) for m, member in enumerate(bn.bns))


def test_batchnorm_statistics_stay_per_subnet():
    model = tiny().train()
    bn = _sliced(model, SwitchableBatchNorm2d)[0]
    before = [b.running_mean.clone() for b in bn.bns]
    model(torch.randn(4, 1, 8, 8) + 3, members=(1,))
    changed = [not torch.equal(b.running_mean, old) for b, old in zip(bn.bns, before)]
    assert changed == [False, True, False]
    assert [len(b.running_mean) for b in bn.bns] == [4, 6, 8]  # 0.5, 0.75, 1.0 of the stem's 8 channels


def test_depth_paths_skip_and_swap_blocks_of_narrow_subnets():
    torch.manual_seed(3)
    model = tiny(widths=(0.5, 1.0), depth=True)
    narrow, full = model.paths.order(0, 0), model.paths.order(1, 0)
    assert full == [0, 1, 2] and len(narrow) == 2 and narrow == sorted(narrow, reverse=True)  # one skipped, two swapped
    assert model.paths.order(0, 1) == [0, 1]  # the concatenating stage has nothing to skip
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 2, 3)


def test_unresolvable_couplings_name_the_layer():
    class Split(nn.Module):
        def forward(self, x):
            a, b = x.chunk(2, 1)
            return torch.cat([b, a], 1)

    class Flip(nn.Module):
        def forward(self, x):
            return x.flip(1)

    for block, message in [
        (Flip(), r"layer 'stages.0.0': cannot tell how call_method 'flip' treats channels"),
        (Split(), r"layer 'stages.0.0': cannot tell how call_method 'chunk'"),
        (nn.Conv2d(8, 8, 3, padding=1, groups=2), r"layer 'stages.0.0': grouped convolution \(groups=2"),
        (nn.Sequential(nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8)), r"layer 'stages.0.1': layer of type GroupNorm"),
    ]:
        parts = BackboneParts(nn.Conv2d(1, 8, 3), [block], nn.Identity(), nn.Linear(8, 3))
        with pytest.raises(BackboneError, match=message):
            IntraEnsemble(parts, widths=[0.5, 1.0], num_classes=3, in_chans=1)


def test_indices_and_weights_survive_save_and_load(tmp_path):
    model = selfens_core.create("ienet-mobilenetv2", num_classes=4, in_chans=1, widths=[0.5, 1.0], selection="sc",
                                depth=True).eval()
    save_pretrained(model, tmp_path)
    torch.manual_seed(123)  # a rebuilt model draws other indices; loading must restore the saved ones
    assert not all(torch.equal(a, b) for a, b in zip(
        selfens_core.create("ienet-mobilenetv2", num_classes=4, in_chans=1, widths=[0.5, 1.0], selection="sc",
                            depth=True).channels.buffers(), model.channels.buffers()))
    loaded = load_pretrained(tmp_path)
    for (name, a), b in zip(model.channels.named_buffers(), loaded.channels.buffers()):
        assert torch.equal(a, b), name
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(loaded.predict(x), model.predict(x))


def test_timm_families_build_and_keep_the_full_subnet_exact():
    """The width-1.0 sub-network of RC computes what the timm network computes with the same weights."""
    import timm
    for name in ("resnet18", "efficientnet_b0"):  # (ienet-mobilenetv2 is timm's EfficientNet class too)
        torch.manual_seed(0)
        reference = timm.create_model(name, num_classes=5, in_chans=1).eval()
        torch.manual_seed(0)
        model = selfens_core.create(f"ienet-{name}", num_classes=5, in_chans=1, widths=[0.5, 1.0]).eval()
        x = torch.randn(2, 1, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(model(x, members=(1,))[0], reference(x), rtol=1e-4, atol=1e-4)


def test_training_recipe_end_to_end(tmp_path):
    """Shuffled batches for the first half, then stacking trained on detached outputs; config records the combiner."""
    cfg = load_config(None, ["model.name=ienet-mobilenetv2", "model.args.widths=[0.5,1.0]", "data.name=digits",
                             "data.subset=64", "train.batch_size=32", "train.epochs=2", "train.lr=0.05",
                             "sampler.args.shuffle_epochs=0.5", "data.eval_batch_size=64"])
    metrics = engine.train(cfg, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert set(lines[0]["loss"]) == {"ce"} and set(lines[1]["loss"]) == {"ce", "combiner"}
    assert 0 <= metrics["agreement"] <= 1 and len(metrics["member_acc"]) == 2
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["combiner"] == "stacking"
    model = load_pretrained(tmp_path)
    assert not torch.equal(model.combiner.weight, torch.eye(10).repeat(2, 1) / 2)  # the stacking map was trained
