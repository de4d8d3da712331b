"""Test helpers for plugin authors (and for selfens itself): pytest fixtures and the model contract.

Load it as a pytest plugin from your ``conftest.py``::

    pytest_plugins = ["selfens_core.testing"]

Fixtures (both make plugin failures errors, as ``SELFENS_STRICT_PLUGINS=1`` does):

- ``isolated_registries(*plugins)``: fresh registries from a fresh plugin manager holding the core and the given
  plugin modules only, no installed plugins, nothing global changed; inspect what your hooks registered.
- ``register_plugin(plugin, name=None)``: make a plugin module visible to ``selfens_core.create``, ``list_models``
  and the engine for one test, undone afterwards; a no-op when the plugin is installed already.

The contract: :func:`check_model_contract` builds a registered model and runs every check on it (forward shape, finite
logits rather than probabilities, member prefix consistency, each image's eval-mode output independent of the rest of
its batch, ``members=k`` costing less than more members, backward reaching every parameter, save/load round trip,
evaluation metric keys); the ``check_*`` functions run one check on a model you built. Every failure is an
AssertionError whose message starts with the check's name. This module needs pytest (the ``test``
extra) for its fixtures; it is a module rather than an auto-loaded ``pytest11`` plugin, so installing selfens changes
no other project's test runs.
"""
from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from . import plugins
from .ensemble import SelfEnsemble
from .metrics import count_flops

PER_BUDGET_METRICS = {"acc", "nll", "ece", "brier", "flops"}
MODEL_METRICS = {"members", "member_acc", "disagreement", "agreement", "params", "num_samples"}


@pytest.fixture
def isolated_registries(monkeypatch: pytest.MonkeyPatch) -> Callable[..., plugins.Registries]:
    """``isolated_registries(my_plugin, other=obj)``: registries filled by the core and these plugins only (named by
    their ``__name__`` or keyword)."""
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "1")

    def load(*modules: Any, **named: Any) -> plugins.Registries:
        extra = {**{m.__name__: m for m in modules}, **named}
        return plugins.load_registries(extra, entry_points=False)

    return load


@pytest.fixture
def register_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """``register_plugin(my_plugin, name=None)``: add a plugin to this process's registries for this test."""
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "1")
    names: list[str] = []

    def register(plugin: Any, name: str | None = None) -> str:
        names.append(plugins.register_plugin(plugin, name))
        return names[-1]

    yield register
    for name in reversed(names):
        plugins.unregister_plugin(name)


def check_model_contract(name: str, *, num_classes: int = 7, in_chans: int = 1, **build_args: Any) -> None:
    """Build the registered model ``name`` with ``build_args`` (keep them small: the checks run real passes) and
    run every contract check on it. A failure is an AssertionError whose message starts with the failing check's
    name (e.g. ``check_prefix_cost: ...``)."""
    from .factory import build_model

    model = build_model(name, num_classes=num_classes, in_chans=in_chans, **build_args)
    for check in CHECKS:
        check(model)


def _named(check: Callable[..., None]) -> Callable[..., None]:
    """Make every failure of ``check`` an AssertionError starting with its name: its own assertions, and any
    exception the model raises while it runs (chained, so the model's traceback stays)."""
    prefix = f"{check.__name__}: "

    @functools.wraps(check)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            check(*args, **kwargs)
        except AssertionError as error:
            if str(error).startswith(prefix):
                raise
            raise AssertionError(prefix + str(error)) from error
        except Exception as error:
            raise AssertionError(f"{prefix}the model raised {type(error).__name__}: {error}") from error

    return run


def _images(model: SelfEnsemble, batch: int, image_size: int | None = None) -> torch.Tensor:
    channels, height, width = model.pretrained_cfg["input_size"]
    return torch.randn(batch, channels, image_size or height, image_size or width)


