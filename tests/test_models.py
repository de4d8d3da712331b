"""Contract tests over every registered model name (timm style; the checks live in selfens_core.testing)."""
import copy
import functools
import math

import pytest
import torch
from selfens_plugins.hne.model import build_tree, check_tree_equivalence, tree_branches

import selfens_core
from selfens_core import testing
from selfens_core.backbones import BackboneError, create_timm
from selfens_core.factory import backbone_parts
from selfens_core.metrics import count_flops
from selfens_core.registry import UnknownNameError

# Small but real settings per family, so the whole contract runs in seconds; defaults are exercised below.
SMALL = {"hne-resnet": dict(num_members=4), "hne-resnet-small": dict(num_members=4),
         "hne-mobilenetv2": dict(num_members=4), "deep-ensemble-resnet18": dict(num_members=2),
         "hne-resnet18": dict(num_members=2), "hne-efficientnet_b0": dict(num_members=2),
         "deep-ensemble-hne-resnet-small": dict(num_members=2), "ienet-mobilenetv2": dict(widths=[0.5, 1.0]),
         "ienet-resnet18": dict(widths=[0.5, 1.0]), "ienet-efficientnet_b0": dict(widths=[0.5, 1.0]),
         "nfe-resnet18": dict(num_members=2), "nfe-wrn28-10": dict(depth=10, widen_factor=1)}
NAMES = selfens_core.list_models()


@functools.cache
def _built(name):
    return selfens_core.create(name, num_classes=7, in_chans=1, **SMALL.get(name, {}))


def build(name):
    """A fresh copy of a small model (built once per name: timm families verify the tree at build time)."""
    return copy.deepcopy(_built(name))


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_finite_and_prefix(name):
    testing.check_forward(build(name), image_size=28)  # Fashion-MNIST's size, not the models' default 32


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    testing.check_backward(build(name))


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name):
    testing.check_save_load(build(name))


@pytest.mark.parametrize("name", NAMES)
def test_eval_reports_every_metric_per_budget(name):
    testing.check_eval_metrics(build(name))


@pytest.mark.parametrize("name", NAMES)
def test_eval_output_of_an_image_does_not_depend_on_its_batch(name):
    testing.check_batch_independence(build(name), image_size=28)


@pytest.mark.parametrize("name", NAMES)
def test_building_leaves_batchnorm_statistics_as_initialised(name):
    """Probe passes at build time (measuring strides, checking the tree) run in evaluation mode."""
    touched = [n for n, m in build(name).named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
               and m.track_running_stats and (m.num_batches_tracked.item() != 0 or m.running_mean.abs().max() > 0)]
    assert not touched, f"building {name} updated the BatchNorm statistics of {touched[:3]}"


@pytest.mark.parametrize("name", NAMES)
def test_fewer_members_cost_fewer_flops(name):
    testing.check_prefix_cost(build(name), image_size=28)


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("hne-")])
def test_grouped_execution_equals_each_member_path(name):
    model = build(name)
    with torch.no_grad():  # non-trivial BN statistics, so the check covers running stats too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.5, 1.5)
    check_tree_equivalence(model, torch.randn(2, 1, 28, 28))


def test_tree_training_gives_each_member_the_gradient_it_gets_alone():
    """A 2-member tree that shares only its stem trains exactly as two networks would alone: under L_I every branch's
    gradient equals the one its member's own path gets from its own loss (the code side of docs/results.md's
    hne2-stem-shared run, which compares this tree with a deep ensemble)."""
    model = selfens_core.create("hne-resnet18", num_classes=7, in_chans=1, num_members=2, split_stages=[0]).train()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 7, (4,))
    sum(torch.nn.functional.cross_entropy(logits, y) for logits in model(x)).backward()
    stem = [p.grad for p in model.stem.parameters()]
    grouped = [p.grad for n, p in model.named_parameters() if not n.startswith("stem.")]
    alone = []
    for k in range(2):
        path = model.member_path(k).train()  # path[0] is the tree's own stem module
        alone.append(torch.autograd.grad(torch.nn.functional.cross_entropy(path(x), y), list(path.parameters())))
    for tree_grad, *member_grads in zip(stem, *alone):  # the shared stem gets the sum of both members' gradients
        torch.testing.assert_close(tree_grad, sum(member_grads))
    alone = [grads[len(stem):] for grads in alone]
    assert len(grouped) == len(alone[0]) > 50
    for tree_grad, *branch_grads in zip(grouped, *alone):
        if tree_grad.dim() == 3:  # the tree head stores (members, features, classes), a Linear (classes, features)
            branch_grads = [g.t() for g in branch_grads]
        torch.testing.assert_close(tree_grad.reshape(2, -1), torch.stack([g.reshape(-1) for g in branch_grads]))


