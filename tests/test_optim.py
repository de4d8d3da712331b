"""Optimizers and learning-rate schedules: the built-ins' values, warm-up, minima, names and arguments by registry,
the train section's keys, and a plugin's own optimizer and schedule used by name."""
import json
import math
import types
from pathlib import Path

import pytest
import torch

from selfens_core import engine
from selfens_core.config import ConfigError, load_config
from selfens_core.factory import build_optimizer, build_schedule, check_train_config
from selfens_core.hookspecs import hookimpl
from selfens_core.optim import lr_lambda, schedule_minima, sgd, weight_decay_groups
from selfens_core.registry import UnknownNameError
from selfens_core.rundir import ConfigChanged, check_resume_config
from selfens_core.schedules import Cosine, Cyclic

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def _values(schedule, steps, total_steps, steps_per_epoch=10):
    return [schedule(step, total_steps, steps_per_epoch) for step in steps]


def test_constant_cosine_and_step():
    assert _values(build_schedule("constant"), [0, 50, 99], 100) == [1.0, 1.0, 1.0]
    assert _values(build_schedule("cosine"), [0, 50, 100], 100) == pytest.approx([1.0, 0.5, 0.0])
    step = build_schedule("step", {"milestones": [0.5, 0.75], "gamma": 0.1})
    assert _values(step, [0, 49, 50, 74, 75, 99], 100) == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_piecewise_linear_default_is_constant_then_linear_to_a_hundredth_by_90_percent():
    schedule = build_schedule("piecewise_linear")
    assert _values(schedule, [25, 50, 70, 90, 95], 100) == pytest.approx([1.0, 1.0, 0.505, 0.01, 0.01])
    own = build_schedule("piecewise_linear", {"points": [[0, 0], [0.5, 1], [1, 0]]})
    assert _values(own, [0, 25, 50, 75], 100) == pytest.approx([0, 0.5, 1, 0.5])


def test_cyclic_is_triangular_per_step_with_minima_mid_cycle():
    schedule = build_schedule("cyclic", {"cycle_epochs": 2, "low": 0.01, "high": 1.0})  # 20 steps at 10 per epoch
    start, middle, end, restart = _values(schedule, [0, 9, 19, 20], 100)
    assert start == pytest.approx(0.9 * 1.0 + 0.1 * 0.01)  # t = 1/20: (1 - 2t)·high + 2t·low
    assert (middle, end, restart) == pytest.approx((0.01, 1.0, start))
    assert _values(schedule, [4, 14], 100) == pytest.approx([0.505, 0.505])  # t = 1/4 and 3/4: half-way
    assert schedule.minima(100, 10) == [10, 30, 50, 70, 90]  # after optimizer step 10 (t = 1/2) of each cycle
    odd = Cyclic(cycle_epochs=1, low=0.0)  # 5 steps: the two lowest steps are 2 and 3; snapshots after the later
    assert _values(odd, [1, 2], 10, 5) == pytest.approx([0.2, 0.2]) and odd.minima(12, 5) == [3, 8]


def test_cosine_restarts_anneal_within_each_cycle_and_restart():
    schedule = build_schedule("cosine_restarts", {"cycle_epochs": 1})  # 4 steps at 4 per epoch
    assert _values(schedule, [0, 2, 3, 4, 6], 10, 4) == pytest.approx(
        [1.0, 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 1.0, 0.5])
    assert schedule.minima(10, 4) == [4, 8]  # cycle ends; the unfinished third cycle has none


def test_warm_up_precedes_any_schedule_and_shifts_its_minima():
    factor = lr_lambda(Cosine(), total_steps=10, steps_per_epoch=5, warmup_steps=2)
    assert [factor(s) for s in [0, 1, 2, 6]] == pytest.approx([0.5, 1.0, 1.0, 0.5])  # cosine over the last 8
    cyclic = Cyclic(cycle_epochs=1)  # 4 steps at 4 per epoch: minima after steps 2, 6, 10 of the 10 after warm-up
    assert schedule_minima(cyclic, total_steps=12, steps_per_epoch=4, warmup_steps=2) == [4, 8, 12]
    warmed = lr_lambda(cyclic, total_steps=12, steps_per_epoch=4, warmup_steps=2)
    assert [warmed(s - 1) for s in (4, 8, 12)] == pytest.approx([0.01] * 3)  # the step ending there is the low one
    assert schedule_minima(Cosine(), total_steps=12, steps_per_epoch=4, warmup_steps=2) == []


def _scheduler(factor):
    return torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), factor)


def _steps(scheduler, count):
    lrs = []
    for _ in range(count):
        scheduler.optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    return lrs


