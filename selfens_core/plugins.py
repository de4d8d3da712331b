"""Plugin discovery: the pluggy manager, entry-point loading and the registries it fills.

Plugins come from the ``selfens`` entry-point group, loaded one by one: a plugin that fails to import or whose hook
raises is reported with a warning naming it, and everything else keeps working. ``SELFENS_STRICT_PLUGINS=1`` turns
such failures into errors (the test suite runs strict); ``SELFENS_DISABLE_PLUGINS=a,b`` skips plugins by name.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from . import hookspecs
from .registry import ModelRegistry, Registry

ENTRY_POINT_GROUP = hookspecs.PROJECT
CORE_PLUGIN = "selfens_core"


class PluginError(RuntimeError):
    """A plugin failed to load or to register, in strict mode."""


@dataclass
class Registries:
    """Everything plugins registered, one registry per extension point."""

    models: ModelRegistry = field(default_factory=ModelRegistry)
    combiners: Registry = field(default_factory=lambda: Registry("combiner"))
    distillers: Registry = field(default_factory=lambda: Registry("distiller"))
    samplers: Registry = field(default_factory=lambda: Registry("sampler"))
    backbone_adapters: Registry = field(default_factory=lambda: Registry("backbone adapter"))
    failures: dict[str, str] = field(default_factory=dict)


def _strict() -> bool:
    return os.environ.get("SELFENS_STRICT_PLUGINS", "") not in ("", "0", "false")


def _fail(plugin: str, error: BaseException, registries: Registries) -> None:
    message = f"selfens plugin {plugin!r} failed: {type(error).__name__}: {error}"
    registries.failures[plugin] = message
    if _strict():
        raise PluginError(message) from error
    warnings.warn(message + " (skipped; set SELFENS_STRICT_PLUGINS=1 to make this an error)", stacklevel=3)


def make_plugin_manager(registries: Registries) -> pluggy.PluginManager:
    """A manager with the core's own components and every installed, non-disabled entry-point plugin."""
    from . import builtins

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtins, name=CORE_PLUGIN)
    disabled = {p.strip() for p in os.environ.get("SELFENS_DISABLE_PLUGINS", "").split(",") if p.strip()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in disabled or pm.get_plugin(ep.name) is not None:
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as error:  # a broken plugin must not take the host down
            _fail(ep.name, error, registries)
    return pm


def _call_each(pm: pluggy.PluginManager, hook_name: str, make_register: Callable[[str], Any],
               registries: Registries) -> None:
    """Call one hook plugin by plugin, so each registration records its plugin and one failure stays local."""
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        try:
            impl.function(**{"register": make_register(impl.plugin_name)})
        except Exception as error:
            _fail(impl.plugin_name, error, registries)


class _ModelRegister:
    """The ``register`` callback handed to ``register_models``: ``register(...)`` and ``register.family(...)``."""

    def __init__(self, registry: ModelRegistry, plugin: str):
        self._registry, self._plugin = registry, plugin

    def __call__(self, name: str, builder: Callable[..., Any], **options: Any) -> None:
        self._registry.add(name, builder, plugin=self._plugin, **options)

    def family(self, prefix: str, builder: Callable[..., Any], **options: Any) -> None:
        self._registry.add_family(prefix, builder, plugin=self._plugin, **options)


@functools.cache
def registries() -> Registries:
    """The process-wide registries, filled on first use."""
    regs = Registries()
    pm = make_plugin_manager(regs)
    _call_each(pm, "register_models", lambda plugin: _ModelRegister(regs.models, plugin), regs)
    for hook, registry in [("register_combiners", regs.combiners), ("register_distillers", regs.distillers),
                           ("register_samplers", regs.samplers),
                           ("register_backbone_adapters", regs.backbone_adapters)]:
        _call_each(pm, hook, lambda plugin, r=registry: functools.partial(r.add, plugin=plugin), regs)
    return regs
