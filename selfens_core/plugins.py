"""Plugin discovery: the pluggy manager, entry-point loading and the registries it fills.

Plugins come from the ``selfens`` entry-point group, loaded one by one. A plugin that fails to import, implements no
hook, implements a hook selfens does not define, has a function named like a hook but not decorated with
``@hookimpl``, registers something its hook does not take (an instance where a class is expected, an unknown keyword),
registers a name another plugin holds, or whose hook raises is reported with a warning naming it, and everything else
keeps working. ``SELFENS_STRICT_PLUGINS`` (a boolean: 1/true/yes/on or 0/false/no/off/empty) turns such failures into
errors (the test suite runs strict); ``SELFENS_DISABLE_PLUGINS=a,b`` skips plugins by entry-point name, and a name that
is no plugin is reported. Built-in plugins (the core and the entry points of the ``selfens`` distribution itself)
register first, and their names are reserved.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.metadata
import inspect
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
STRICT_VARIABLE, DISABLE_VARIABLE = "SELFENS_STRICT_PLUGINS", "SELFENS_DISABLE_PLUGINS"
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")

HOOK_REGISTRIES = {  # each hook → the Registries field its registrations fill
    "register_models": "models",
    "register_combiners": "combiners",
    "register_distillers": "distillers",
    "register_samplers": "samplers",
    "register_backbone_adapters": "backbone_adapters",
    "register_zoo_sources": "zoo_sources",
    "register_optimizers": "optimizers",
    "register_schedules": "schedules",
    "register_callbacks": "callbacks",
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
    optimizers: Registry = field(default_factory=lambda: Registry("optimizer"))
    schedules: Registry = field(default_factory=lambda: Registry("schedule"))
    callbacks: Registry = field(default_factory=lambda: Registry("callback"))
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # failures that belong to no plugin (SELFENS_DISABLE_PLUGINS)

    @property
    def failures(self) -> dict[str, list[str]]:
        """Failure messages by plugin, for the plugins that had any."""
        return {name: info.failures for name, info in self.plugins.items() if info.failures}

    def registered_by(self, plugin: str) -> dict[str, list[str]]:
        """What one plugin registered, by registry (only registries it registered something in)."""
        found = {kind: getattr(self, kind).registered_by(plugin) for kind in HOOK_REGISTRIES.values()}
        return {kind: names for kind, names in found.items() if names}

    def report(self) -> dict[str, Any]:
        """What ``selfens plugins`` shows: ``plugins``, every plugin with its version, hooks, registrations and
        failures (the core, the other built-ins, then third-party plugins, each group by name), and ``problems``,
        the failures that belong to no plugin (a name in ``SELFENS_DISABLE_PLUGINS`` that is no plugin)."""
        order = sorted(self.plugins.values(), key=lambda p: (not p.builtin, p.name != CORE_PLUGIN, p.name))
        plugins = [{**dataclasses.asdict(info), "registered": self.registered_by(info.name)} for info in order]
        return {"plugins": plugins, "problems": list(self.problems)}


def strict_mode() -> bool:
    """Whether plugin (and zoo manifest) failures are errors: ``SELFENS_STRICT_PLUGINS`` read as a boolean, 1, true,
    yes or on for strict, 0, false, no, off or empty (or unset) for warnings, in any case. Any other value is a
    :class:`PluginError`: a typo must not pick a mode."""
    raw = os.environ.get(STRICT_VARIABLE, "")
    value = raw.strip().lower()
    if value in TRUE_WORDS or value in FALSE_WORDS:
        return value in TRUE_WORDS
    raise PluginError(f"{STRICT_VARIABLE}={raw!r} is not a boolean: set it to {', '.join(TRUE_WORDS)} for errors or "
                      f"to {', '.join(w for w in FALSE_WORDS if w)} (or leave it empty) for warnings")


def report(message: str, error: BaseException | None = None, *, stacklevel: int = 3) -> None:
    """A failure: a :class:`PluginError` in strict mode, else a warning saying how to make it one."""
    if strict_mode():
        raise PluginError(message) from error
    warnings.warn(message + f" (set {STRICT_VARIABLE}=1 to make this an error)", stacklevel=stacklevel)


def _fail(info: PluginInfo, error: BaseException) -> None:
    message = f"selfens plugin {info.name!r} failed: {type(error).__name__}: {error}"
    info.failures.append(message)
    report(message, error, stacklevel=4)


def _entry_point_info(ep: importlib.metadata.EntryPoint) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return PluginInfo(ep.name)
    builtin = _normalise(dist.name) == DISTRIBUTION
    return PluginInfo(ep.name, dist.name, dist.version, builtin=builtin)


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Hooks the plugin implements that selfens does not define (typos, or hooks of a newer selfens), except those
    marked ``@hookimpl(optionalhook=True)``."""
    return [caller.name for caller in pm.get_hookcallers(plugin) or [] if not caller.has_spec()
            and any(not impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin is plugin)]