def test_a_resumed_scheduler_continues_exactly():
    factor = lr_lambda(Cyclic(cycle_epochs=1), total_steps=18, steps_per_epoch=6, warmup_steps=3)
    uninterrupted = _steps(_scheduler(factor), 18)
    first, resumed = _scheduler(factor), _scheduler(factor)
    _steps(first, 7)
    assert first.state_dict()["lr_lambdas"] == [None]  # plain numbers only: checkpoints stay JSON
    resumed.load_state_dict(first.state_dict())
    assert _steps(resumed, 11) == uninterrupted[7:]


@pytest.mark.parametrize(("name", "args", "message"), [
    ("piecewise_linear", {"points": [[0.1, 1], [1, 0]]}, "must start at 0, end at 1 and increase"),
    ("piecewise_linear", {"points": [[0, 1], [0.9, 0]]}, "must start at 0, end at 1 and increase"),
    ("piecewise_linear", {"points": [[0, 1], [0.5, 1], [0.5, 0], [1, 0]]}, "must start at 0, end at 1 and increase"),
    ("piecewise_linear", {"points": [[0, 1]]}, "at least two"),
    ("piecewise_linear", {"points": [[0, 1], [1, -1]]}, "factors must be finite numbers >= 0"),
    ("cyclic", {"cycle_epochs": 0}, "cycle_epochs must be a finite number > 0, not 0"),
    ("cyclic", {"low": 2.0}, r"low must be a number in \[0, high=1.0\]"),
    ("cosine_restarts", {"cycle_epochs": -1}, "cycle_epochs must be a finite number > 0"),
    ("step", {"milestones": [30, 60]}, r"milestones must be fractions of training in \[0, 1\]"),
    ("step", {"gamma": 0}, "gamma must be a finite number > 0"),
])
def test_schedule_arguments_are_checked(name, args, message):
    with pytest.raises(ValueError, match=message):
        build_schedule(name, args)


def test_a_cycle_needs_two_steps():
    with pytest.raises(ValueError, match=r"cycle_epochs=0.1 is 1 step\(s\) at 10 steps per epoch; a cycle needs at "
                                         "least 2 steps"):
        build_schedule("cyclic", {"cycle_epochs": 0.1})(0, 100, 10)


def _model():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))


def test_weight_decay_groups_spare_biases_norm_scales_and_frozen_parameters():
    model = _model()
    model[2].bias.requires_grad_(False)
    decay, no_decay = weight_decay_groups(list(model.named_parameters()), 0.01)
    assert decay["weight_decay"] == 0.01 and [p.shape for p in decay["params"]] == [(8, 4), (3, 8)]
    assert no_decay["weight_decay"] == 0.0 and [p.shape for p in no_decay["params"]] == [(8,), (8,), (8,)]
    assert weight_decay_groups([("w", model[0].weight)], 0.01) == [{"params": [model[0].weight], "weight_decay": 0.01}]


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adagrad", "rmsprop", "nadam"])
def test_every_builtin_optimizer_builds_and_steps(name):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(name, weight_decay_groups(list(model.named_parameters()), 1e-4), lr=0.01)
    torch.nn.functional.cross_entropy(model(torch.randn(5, 4)), torch.tensor([0, 1, 2, 0, 1])).backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(group["lr"] == 0.01 for group in optimizer.param_groups)


def test_sgd_has_momentum_unless_told_otherwise():
    params = [torch.nn.Parameter(torch.zeros(2))]
    defaults = sgd(params, lr=0.1).defaults
    assert (defaults["momentum"], defaults["nesterov"], defaults["dampening"]) == (0.9, False, 0)
    nesterov = build_optimizer("sgd", params, lr=0.1, args={"nesterov": True, "momentum": 0.8})
    assert (nesterov.defaults["nesterov"], nesterov.defaults["momentum"]) == (True, 0.8)


