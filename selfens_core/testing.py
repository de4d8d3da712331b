"""Test helpers for plugin authors (and for selfens itself): pytest fixtures and the model contract.

Load it as a pytest plugin from your ``conftest.py``::

    pytest_plugins = ["selfens_core.testing"]

Fixtures (both make plugin failures errors, as ``SELFENS_STRICT_PLUGINS=1`` does):

- ``isolated_registries(*plugins)``: fresh registries from a fresh plugin manager holding the core and the given
  plugin modules only, no installed plugins, nothing global changed; inspect what your hooks registered.
- ``register_plugin(plugin, name=None)``: make a plugin module visible to ``selfens_core.create``, ``list_models``
  and the engine for one test, undone afterwards; a no-op when the plugin is installed already.

The contract: :func:`check_model_contract` builds a registered model and runs every check on it (forward shape and
finite output, member prefix consistency, backward reaching every parameter, save/load round trip, evaluation
metric keys); the ``check_*`` functions run one check on a model you built. This module needs pytest (the ``test``
extra) for its fixtures; it is a module rather than an auto-loaded ``pytest11`` plugin, so installing selfens changes
no other project's test runs.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from . import plugins
from .ensemble import SelfEnsemble

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
    run every contract check on it."""
    from .factory import build_model

    model = build_model(name, num_classes=num_classes, in_chans=in_chans, **build_args)
    check_forward(model)
    check_backward(model)
    check_save_load(model)
    check_eval_metrics(model)


def _images(model: SelfEnsemble, batch: int, image_size: int | None = None) -> torch.Tensor:
    channels, height, width = model.pretrained_cfg["input_size"]
    return torch.randn(batch, channels, image_size or height, image_size or width)


def check_forward(model: SelfEnsemble, image_size: int | None = None) -> None:
    """Logits are (M, B, C) and finite; ``members=k`` equals the first k members of a full pass for every budget;
    ``predict`` returns probabilities (B, C)."""
    model.eval()
    x = _images(model, 3, image_size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (model.num_members, 3, model.num_classes), f"logits shaped {tuple(out.shape)}"
        assert torch.isfinite(out).all(), "non-finite logits"
        for k in model.budgets():
            torch.testing.assert_close(model(x, members=k), out[:k], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, k=k: f"members={k} differs from a full pass's first {k}: {m}")
        probs = model.predict(x, members=model.budgets()[-1])
    assert probs.shape == (3, model.num_classes), f"predict returned shape {tuple(probs.shape)}"
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def check_backward(model: SelfEnsemble, image_size: int | None = None) -> None:
    """A cross-entropy loss over all members (plus a trainable combiner's own loss on the detached outputs, as the
    engine trains it) gives every trainable parameter a gradient."""
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(_images(model, 4, image_size))
    targets = torch.randint(0, model.num_classes, (4,))
    loss = F.cross_entropy(out.flatten(0, 1), targets.repeat(out.shape[0]))
    if any(p.requires_grad for p in model.combiner.parameters()):
        loss = loss + model.combiner.loss(out.detach(), targets)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"


def check_save_load(model: SelfEnsemble) -> None:
    """``save_pretrained`` then ``load_pretrained`` rebuilds the model from its config and loads the weights
    strictly: the same outputs. The model must come from ``selfens_core.create`` (its config names it)."""
    from .pretrained import load_pretrained, save_pretrained

    model.eval()
    x = _images(model, 2)
    with tempfile.TemporaryDirectory() as directory, torch.no_grad():
        save_pretrained(model, directory)
        loaded = load_pretrained(directory)
        torch.testing.assert_close(loaded(x), model(x))


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
    assert list(metrics["members"]) == [str(k) for k in model.budgets()]
    for k, values in metrics["members"].items():
        assert PER_BUDGET_METRICS <= set(values), f"members={k}: missing {PER_BUDGET_METRICS - set(values)}"