def _where(plugin: object) -> str:
    """Where a plugin object comes from, for messages: a module's file (or a namespace package's folders), else its
    class."""
    if inspect.ismodule(plugin):
        path = getattr(plugin, "__file__", None)
        if path:
            return f"module {plugin.__name__} ({path})"
        folders = list(getattr(plugin, "__path__", []) or [])
        return f"module {plugin.__name__} (a namespace package: folder {', '.join(map(str, folders)) or '?'})"
    return f"{type(plugin).__module__}.{type(plugin).__qualname__} object"


def _undecorated_hooks(plugin: object, hooks: list[str]) -> list[str]:
    """Functions of the plugin named like a selfens hook that pluggy did not take as hook implementations: they lack
    ``@hookimpl`` (or carry another project's marker), so they would never be called."""
    return [name for name in HOOK_REGISTRIES
            if name not in hooks and callable(inspect.getattr_static(plugin, name, None))]


def _add_plugin(pm: pluggy.PluginManager, plugin: object, info: PluginInfo, registries: Registries) -> None:
    """Register one plugin object, recording its hooks. Its failures: hooks selfens does not define, functions named
    like a hook without ``@hookimpl``, and implementing no hook at all (the module is not the one meant: e.g. a
    folder in the working directory named like the plugin's package)."""
    registries.plugins[info.name] = info
    if inspect.isclass(plugin):
        _fail(info, TypeError(f"the plugin is the class {plugin.__qualname__}: register an instance "
                              f"({plugin.__qualname__}()) or a module"))
        return
    try:
        pm.register(plugin, name=info.name)
    except Exception as error:  # e.g. a hook implementation taking an argument its spec does not have
        _fail(info, error)
        return
    info.hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
    for hook in _unknown_hooks(pm, plugin):
        _fail(info, pluggy.PluginValidationError(plugin, unknown_message("hook", hook, sorted(HOOK_REGISTRIES))))
    undecorated = _undecorated_hooks(plugin, info.hooks)
    for hook in undecorated:
        _fail(info, pluggy.PluginValidationError(
            plugin, f"function {hook} in plugin {info.name!r} ({_where(plugin)}) is not decorated with @hookimpl "
                    "(from selfens_core.hookspecs import hookimpl), so selfens never calls it"))
    if not info.hooks and not undecorated:
        _fail(info, pluggy.PluginValidationError(
            plugin, f"plugin {info.name!r} implements no selfens hook: {_where(plugin)} has no @hookimpl function "
                    f"named {', '.join(HOOK_REGISTRIES)}. If that is not the plugin's module, a module or folder of "
                    "that name (e.g. in the working directory) shadows it"))


def _disabled_names(registries: Registries, entry_points: list[importlib.metadata.EntryPoint],
                    in_process: list[str]) -> set[str]:
    """The plugin names in ``SELFENS_DISABLE_PLUGINS``; a name that is no plugin (a typo, a distribution's name) or
    the core is reported, naming what exists."""
    names = {p.strip() for p in os.environ.get(DISABLE_VARIABLE, "").split(",") if p.strip()}
    plugins = sorted({ep.name for ep in entry_points} | set(in_process))
    by_distribution: dict[str, list[str]] = {}
    for ep in entry_points:
        dist = getattr(getattr(ep, "dist", None), "name", None)
        if dist:
            by_distribution.setdefault(_normalise(dist), []).append(ep.name)
    for name in sorted(names - set(plugins)):
        if name == CORE_PLUGIN:
            problem = f"{name!r} is the core, which cannot be disabled"
        elif _normalise(name) in by_distribution:
            provided = sorted(set(by_distribution[_normalise(name)]))
            problem = (f"{name!r} is the name of a distribution, not of a plugin, so nothing was disabled: its "
                       f"plugin(s) (entry points) are named {', '.join(map(repr, provided))}; name those")
        else:
            close = difflib.get_close_matches(name, plugins, n=2, cutoff=0.6)
            problem = (f"{name!r} is no installed plugin, so nothing was disabled for it" +
                       (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        message = f"{DISABLE_VARIABLE}: {problem}. Plugins, by entry-point name: {', '.join(plugins)}"
        registries.problems.append(message)
        report(message, stacklevel=4)
    return names


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def make_plugin_manager(registries: Registries, extra: Mapping[str, object] = {}, *,
                        entry_points: bool = True) -> pluggy.PluginManager:
    """A manager with the core's own components, every installed, non-disabled entry-point plugin (unless
    ``entry_points=False``) and the in-process plugins ``extra`` (name → module or object). Each plugin's
    :class:`PluginInfo` goes into ``registries.plugins``."""
    from . import __version__, core_plugin

    strict_mode()  # an unreadable SELFENS_STRICT_PLUGINS is an error now, not at the first failure
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    _add_plugin(pm, core_plugin, PluginInfo(CORE_PLUGIN, DISTRIBUTION, __version__, builtin=True), registries)
    found = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)) if entry_points else []
    disabled = _disabled_names(registries, found, list(extra)) if entry_points else set()
    for ep in found:
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
        if name in disabled:
            registries.plugins[name] = PluginInfo(name, disabled=True)
            continue
        _add_plugin(pm, plugin, PluginInfo(name), registries)
    return pm


