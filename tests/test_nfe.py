"""NFE: structure, pruning at initialisation, weight grouping, masks under optimizers, save/load, cost, the paper
config end to end. Tiny WRNs (depth 10, width 1) and fake data keep it fast."""
import copy
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from selfens_plugins.nfe.masks import add_masks, mask_of, masked_layers, stored_weight
from selfens_plugins.nfe.pruning import keep_count, prune, snip_scores, top_k
from torch import nn

import selfens_core
from selfens_core import engine, testing
from selfens_core.config import load_config
from selfens_core.distillers import CoDistillation
from selfens_core.metrics import count_flops
from selfens_core.pretrained import load_pretrained, save_pretrained
from selfens_core.registry import UnknownNameError

TINY_WRN = dict(depth=10, widen_factor=1)
# Small but real settings for every registered nfe name (the contract runs real passes).
SMALL = {"nfe-wrn28-10": TINY_WRN, "nfe-resnet18": dict(num_members=2, channels=[8, 16, 32, 64])}
PAPER = Path(__file__).parents[1] / "configs" / "paper" / "nfe-wrn28-10-cifar100.yaml"


def tiny(num_members=3, **args):
    return selfens_core.create("nfe-wrn28-10", num_classes=5, **TINY_WRN, num_members=num_members, **args)


def batches(count=3, size=8):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 32, 32, generator=gen), torch.randint(0, 5, (size,), generator=gen))
            for _ in range(count)]


def fissioned(**args):
    model = tiny(**args)
    model.prepare(model, iter(batches()))
    return model


def copy_masks(model, stage):
    """Per copy of ``stage``, the masks of its layers."""
    return [[mask_of(layer) for layer in masked_layers(c)] for c in model.stages[stage]]


def kept_fraction(model):
    """Kept weights over all weights of the template network (the union of each layer's copies)."""
    kept = total = 0
    for layer in masked_layers(model.stem):
        kept, total = kept + int(mask_of(layer).sum()), total + mask_of(layer).numel()
    for s in range(len(model.stages)):
        for position in zip(*copy_masks(model, s)):
            kept, total = kept + int(sum(m.sum() for m in position)), total + position[0].numel()
    return kept, total


def test_exits_branch_after_stages_as_in_the_paper():
    assert [len(c) for c in tiny(2).stages] == [1, 2, 2]  # a copy of stages 2-3 after stage 1
    assert [len(c) for c in tiny(3).stages] == [1, 2, 3]  # and a copy of stage 3 after stage 2
    assert tiny(3).routes == ((0, 0, 0), (0, 1, 1), (0, 0, 2))
    assert [len(c) for c in tiny(2, branch_after=[0]).stages] == [2, 2, 2]  # right after the stem
    assert [len(c) for c in tiny(1).stages] == [1, 1, 1]  # one exit: the pruned network alone


def test_each_kept_weight_belongs_to_exactly_one_copy():
    model = tiny(3)
    template = [stored_weight(layer).detach().clone() for layer in masked_layers(model.single_network())]
    model.prepare(model, iter(batches()))
    assert bool(model.fissioned)
    kept, total = kept_fraction(model)
    assert kept == keep_count(total, 0.5)
    position = len(list(masked_layers(model.stem)))
    for s in range(len(model.stages)):
        copies = copy_masks(model, s)
        for layer_index, masks in enumerate(zip(*copies)):
            owners = torch.stack(masks).sum(0)
            assert owners.max() <= 1, f"stage {s + 1}: a weight in two copies"
            counts = [int(m.sum()) for m in masks]
            assert max(counts) - min(counts) <= 1, f"stage {s + 1}: unbalanced grouping {counts}"
            for c, mask in enumerate(masks):  # each copy holds the template's initial values at its weights
                layer = list(masked_layers(model.stages[s][c]))[layer_index]
                torch.testing.assert_close(stored_weight(layer).detach(), template[position] * mask)
            position += 1


def test_an_unfissioned_model_is_the_dense_network_in_every_exit():
    model = tiny(3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out[1], out[0])
        torch.testing.assert_close(out[2], out[0])
        torch.testing.assert_close(out[0], model.single_network()(x))
    dense = model.effective_cost(1)
    assert dense["params"] == sum(p.numel() for p in model.single_network().parameters())
    assert dense["flops"] == count_flops(model, torch.zeros(1, 3, 32, 32), members=1)