@pytest.mark.parametrize("name", ["hne-resnet-small", "hne-mobilenetv2"])
def test_tree_flops_saving_at_paper_size(name):
    """All N members cost (2^{B+1}-1)/((B+1)·N) of N independent members when blocks cost alike; the paper's
    architectures have blocks of unequal cost, so check the saving is real and the ordering of budgets."""
    model = selfens_core.create(name, num_classes=10, in_chans=1).eval()
    x = torch.zeros(1, 1, 32, 32)
    flops = {k: count_flops(model, x, members=k) for k in model.budgets()}
    n = model.num_members
    assert flops[n] < 0.75 * n * flops[1]
    assert all(flops[a] < flops[b] for a, b in zip(model.budgets(), model.budgets()[1:]))


def test_paper_defaults():
    assert selfens_core.create("hne-resnet", num_classes=10).num_members == 16
    assert selfens_core.create("hne-resnet-small", num_classes=10).num_members == 16
    model = selfens_core.create("hne-mobilenetv2", num_classes=10)
    assert model.num_members == 8 and model.budgets() == [1, 2, 4, 8]
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)


def test_members_not_a_power_of_two_is_rounded_up_with_a_warning():
    model = selfens_core.create("hne-resnet-small", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    with pytest.warns(UserWarning, match="members=3 is not a power of two"):
        out = model(x, members=3)
    assert out.shape[0] == 4
    with pytest.raises(ValueError, match=r"members must be an int in \[1, 16\]"):
        model(x, members=17)


def test_input_errors_say_what_is_expected():
    model = build("hne-resnet-small")
    with pytest.raises(ValueError, match="expected 1 input channel.*create the model with in_chans=3"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"the channels come last: pass x.permute\(0, 3, 1, 2\)"):
        model(torch.randn(2, 28, 28, 1))
    with pytest.raises(ValueError, match="smaller than this model's minimum 8x8"):
        model(torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="expected a batch of images"):
        model(torch.randn(1, 28, 28))


@pytest.mark.parametrize("timm_name", ["resnet18", "mobilenetv2_100", "efficientnet_b0"])
def test_one_member_computes_what_the_timm_model_computes(timm_name):
    net = create_timm(timm_name, num_classes=5, in_chans=2).eval()
    n = 4
    parts = [backbone_parts(copy.deepcopy(net)) for _ in range(n)]
    stages = len(parts[0].stages)
    model = build_tree(parts, tree_branches(stages, [stages - 2, stages - 1]), num_classes=5, in_chans=2).eval()
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(model(x, members=1)[0], expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(x), expected.expand(n, -1, -1), rtol=1e-4, atol=1e-4)


def test_backbone_that_cannot_be_transformed_says_why():
    with pytest.raises(BackboneError, match="has no backbone adapter; supported families: efficientnet, resnet"):
        selfens_core.create("hne-vit_tiny_patch16_224", num_classes=10)
    with pytest.raises(UnknownNameError, match="Unknown model 'hne-resnet_does_not_exist'"):
        selfens_core.create("hne-resnet_does_not_exist", num_classes=10)
    with pytest.raises(BackboneError, match="resnet10t has 4 stages, .* at most 16 members; got num_members=32"):
        selfens_core.create("hne-resnet10t", num_classes=10, num_members=32)


def test_tree_check_catches_channel_mixing():
    """A block that concatenates channels cannot run group-wise; the build-time check names the problem."""
    class Concat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return torch.cat([x[:, :2], self.conv(x)], 1)

    from selfens_core.backbones import BackboneParts
    nets = [BackboneParts(torch.nn.Conv2d(1, 4, 3), [Concat()], torch.nn.Identity(), torch.nn.Linear(4, 3))
            for _ in range(2)]
    model = build_tree(nets, [2], num_classes=3, in_chans=1, min_input_size=4)
    with pytest.raises(BackboneError, match="mixes channels across groups"):
        check_tree_equivalence(model, torch.randn(1, 1, 8, 8))


def test_unsupported_layer_is_named():
    from selfens_core.backbones import BackboneParts
    stage = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.GroupNorm(2, 4))
    nets = [BackboneParts(torch.nn.Conv2d(1, 4, 3), [copy.deepcopy(stage)], torch.nn.Identity(), torch.nn.Linear(4, 3))
            for _ in range(2)]
    with pytest.raises(BackboneError, match=r"stage 0: layer '0.1' \(GroupNorm\) cannot be run as a tree"):
        build_tree(nets, [2], num_classes=3, in_chans=1)