def _describe(obj: Any) -> str:
    if inspect.isclass(obj):
        return f"the class {obj.__qualname__}"
    if inspect.isroutine(obj) or isinstance(obj, functools.partial):
        return f"the function {getattr(obj, '__qualname__', obj)!r}"
    return f"an instance of {type(obj).__qualname__}"


def _factory(kind: str, called_as: str) -> Callable[[Any], str | None]:
    """What a registry of classes (or factory functions) refuses: anything else, an instance above all."""

    def check(obj: Any) -> str | None:
        if inspect.isclass(obj) or inspect.isroutine(obj) or isinstance(obj, functools.partial):
            return None
        hint = (f": register the class itself ({type(obj).__qualname__}), selfens instantiates it"
                if not isinstance(obj, (str, int, float, bool, type(None))) else "")
        return f"takes {kind} (a class or factory function, called as {called_as}), not {_describe(obj)}{hint}"

    return check


def _adapter(obj: Any) -> str | None:
    if inspect.isclass(obj):
        return (f"takes a backbone adapter instance, not {_describe(obj)}: register an instance "
                f"({obj.__qualname__}(...))")
    missing = [a for a in ("family", "matches", "split") if not hasattr(obj, a)]
    if missing:
        return f"takes a BackboneAdapter (family, matches(), split()); {_describe(obj)} lacks {', '.join(missing)}"
    return None


def _directory(obj: Any) -> str | None:
    if not isinstance(obj, (str, os.PathLike)):
        return f"takes a directory (str or pathlib.Path), not {_describe(obj)}"
    if not os.path.isdir(obj):
        return f"takes an existing directory of zoo entries; {os.fspath(obj)} is not a directory"
    return None


MODEL_OPTIONS = ("description", "distiller", "combiner", "sampler", "phases", "callbacks")


@dataclass(frozen=True)
class _Expects:
    """What one hook's ``register`` callback takes: a check of the object and the keyword options."""

    check: Callable[[Any], str | None]
    options: tuple[str, ...] = ()


EXPECTS = {
    "register_models": _Expects(_factory("a model builder", "builder(*, num_classes, in_chans, **args)"),
                                MODEL_OPTIONS),
    "register_models.family": _Expects(_factory("a model builder", "builder(suffix, *, num_classes, in_chans, "
                                                "**args)"), ("accepts", "examples", "suffix", *MODEL_OPTIONS)),
    "register_combiners": _Expects(_factory("a Combiner class", "cls(**combiner.args)")),
    "register_distillers": _Expects(_factory("a Distiller class", "cls(**distiller.args)")),
    "register_samplers": _Expects(_factory("a Sampler class", "cls(**sampler.args)")),
    "register_backbone_adapters": _Expects(_adapter),
    "register_zoo_sources": _Expects(_directory),
    "register_optimizers": _Expects(_factory("an optimizer class or factory",
                                             "factory(param_groups, lr=..., **train.optimizer_args)")),
    "register_schedules": _Expects(_factory("a schedule class", "cls(**train.schedule_args)")),
    "register_callbacks": _Expects(_factory("a callback class", "cls(**args)")),
}