def test_unknown_names_and_arguments_say_what_exists():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(UnknownNameError, match=r"Unknown optimizer 'adamx'\. Did you mean 'adam', .*Known: adagrad, "
                                               r"adam, adamw, nadam, rmsprop, sgd\."):
        build_optimizer("adamx", params, lr=0.1)
    with pytest.raises(TypeError, match=r"optimizer 'sgd' got unknown argument\(s\) betas; allowed: momentum, "
                                        r"dampening, nesterov$"):
        build_optimizer("sgd", params, lr=0.1, args={"betas": (0.9, 0.99)})
    with pytest.raises(UnknownNameError, match=r"Unknown schedule 'cosin'\. Did you mean 'cosine'.* Known: constant, "
                                               r"cosine, cosine_restarts, cyclic, piecewise_linear, step\."):
        build_schedule("cosin")
    with pytest.raises(TypeError, match=r"schedule 'cyclic' got unknown argument\(s\) cycles; allowed: cycle_epochs, "
                                        r"low, high$"):
        build_schedule("cyclic", {"cycles": 3})


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.optimizer=adamx"], r"config key 'train.optimizer': Unknown optimizer 'adamx'\. Did you mean"),
    (["train.optimizer=adam", "train.momentum=0.9"], r"config key 'train.momentum': optimizer 'adam' got unknown "
                                                     r"argument\(s\) momentum; allowed: betas, eps, amsgrad, .*; "
                                                     r"leave it null$"),
    (["train.optimizer=rmsprop", "train.nesterov=true"], r"config key 'train.nesterov': optimizer 'rmsprop' got "
                                                         r"unknown argument\(s\) nesterov"),
    (["train.optimizer_args.betas=[0.9,0.99]"], r"config key 'train.optimizer_args': optimizer 'sgd' got unknown "
                                                r"argument\(s\) betas; allowed: momentum, dampening, nesterov$"),
    (["train.momentum=0.8", "train.optimizer_args.momentum=0.7"], r"config keys 'train.momentum' and "
                                                                  r"'train.optimizer_args.momentum' are both set"),
    (["train.optimizer_args.lr=0.1"], r"'train.optimizer_args.lr' cannot be set: it is train.lr$"),
    (["train.optimizer_args.weight_decay=0"], r"'train.optimizer_args.weight_decay' cannot be set: it is "
                                              r"train.weight_decay"),
    (["train.schedule=cosin"], r"config key 'train.schedule': Unknown schedule 'cosin'\. Did you mean 'cosine'"),
    (["train.schedule=cyclic", "train.schedule_args.cycles=3"], r"config key 'train.schedule_args': schedule "
                                                                r"'cyclic' got unknown argument\(s\) cycles; allowed: "
                                                                r"cycle_epochs, low, high$"),
])
def test_the_train_section_names_the_key_at_fault(overrides, message):
    cfg = load_config(None, ["model.name=x", *overrides])
    with pytest.raises(ConfigError, match=message):
        check_train_config(cfg.train)


def test_momentum_and_nesterov_default_to_the_optimizers_own():
    cfg = load_config(None, ["model.name=x"])
    assert (cfg.train.momentum, cfg.train.nesterov, cfg.train.optimizer_args, cfg.train.schedule_args) == (
        None, None, {}, {})
    check_train_config(cfg.train)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_name_a_registered_optimizer_and_schedule(path):
    check_train_config(load_config(path).train)


class _AcmeHalvingSchedule:
    """The base rate, halved every ``every`` steps."""

    def __init__(self, *, every=2):
        self.every = every

    def __call__(self, step, total_steps, steps_per_epoch):
        return 0.5 ** (step // self.every)


def _acme_sgd(param_groups, lr, *, momentum=0.0):
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum)


_ACME = types.SimpleNamespace(
    register_optimizers=hookimpl(lambda register: register("acme_sgd", _acme_sgd)),
    register_schedules=hookimpl(lambda register: register("acme_halving", _AcmeHalvingSchedule)),
)


def test_a_plugins_optimizer_and_schedule_register_under_its_name(isolated_registries):
    regs = isolated_registries(acme=_ACME)
    assert regs.registered_by("acme") == {"optimizers": ["acme_sgd"], "schedules": ["acme_halving"]}
    assert regs.optimizers.entry("sgd").plugin == "selfens_core"


def test_a_plugins_optimizer_and_schedule_train_by_name(register_plugin, tmp_path):
    register_plugin(_ACME, name="acme")
    param = torch.nn.Parameter(torch.zeros(1))
    assert isinstance(build_optimizer("acme_sgd", [param], lr=0.1, args={"momentum": 0.5}), torch.optim.SGD)
    assert _values(build_schedule("acme_halving", {"every": 3}), [0, 3, 6], 10) == [1.0, 0.5, 0.25]
    cfg = load_config(None, ["model.name=hne-resnet-small", "model.args.num_members=2", "data.name=digits",
                             "data.subset=64", "train.batch_size=32", "train.epochs=1", "data.eval_batch_size=64",
                             "train.optimizer=acme_sgd", "train.momentum=0.5", "train.schedule=acme_halving",
                             "train.schedule_args.every=1"])
    engine.train(cfg, tmp_path / "run", progress=False)
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-1]["lr"] == pytest.approx(0.025)  # 0.1, halved after each of the epoch's 2 steps


def test_optimizer_args_cannot_change_on_resume_even_when_allowed(tmp_path):
    before = {"train": {"optimizer": "adam", "optimizer_args": {"betas": [0.9, 0.999]}}}
    after = {"train": {"optimizer": "adam", "optimizer_args": {"betas": [0.9, 0.99]}}}
    with pytest.raises(ConfigChanged, match=r"with train.optimizer_args.betas changed, even with --allow-change"):
        check_resume_config(before, after, ["train.optimizer_args.betas"], out=tmp_path, checkpoint=tmp_path / "ck")
