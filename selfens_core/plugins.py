"""Plugin discovery: the pluggy manager, entry-point loading and the registries it fills.

Plugins come from the ``selfens`` entry-point group, loaded one by one. A plugin that fails to import, implements a
hook selfens does not define, registers a name another plugin holds, or whose hook raises is reported with a warning
naming it, and everything else keeps working. ``SELFENS_STRICT_PLUGINS=1`` turns such failures into errors (the test
suite runs strict); ``SELFENS_DISABLE_PLUGINS=a,b`` skips plugins by name. Built-in plugins (the core and the entry
points of the ``selfens`` distribution itself) register first, and their names are reserved.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pluggy

from . import hookspecs
from .registry import ModelRegistry, NameConflictError, Registry, unknown_message

ENTRY_POINT_GROUP = hookspecs.PROJECT
CORE_PLUGIN = "selfens_core"
DISTRIBUTION = "selfens"

HOOK_REGISTRIES = {  # each hook → the Registries field its registrations fill
    "register_models": "models",
    "register_combiners": "combiners",
    "register_distillers": "distillers",
    "register_samplers": "samplers",
    "register_backbone_adapters": "backbone_adapters",
    "register_zoo_sources": "zoo_sources",
}


class PluginError(RuntimeError):
    """A plugin failed to load or to register, in strict mode."""


@dataclass
class PluginInfo:
    """One plugin as discovery saw it: where it comes from, which hooks it implements and what went wrong."""

    name: str
    distribution: str | None = None  # None: registered in-process (register_plugin, tests)
    version: str | None = None
    builtin: bool = False
    disabled: bool = False
    hooks: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class Registries:
    """Everything plugins registered, one registry per extension point, and the plugins themselves."""

    models: ModelRegistry = field(default_factory=ModelRegistry)
    combiners: Registry = field(default_factory=lambda: Registry("combiner"))
    distillers: Registry = field(default_factory=lambda: Registry("distiller"))
    samplers: Registry = field(default_factory=lambda: Registry("sampler"))
    backbone_adapters: Registry = field(default_factory=lambda: Registry("backbone adapter"))
    zoo_sources: Registry = field(default_factory=lambda: Registry("zoo source"))
    plugins: dict[str, PluginInfo] = field(default_factory=dict)

    @property
    def failures(self) -> dict[str, list[str]]:
        """Failure messages by plugin, for the plugins that had any."""
        return {name: info.failures for name, info in self.plugins.items() if info.failures}

    def registered_by(self, plugin: str) -> dict[str, list[str]]:
        """What one plugin registered, by registry (only registries it registered something in)."""
        found = {kind: getattr(self, kind).registered_by(plugin) for kind in HOOK_REGISTRIES.values()}
        return {kind: names for kind, names in found.items() if names}

    def report(self) -> list[dict[str, Any]]:
        """Every plugin with its version, hooks, registrations and failures (what ``selfens plugins`` shows): the
        core, the other built-ins, then third-party plugins, each group by name."""
        order = sorted(self.plugins.values(), key=lambda p: (not p.builtin, p.name != CORE_PLUGIN, p.name))
        return [{**dataclasses.asdict(info), "registered": self.registered_by(info.name)} for info in order]


def _strict() -> bool:
    return os.environ.get("SELFENS_STRICT_PLUGINS", "") not in ("", "0", "false")


def _fail(info: PluginInfo, error: BaseException) -> None:
    message = f"selfens plugin {info.name!r} failed: {type(error).__name__}: {error}"
    info.failures.append(message)
    if _strict():
        raise PluginError(message) from error
    warnings.warn(message + " (set SELFENS_STRICT_PLUGINS=1 to make this an error)", stacklevel=3)


def _entry_point_info(ep: importlib.metadata.EntryPoint) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return PluginInfo(ep.name)
    builtin = re.sub(r"[-_.]+", "-", dist.name).lower() == DISTRIBUTION
    return PluginInfo(ep.name, dist.name, dist.version, builtin=builtin)


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Hooks the plugin implements that selfens does not define (typos, or hooks of a newer selfens), except those
    marked ``@hookimpl(optionalhook=True)``."""
    return [caller.name for caller in pm.get_hookcallers(plugin) or [] if not caller.has_spec()
            and any(not impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin is plugin)]


def _add_plugin(pm: pluggy.PluginManager, plugin: object, info: PluginInfo, registries: Registries) -> None:
    """Register one plugin object, recording its hooks; hooks selfens does not define are its failure."""
    registries.plugins[info.name] = info
    try:
        pm.register(plugin, name=info.name)
    except Exception as error:  # e.g. a hook implementation taking an argument its spec does not have
        _fail(info, error)
        return
    info.hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
    for hook in _unknown_hooks(pm, plugin):
        _fail(info, pluggy.PluginValidationError(plugin, unknown_message("hook", hook, sorted(HOOK_REGISTRIES))))