class _Register:
    """The ``register`` callback a hook receives: ``register(name, obj, replace=False, **options)`` adds to one
    registry on behalf of one plugin. A name conflict, or an object or option the hook does not take (see
    :data:`EXPECTS`), is that plugin's failure and that registration is not made; its other registrations go on."""

    def __init__(self, registry: Registry, info: PluginInfo, hook: str):
        self._registry, self._info, self._hook = registry, info, hook

    def __call__(self, name: str, obj: Any, *, replace: bool = False, **options: Any) -> None:
        self._add(self._registry.add, self._hook, name, obj, replace, options)

    def _add(self, add: Callable[..., None], hook: str, name: str, obj: Any, replace: bool,
             options: dict[str, Any]) -> None:
        problem = _check_registration(hook, name, obj, options)
        if problem:
            what = f"register.family({name!r}, ...)" if hook.endswith(".family") else f"register({name!r}, ...)"
            _fail(self._info, TypeError(f"{hook.split('.')[0]}: {what} {problem}"))
            return
        try:
            add(name, obj, plugin=self._info.name, version=self._info.version, builtin=self._info.builtin,
                replace=replace, **options)
        except NameConflictError as error:
            _fail(self._info, error)


def _check_registration(hook: str, name: Any, obj: Any, options: dict[str, Any]) -> str | None:
    """Why ``register(name, obj, **options)`` is refused for ``hook``, or None."""
    expects = EXPECTS[hook]
    if not isinstance(name, str) or not name:
        return f"needs a non-empty str name, not {name!r}"
    unknown = [k for k in options if k not in expects.options]
    if unknown:
        close = {k: difflib.get_close_matches(k, expects.options, n=1) for k in unknown}
        hints = "".join(f" (did you mean {c[0]!r} for {k!r}?)" for k, c in close.items() if c)
        return (f"got unknown keyword(s) {', '.join(map(repr, unknown))}{hints}; it accepts "
                f"{', '.join([*expects.options, 'replace'])}")
    if hook.endswith(".family"):
        if "accepts" in options and not callable(options["accepts"]):
            return f"takes accepts=a function of the suffix, not {_describe(options['accepts'])}"
        examples = options.get("examples", ())
        if isinstance(examples, str) or any(not str(e).startswith(name) for e in examples):
            return f"takes examples=a list of names starting with {name!r}, not {examples!r}"
    return expects.check(obj)


class _ModelRegister(_Register):
    """``register_models``' callback, which also has ``register.family(prefix, builder, **options)``."""

    def family(self, prefix: str, builder: Callable[..., Any], *, replace: bool = False, **options: Any) -> None:
        if not isinstance(options.get("examples", ()), (str, list, tuple)):  # e.g. a generator: checked, then kept
            options["examples"] = list(options["examples"])
        self._add(self._registry.add_family, "register_models.family", prefix, builder, replace, options)


def _unavailable(registries: Registries, hook: str) -> list[str]:
    """The plugins that may provide a name of ``hook``'s registry but are not (fully) loaded: disabled ones, ones
    that failed before their hooks were known, and ones that failed implementing ``hook`` (or a function named like
    it without ``@hookimpl``)."""
    notes = []
    for info in registries.plugins.values():
        if info.disabled:
            notes.append(f"plugin {info.name!r} is disabled by {DISABLE_VARIABLE}")
        elif info.failures and (not info.hooks or hook in info.hooks or any(hook in f for f in info.failures)):
            first = info.failures[0].removeprefix(f"selfens plugin {info.name!r} failed: ").splitlines()[0]
            notes.append(f"plugin {info.name!r} failed{' to load' if not info.hooks else ''}: {first}")
    return notes


def _call_each(pm: pluggy.PluginManager, hook_name: str, registries: Registries) -> None:
    """Call one hook plugin by plugin, built-ins first, so each registration records its plugin, built-in names are
    taken before any third-party plugin asks for them, and one failure stays local."""
    registry = getattr(registries, HOOK_REGISTRIES[hook_name])
    make_register = _ModelRegister if hook_name == "register_models" else _Register
    impls = sorted(getattr(pm.hook, hook_name).get_hookimpls(),
                   key=lambda impl: not registries.plugins[impl.plugin_name].builtin)
    for impl in impls:
        info = registries.plugins[impl.plugin_name]
        arguments = {"register": make_register(registry, info, hook_name)}
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
    for hook_name, kind in HOOK_REGISTRIES.items():  # unknown-name errors then say which plugins are missing
        getattr(regs, kind).unavailable = _unavailable(regs, hook_name)
    return regs


_in_process: dict[str, object] = {}  # plugins added with register_plugin, by name


@functools.cache
def registries() -> Registries:
    """The process-wide registries, filled on first use (and again after register_plugin / unregister_plugin)."""
    return load_registries(_in_process)


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Add a plugin object (a module, or any object with hook implementations) to this process without installing
    it, e.g. in a notebook or a test; return its name. The registries are rebuilt on their next use."""
    if inspect.isclass(plugin):
        raise TypeError(f"register_plugin takes a module or an instance, not the class {plugin.__qualname__}: pass "
                        f"{plugin.__qualname__}()")
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
