"""The hook specifications: every way a plugin can extend selfens.

A plugin is a module (or object) with functions decorated by :data:`hookimpl` and named like the stubs below. It is
found through the ``selfens`` entry-point group (built-in methods register exactly the same way). Each hook receives a
``register`` callback and calls it once per object it provides; an implementation may accept a subset of the
arguments, and the hook API only ever grows by adding arguments. The tutorial and a section per hook are in
``docs/plugins.md``.

Each ``register`` callback checks what it gets: an instance where a class is expected (or the reverse), or a keyword
the hook does not list below, is refused as that plugin's failure, naming the hook and what it takes. A function
named like a hook but not decorated with ``@hookimpl``, and a plugin module implementing no hook, are failures too.

Names are unique per registry. Built-in plugins register first and their names are reserved: a plugin replaces one
only by passing ``replace=True`` (``register("mean_probs", MyMeanProbs, replace=True)``). Any other name clash is
reported as a failure of the plugin that registered second, naming both.

Hooks are called once, the first time a registry is needed (``create``, ``list_models``, the CLI), not at import.
Keep plugin modules import-light: import torch-heavy code inside the functions you register.
"""
from __future__ import annotations

import pluggy

PROJECT = "selfens"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_models(register):
    """Register methods: model builders and their training recipes.

    Call ``register(name, builder, **entry_options)`` for each exact model name, and
    ``register.family(prefix, builder, accepts=..., suffix=..., examples=[...], **entry_options)`` for an open family
    such as ``prefix-<timm model name>``: ``accepts(suffix)`` says which suffixes it builds, ``suffix`` names them in
    words for listings, ``examples`` start with ``prefix``. A builder is a function or class,
    ``builder(*, num_classes, in_chans, **kwargs) -> SelfEnsemble`` (family builders also get the suffix as their
    first positional argument). ``entry_options`` may name the defaults of the model's training recipe:
    ``distiller=``, ``combiner=``, ``sampler=`` (registered names), ``phases=`` and ``callbacks=`` (lists as in a run
    config's ``phases:`` and ``callbacks:``), and ``description=``; nothing else.
    """


@hookspec
def register_combiners(register):
    """Register combiners: ``register(name, cls)`` where ``cls(**options)`` is a :class:`selfens_core.Combiner`
    (the class, not an instance: the options come from the config)."""


@hookspec
def register_distillers(register):
    """Register distillers (training objectives): ``register(name, cls)``; ``cls(**options)`` is a
    :class:`selfens_core.Distiller` that turns member outputs into named loss terms."""


@hookspec
def register_samplers(register):
    """Register sub-network samplers: ``register(name, cls)``; ``cls(**options)`` is a
    :class:`selfens_core.Sampler` that decides which members see which batch at each step."""


@hookspec
def register_backbone_adapters(register):
    """Register backbone adapters: ``register(name, adapter)`` where ``adapter`` is a
    :class:`selfens_core.backbones.BackboneAdapter` instance splitting a timm model into stem, stages, neck and
    classifier."""


@hookspec
def register_zoo_sources(register):
    """Register zoo sources: ``register(name, directory)`` where ``directory`` (an existing ``str`` or ``Path``) holds
    zoo entries, one sub-folder per entry with its ``manifest.json`` and optionally the bundled files. Called when the
    zoo is first listed or loaded."""


@hookspec
def register_optimizers(register):
    """Register optimizers: ``register(name, factory)`` where ``factory(param_groups, lr=..., **args)`` returns a
    ``torch.optim.Optimizer`` (a ``torch.optim`` class fits as it is). ``args`` come from the config's
    ``train.optimizer_args`` (and ``train.momentum`` / ``train.nesterov`` when set); weight decay comes with each
    parameter group."""


@hookspec
def register_schedules(register):
    """Register learning-rate schedules: ``register(name, cls)``; ``cls(**args)`` (``args`` from
    ``train.schedule_args``) has ``__call__(step, total_steps, steps_per_epoch) -> float``, the multiplier of the base
    learning rate at 0-based ``step`` of a phase of ``total_steps`` steps, a pure function of the step so that a
    resumed run continues exactly. A cyclic schedule may add ``minima(total_steps, steps_per_epoch) -> list[int]``,
    the counts of steps done at which a cycle reaches its minimum (where snapshots are taken). Linear warm-up
    (``train.warmup_epochs``) precedes any schedule."""


@hookspec
def register_callbacks(register):
    """Register training callbacks: ``register(name, cls)``; ``cls(**args)`` (``args`` from the config's
    ``callbacks:`` entry) is an object with some of the methods of :class:`selfens_core.callbacks.Callback`, which
    the engine calls at fixed points of a run with its state (model, optimizers, phase and schedule, step, run
    directory)."""