def test_unknown_model_name_lists_what_exists():
    with pytest.raises(UnknownNameError, match=r"Unknown model 'hne-resnet-smal'. Did you mean 'hne-resnet-small'"):
        selfens_core.create("hne-resnet-smal", num_classes=10)
    with pytest.raises(UnknownNameError, match="Families: deep-ensemble-<name>, hne-<name>"):
        selfens_core.create("nope", num_classes=10)


def test_unknown_builder_argument_lists_allowed():
    with pytest.raises(TypeError, match="unknown argument.*num_member.*allowed: num_members"):
        selfens_core.create("hne-resnet-small", num_classes=10, num_member=4)


def test_list_models_wildcards():
    assert selfens_core.list_models("hne-resnet*") == ["hne-resnet", "hne-resnet-small", "hne-resnet18"]
    assert selfens_core.list_models() == sorted(selfens_core.list_models())


def test_deep_ensemble_members_are_independent_one_member_networks():
    model = selfens_core.create("deep-ensemble-hne-resnet-small", num_classes=10, in_chans=1, num_members=3)
    assert model.num_members == 3 and model.budgets() == [1, 2, 3]
    first, second = (dict(net.named_parameters()) for net in model.networks[:2])
    assert not torch.equal(first["model.head.weight"], second["model.head.weight"])
    one = selfens_core.create("hne-resnet-small", num_classes=10, in_chans=1, num_members=1)
    assert sum(p.numel() for p in model.parameters()) == 3 * sum(p.numel() for p in one.parameters())


def test_hne_cost_ratio_matches_the_paper_for_equal_blocks():
    """With equal-cost blocks the tree's FLOPs ratio is R = 2/(B+1) − 1/((B+1)·2^B) (paper, Section 3.1)."""
    from selfens_core.backbones import BackboneParts
    B = 3
    conv = lambda: torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, bias=False))  # noqa: E731
    nets = [BackboneParts(torch.nn.Identity(), [conv() for _ in range(B + 1)], torch.nn.Identity(),
                          torch.nn.Linear(8, 2)) for _ in range(2**B)]
    model = build_tree(nets, tree_branches(B + 1, [1, 2, 3]), num_classes=2, in_chans=8).eval()
    x = torch.zeros(1, 8, 8, 8)
    tree = count_flops(model, x) - count_flops(model.head, torch.zeros(1, 8 * 2**B, 8, 8))
    single = count_flops(model, x, members=1) - count_flops(model.head, torch.zeros(1, 8, 8, 8))
    ratio = tree / (2**B * single)
    assert math.isclose(ratio, 2 / (B + 1) - 1 / ((B + 1) * 2**B), rel_tol=1e-6)
