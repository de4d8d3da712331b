"""Precise BatchNorm recomputes running statistics exactly, for every member, and changes no weight."""
import torch

import selfens_core
from selfens_core.batchnorm import batchnorm_layers, precise_bn


def test_statistics_are_the_plain_average_over_the_batches():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    model = torch.nn.Sequential(bn)
    batches = [torch.randn(4, 3, 5, 5) * (i + 1) + i for i in range(3)]
    bn.running_mean.fill_(100.0)  # stale statistics
    assert precise_bn(model.eval(), batches, num_batches=10) == 3
    means = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    variances = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(bn.running_mean, means, atol=1e-5) and torch.allclose(bn.running_var, variances, atol=1e-4)
    assert not model.training and bn.momentum == 0.1 and bn.num_batches_tracked == 3


def test_a_self_ensemble_keeps_its_weights_and_every_member_gets_statistics():
    torch.manual_seed(0)
    model = selfens_core.create("hne-resnet-small", num_classes=10, in_chans=1, num_members=4).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    assert precise_bn(model, iter(batches), num_batches=2) == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert all(bn.num_batches_tracked == 2 for bn in batchnorm_layers(model))  # the member branches' BNs included


def test_a_layer_no_batch_reaches_keeps_its_statistics_and_the_random_state_is_untouched():
    used, unused = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    model = torch.nn.ModuleDict({"used": used, "unused": unused})
    model.forward = lambda x: model["used"](torch.nn.functional.dropout(x, 0.5))  # dropout draws random numbers
    unused.running_mean.fill_(7.0)
    batches = [torch.randn(4, 3, 5, 5)]
    state = torch.random.get_rng_state()
    assert precise_bn(model, batches, num_batches=1) == 1
    assert torch.equal(torch.random.get_rng_state(), state)
    assert bool((unused.running_mean == 7.0).all()) and int(unused.num_batches_tracked) == 0
    assert int(used.num_batches_tracked) == 1