@_named
def check_forward(model: SelfEnsemble, image_size: int | None = None) -> None:
    """Logits are (M, B, C), finite, and logits rather than probabilities; ``members=k`` equals the first k members
    of a full pass for every budget; ``predict`` returns probabilities (B, C)."""
    model.eval()
    x = _images(model, 3, image_size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (model.num_members, 3, model.num_classes), (
            f"logits shaped {tuple(out.shape)}, expected (members, batch, classes) = "
            f"{(model.num_members, 3, model.num_classes)}")
        assert torch.isfinite(out).all(), "non-finite logits"
        assert not ((out >= 0).all() and torch.allclose(out.double().sum(-1), torch.ones(1, dtype=torch.float64),
                                                         atol=1e-4)), (
            "forward returned probabilities (every row non-negative and summing to 1); logits are expected: "
            "remove the final softmax (the combiner turns logits into probabilities in predict)")
        for k in model.budgets():
            torch.testing.assert_close(model(x, members=k), out[:k], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, k=k: f"members={k} differs from a full pass's first {k}: {m}")
        probs = model.predict(x, members=model.budgets()[-1])
    assert probs.shape == (3, model.num_classes), f"predict returned shape {tuple(probs.shape)}"
    assert (probs >= 0).all(), "predict returned negative probabilities"
    torch.testing.assert_close(probs.sum(-1), torch.ones(3),
                               msg=lambda m: f"predict's probabilities do not sum to 1: {m}")


@_named
def check_features(model: SelfEnsemble, image_size: int | None = None) -> None:
    """A model that implements ``forward_features`` returns, with the same logits as ``forward``, one (B, d) tensor
    of features per member, for every budget and for listed members (nothing to check for a model without)."""
    if not model.has_features:
        return
    model.eval()
    x = _images(model, 3, image_size)
    with torch.no_grad():
        for members in (*model.budgets(), (model.num_members - 1,)):
            outputs = model.outputs(x, members, features=True)
            torch.testing.assert_close(outputs.logits, model(x, members), rtol=1e-4, atol=1e-5,
                                       msg=lambda m, k=members: f"members={k}: logits with features differ: {m}")
            assert len(outputs.features) == len(outputs.logits), (
                f"members={members}: {len(outputs.features)} feature tensors for {len(outputs.logits)} members")
            for i, f in enumerate(outputs.features):
                assert f.ndim == 2 and f.shape[0] == 3, (
                    f"members={members}: member {i}'s features are shaped {tuple(f.shape)}, expected (batch, width)")


@_named
def check_batch_independence(model: SelfEnsemble, image_size: int | None = None) -> None:
    """In evaluation mode each image's logits and probabilities are the same alone as within a batch (a model that
    normalises across the batch, or uses BatchNorm batch statistics in eval mode, fails)."""
    model.eval()
    x = _images(model, 3, image_size)
    with torch.no_grad():
        together = model.outputs(x, features=model.combines_features)
        probs = model.combine(together)
        for i in (0, len(x) - 1):
            alone = model.outputs(x[i:i + 1], features=model.combines_features)
            torch.testing.assert_close(
                alone.logits, together.logits[:, i:i + 1], rtol=1e-4, atol=1e-4,
                msg=lambda m, i=i: f"image {i}'s eval-mode logits differ alone and within a batch of {len(x)}: the "
                                   f"model mixes the images of a batch: {m}")
            torch.testing.assert_close(
                model.combine(alone), probs[i:i + 1], rtol=1e-4, atol=1e-5,
                msg=lambda m, i=i: f"image {i}'s eval-mode probabilities differ alone and within a batch of "
                                   f"{len(x)}: the combiner mixes the images of a batch: {m}")


def _cost(model: SelfEnsemble, x: torch.Tensor, members: int) -> tuple[int, str]:
    """FLOPs of ``model(x, members=members)``; module calls where the counter finds no FLOPs (elementwise-only)."""
    flops = count_flops(model, x, members=members)
    if flops:
        return flops, "FLOPs"
    calls = 0

    def count(*_: Any) -> None:
        nonlocal calls
        calls += 1

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        with torch.no_grad():
            model(x, members=members)
    finally:
        handle.remove()
    return calls, "module calls"


@_named
def check_prefix_cost(model: SelfEnsemble, image_size: int | None = None) -> None:
    """``members=k`` computes only what the first k members need: each budget costs less than the next (FLOPs,
    counted by ``torch.utils.flop_counter``), so a model that computes every member and slices fails."""
    model.eval()
    x = _images(model, 1, image_size)
    budgets = model.budgets()
    costs = {k: _cost(model, x, k) for k in budgets}
    for small, large in zip(budgets, budgets[1:]):
        (cost_small, unit), (cost_large, _) = costs[small], costs[large]
        assert cost_small < cost_large, (
            f"members={small} costs {cost_small:,} {unit}, not less than members={large} ({cost_large:,}): "
            f"forward_members must compute only what the first k members need, not every member and then slice")


@_named
def check_backward(model: SelfEnsemble, image_size: int | None = None) -> None:
    """A cross-entropy loss over all members (plus a trainable combiner's own loss on the detached outputs, as the
    engine trains it) gives every trainable parameter a gradient."""
    model.train()
    model.zero_grad(set_to_none=True)
    outputs = model.outputs(_images(model, 4, image_size), features=model.combines_features)
    out = outputs.logits
    targets = torch.randint(0, model.num_classes, (4,))
    loss = F.cross_entropy(out.flatten(0, 1), targets.repeat(out.shape[0]))
    if any(p.requires_grad for p in model.combiner.parameters()):
        loss = loss + model.combiner_loss(outputs.detach(), targets)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"


@_named
def check_save_load(model: SelfEnsemble) -> None:
    """``save_pretrained`` then ``load_pretrained`` rebuilds the model from its config and loads the weights
    strictly: the same outputs. The model must come from ``selfens_core.create`` (its config names it)."""
    from .pretrained import load_pretrained, save_pretrained

    model.eval()
    x = _images(model, 2)
    with tempfile.TemporaryDirectory() as directory, torch.no_grad():
        save_pretrained(model, directory)
        loaded = load_pretrained(directory)
        torch.testing.assert_close(loaded(x), model(x),
                                   msg=lambda m: f"the reloaded model's logits differ from the saved one's: {m}")


@_named
def check_eval_metrics(model: SelfEnsemble) -> None:
    """``evaluate`` reports every metric for every budget in ``model.budgets()``."""
    from .data import DatasetInfo, Split
    from .evaluation import evaluate

    cfg = model.pretrained_cfg
    info = DatasetInfo("contract", model.num_classes, cfg["in_chans"], tuple(cfg["input_size"]), cfg["mean"],
                       cfg["std"], tuple(map(str, range(model.num_classes))))
    images = torch.randint(0, 256, (4, *info.input_size), dtype=torch.uint8)
    metrics = evaluate(model, Split(images, torch.arange(4) % model.num_classes), info, batch_size=4)
    assert MODEL_METRICS <= set(metrics), f"missing metrics {MODEL_METRICS - set(metrics)}"
    assert list(metrics["members"]) == [str(k) for k in model.budgets()], (
        f"evaluated budgets {list(metrics['members'])}, expected model.budgets() {model.budgets()}")
    for k, values in metrics["members"].items():
        assert PER_BUDGET_METRICS <= set(values), f"members={k}: missing {PER_BUDGET_METRICS - set(values)}"


CHECKS = (check_forward, check_features, check_batch_independence, check_prefix_cost, check_backward, check_save_load,
          check_eval_metrics)
"""Every check :func:`check_model_contract` runs, in order; each takes a built model."""