def make_plugin_manager(registries: Registries, extra: Mapping[str, object] = {}, *,
                        entry_points: bool = True) -> pluggy.PluginManager:
    """A manager with the core's own components, every installed, non-disabled entry-point plugin (unless
    ``entry_points=False``) and the in-process plugins ``extra`` (name → module or object). Each plugin's
    :class:`PluginInfo` goes into ``registries.plugins``."""
    from . import __version__, core_plugin

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    _add_plugin(pm, core_plugin, PluginInfo(CORE_PLUGIN, DISTRIBUTION, __version__, builtin=True), registries)
    disabled = {p.strip() for p in os.environ.get("SELFENS_DISABLE_PLUGINS", "").split(",") if p.strip()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if entry_points else []:
        info, held = _entry_point_info(ep), registries.plugins.get(ep.name)
        if held is not None:
            _fail(held, NameConflictError(f"plugin name {ep.name!r} is used by {held.distribution} and by "
                                          f"{info.distribution}; only the first is loaded"))
            continue
        registries.plugins[ep.name] = info
        if ep.name in disabled:
            info.disabled = True
            continue
        try:
            plugin = ep.load()
        except Exception as error:  # a broken plugin must not take the host down
            _fail(info, error)
            continue
        _add_plugin(pm, plugin, info, registries)
    for name, plugin in extra.items():
        if pm.is_registered(plugin):  # an installed plugin is already there under its entry-point name
            continue
        if name in registries.plugins:
            raise ValueError(f"cannot add plugin {name!r} in-process: an installed plugin has that name")
        _add_plugin(pm, plugin, PluginInfo(name), registries)
    return pm


class _Register:
    """The ``register`` callback a hook receives: ``register(name, obj, replace=False, **options)`` adds to one
    registry on behalf of one plugin. A name conflict is that plugin's failure; its other registrations go on."""

    def __init__(self, registry: Registry, info: PluginInfo):
        self._registry, self._info = registry, info

    def __call__(self, name: str, obj: Any, *, replace: bool = False, **options: Any) -> None:
        self._add(self._registry.add, name, obj, replace, options)

    def _add(self, add: Callable[..., None], name: str, obj: Any, replace: bool, options: dict[str, Any]) -> None:
        try:
            add(name, obj, plugin=self._info.name, version=self._info.version, builtin=self._info.builtin,
                replace=replace, **options)
        except NameConflictError as error:
            _fail(self._info, error)


class _ModelRegister(_Register):
    """``register_models``' callback, which also has ``register.family(prefix, builder, **options)``."""

    def family(self, prefix: str, builder: Callable[..., Any], *, replace: bool = False, **options: Any) -> None:
        self._add(self._registry.add_family, prefix, builder, replace, options)


def _call_each(pm: pluggy.PluginManager, hook_name: str, registries: Registries) -> None:
    """Call one hook plugin by plugin, built-ins first, so each registration records its plugin, built-in names are
    taken before any third-party plugin asks for them, and one failure stays local."""
    registry = getattr(registries, HOOK_REGISTRIES[hook_name])
    make_register = _ModelRegister if hook_name == "register_models" else _Register
    impls = sorted(getattr(pm.hook, hook_name).get_hookimpls(),
                   key=lambda impl: not registries.plugins[impl.plugin_name].builtin)
    for impl in impls:
        info = registries.plugins[impl.plugin_name]
        arguments = {"register": make_register(registry, info)}
        try:
            impl.function(**{name: arguments[name] for name in impl.argnames})
        except PluginError:
            raise
        except Exception as error:
            _fail(info, error)


def load_registries(extra: Mapping[str, object] = {}, *, entry_points: bool = True) -> Registries:
    """Fresh registries filled by the core, the installed plugins (unless ``entry_points=False``) and ``extra``."""
    regs = Registries()
    pm = make_plugin_manager(regs, extra, entry_points=entry_points)
    for hook_name in HOOK_REGISTRIES:
        _call_each(pm, hook_name, regs)
    return regs


_in_process: dict[str, object] = {}  # plugins added with register_plugin, by name


@functools.cache
def registries() -> Registries:
    """The process-wide registries, filled on first use (and again after register_plugin / unregister_plugin)."""
    return load_registries(_in_process)


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Add a plugin object (a module, or any object with hook implementations) to this process without installing
    it, e.g. in a notebook or a test; return its name. The registries are rebuilt on their next use."""
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    if name in _in_process:
        raise ValueError(f"a plugin named {name!r} is already registered in this process")
    _in_process[name] = plugin
    registries.cache_clear()
    return name


def unregister_plugin(name: str) -> None:
    """Undo :func:`register_plugin`."""
    del _in_process[name]
    registries.cache_clear()