def test_effective_cost_counts_kept_weights_only():
    model = fissioned()
    example = torch.zeros(1, 3, 32, 32)
    for k in model.budgets():
        cost = model.effective_cost(k)
        assert cost["flops"] < count_flops(model.eval(), example, members=k)
    # all exits together hold the pruned template's weights plus their own BatchNorm and linear copies
    extra = sum(p.numel() for m in model._used(range(3)) for n, p in m.named_parameters() if "original" not in n)
    kept, _ = kept_fraction(model)
    assert model.effective_cost(3)["params"] == kept + extra


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_masked_weights_stay_exactly_zero_under_optimizer_steps(optimizer):
    model = fissioned().train()
    params = list(model.parameters())
    opt = (torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4) if optimizer == "sgd"
           else torch.optim.AdamW(params, lr=0.01, weight_decay=0.05))
    layers = list(masked_layers(model))
    before = [stored_weight(layer).detach().clone() for layer in layers]
    for x, y in batches(3):
        opt.zero_grad()
        sum(CoDistillation()(model(x), y).values()).backward()
        opt.step()
    for layer, old in zip(layers, before):
        mask = mask_of(layer)
        assert (stored_weight(layer)[~mask] == 0).all() and (layer.weight[~mask] == 0).all()
        assert not torch.equal(stored_weight(layer)[mask], old[mask])  # the kept weights trained


def _toy():
    """x → conv1 (1→1, weight a) → conv2 (1→2, weights b0, b1) → logits (b0·a·x, b1·a·x), on 1×1 images."""
    net = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.Conv2d(1, 2, 1, bias=False), nn.Flatten()).double()
    with torch.no_grad():
        net[0].weight.fill_(0.5)
        net[1].weight.copy_(torch.tensor([1.5, -2.0], dtype=torch.float64).view(2, 1, 1, 1))
    add_masks(net)
    return net


def test_snip_scores_on_a_toy_network_equal_a_hand_computation():
    net = _toy()
    x, y = torch.tensor([2.0, -1.0], dtype=torch.float64).view(2, 1, 1, 1), torch.tensor([0, 1])
    a, b = 0.5, (1.5, -2.0)
    grad_a, grad_b = 0.0, [0.0, 0.0]  # by hand: dL/dz_j = p_j − [j = y], averaged over the two images
    for xi, yi in zip((2.0, -1.0), (0, 1)):
        z = [bj * a * xi for bj in b]
        p = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
        d = [p[j] - (j == yi) for j in range(2)]
        grad_a += sum(d[j] * b[j] * xi for j in range(2)) / 2
        grad_b = [grad_b[j] + d[j] * a * xi / 2 for j in range(2)]
    expected = [abs(a * grad_a), abs(b[0] * grad_b[0]), abs(b[1] * grad_b[1])]
    layers = list(masked_layers(net))
    scores = snip_scores(net, layers, x, y)
    assert [float(v) for s in scores for v in s.flatten()] == pytest.approx(expected, rel=1e-12)
    net = _toy()
    keep = prune("snip", net, list(masked_layers(net)), iter([(x, y)]), 0.6)  # keeps round(3 · 0.4) = 1
    best = max(range(3), key=expected.__getitem__)
    assert [bool(v) for k in keep for v in k.flatten()] == [i == best for i in range(3)]


def test_top_k_keeps_exactly_the_highest_scores_over_all_layers():
    keep = top_k([torch.tensor([0.1, 0.9, 0.3]), torch.tensor([[0.8], [0.2]])], 2)
    assert keep[0].tolist() == [False, True, False] and keep[1].tolist() == [[True], [False]]


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "random"])
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_every_pruning_method_reaches_the_requested_sparsity(method, sparsity):
    model = fissioned(pruning=method, sparsity=sparsity)
    kept, total = kept_fraction(model)
    assert kept == keep_count(total, sparsity)
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_pruning_a_timm_resnet_scores_every_residual_conv(method):
    """timm zero-initialises each residual branch's last BatchNorm scale, which zeroes every score inside the
    branches: the builder turns it off, so each conv keeps weights chosen by score, not by tie order."""
    model = selfens_core.create("nfe-resnet10t", num_classes=5, in_chans=1, num_members=2, small_images=True,
                                channels=[8, 16, 16, 32], stem_width=8, pruning=method)
    gen = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no weight kept by tie order
        model.prepare(model, iter([(torch.randn(16, 1, 28, 28, generator=gen), torch.randint(0, 5, (16,)))]))
    for name, layer in model.named_modules():
        if ".conv" in name and hasattr(layer, "parametrizations"):
            assert mask_of(layer).any(), f"{method} pruned all of {name}"


def test_weights_kept_by_tie_order_are_reported():
    with pytest.warns(UserWarning, match="2 were chosen by tie order among 4 weights scoring exactly 0"):
        keep = top_k([torch.tensor([0.0, 0.5, 0.0]), torch.tensor([0.0, 0.0])], 3)
    assert sum(int(k.sum()) for k in keep) == 3 and keep[0][1]


def test_sparsity_zero_groups_without_pruning():
    model = fissioned(sparsity=0.0)
    kept, total = kept_fraction(model)
    assert kept == total
    assert model.effective_cost(3)["params"] < sum(p.numel() for p in model.parameters())


def test_save_load_keeps_the_masks_and_never_prunes_again(tmp_path):
    model = fissioned().eval()
    save_pretrained(model, tmp_path)
    loaded = load_pretrained(tmp_path).eval()
    assert bool(loaded.fissioned)
    masks = [mask_of(layer).clone() for layer in masked_layers(loaded)]
    assert all(torch.equal(a, mask_of(b)) for a, b in zip(masks, masked_layers(model)))
    loaded.prepare(loaded, iter(batches(2, size=16)))  # other data: would give other masks if it pruned
    assert all(torch.equal(a, mask_of(b)) for a, b in zip(masks, masked_layers(loaded)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_fission_refuses_copies_that_differ():
    model = tiny(2)
    with torch.no_grad():
        stored_weight(next(masked_layers(model.stages[1][1]))).add_(1.0)
    with pytest.raises(RuntimeError, match="copy 1 of stage 2 differs from the template"):
        model.prepare(model, iter(batches()))


@pytest.mark.parametrize("name", selfens_core.list_models("nfe-*"))
def test_every_nfe_name_meets_the_model_contract(name):
    testing.check_model_contract(name, **SMALL[name])


def test_a_fissioned_model_meets_the_model_contract():
    model = fissioned()
    for check in testing.CHECKS:
        check(copy.deepcopy(model))


def test_listed_exits_run_only_their_paths():
    model = fissioned().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x, members=(2, 1)), model(x)[[2, 1]])
    assert count_flops(model, x[:1], members=(2,)) < count_flops(model, x[:1], members=3)


def test_parameter_groups_name_each_exit_path():
    model = tiny(2)
    groups = model.parameter_groups()
    assert any(n.startswith("stages.1.1.") for n in groups["member1"])
    assert not any(n.startswith("stages.1.1.") for n in groups["member0"])
    assert any(n.startswith("stem.") for n in groups["member0"]) and any(n.startswith("stem.")
                                                                         for n in groups["member1"])


def test_bad_arguments_say_what_exists():
    with pytest.raises(ValueError, match="unknown pruning method 'snap'; choose one of snip, grasp, synflow, random"):
        tiny(pruning="snap")
    with pytest.raises(ValueError, match=r"sparsity .* \[0, 1\)"):
        tiny(sparsity=1.0)
    with pytest.raises(ValueError, match="at most 3 exits"):
        tiny(4)
    with pytest.raises(ValueError, match="3 exits need 2 branch points"):
        tiny(3, branch_after=[1])
    with pytest.raises(UnknownNameError):  # not a ResNet: the family does not take it
        selfens_core.create("nfe-efficientnet_b0", num_classes=5)


def test_recipe_is_co_distillation_with_mean_logits():
    cfg = engine.resolve_recipe(load_config(None, ["model.name=nfe-resnet18"]))
    assert (cfg.distiller.name, cfg.combiner.name) == ("co_distillation", "mean_logits")


def test_the_paper_config_trains_a_few_steps_on_fake_data(tmp_path):
    overrides = ["model.args.depth=10", "model.args.widen_factor=1", "data.name=fake:3:32:32:100", "data.subset=64",
                 "train.batch_size=32", "train.epochs=1", "data.eval_batch_size=100", "train.device=cpu"]
    cfg = load_config(PAPER, overrides)
    assert cfg.train.schedule == "piecewise_linear" and cfg.train.nesterov and cfg.model.args.pruning == "snip"
    metrics = engine.train(cfg, tmp_path / "run", progress=False)
    assert metrics["effective_params"] < metrics["params"]
    for k in ("1", "2", "3"):
        assert metrics["members"][k]["effective_flops"] < metrics["members"][k]["flops"]
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["effective_params"] == metrics["effective_params"]
    loaded = load_pretrained(tmp_path / "run")
    assert bool(loaded.fissioned)
    for layer in masked_layers(loaded):
        assert (stored_weight(layer)[~mask_of(layer)] == 0).all()
    kept, total = kept_fraction(loaded)
    assert kept == keep_count(total, 0.5)
