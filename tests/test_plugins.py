"""Discovery through the `selfens` entry-point group: built-ins register like any plugin, a broken one is contained."""
import importlib.metadata
import json
import pathlib
import re
import sys
import types

import pytest

import selfens_core
from selfens_core import hookspecs, plugins
from selfens_core.cli import main
from selfens_core.hookspecs import hookimpl
from selfens_core.registry import UnknownNameError


def test_builtin_methods_register_through_entry_points():
    names = {ep.name for ep in importlib.metadata.entry_points(group="selfens")}
    assert {"hne", "deep_ensemble"} <= names
    regs = plugins.registries()
    assert regs.models.resolve("hne-resnet-small")[0].plugin == "hne"
    assert regs.models.resolve("deep-ensemble-resnet18")[0].plugin == "deep_ensemble"
    assert regs.distillers.entry("independent").plugin == "selfens_core"
    assert {"mean_logits", "mean_probs"} <= set(regs.combiners.names())


def test_every_registration_records_its_plugin_version():
    regs = plugins.registries()
    version = importlib.metadata.version("selfens")
    hne, _ = regs.models.resolve("hne-resnet-small")
    assert (hne.version, hne.builtin) == (version, True)
    assert regs.combiners.entry("mean_logits").version == version
    assert regs.plugins["hne"].distribution == "selfens" and regs.plugins["selfens_core"].builtin


def _fake_entry_points(monkeypatch, *extra):
    real = importlib.metadata.entry_points(group="selfens")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [*real, *extra])


class _EntryPoint:
    def __init__(self, name, load, dist=None):
        self.name, self.load, self.dist = name, load, dist


def _broken_import():
    raise ImportError("No module named 'missing_dependency'")


def test_plugin_that_fails_to_import_warns_and_the_rest_works(monkeypatch):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")
    _fake_entry_points(monkeypatch, _EntryPoint("broken", _broken_import))
    regs = plugins.Registries()
    with pytest.warns(UserWarning, match="selfens plugin 'broken' failed: ImportError: No module named"):
        plugins.make_plugin_manager(regs)
    assert "broken" in regs.failures


def test_strict_mode_makes_a_broken_plugin_an_error(monkeypatch):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "1")
    _fake_entry_points(monkeypatch, _EntryPoint("broken", _broken_import))
    with pytest.raises(plugins.PluginError, match="'broken' failed"):
        plugins.make_plugin_manager(plugins.Registries())


def test_a_hook_that_raises_is_contained(monkeypatch):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")

    @hookimpl
    def register_combiners(register):
        raise RuntimeError("boom")

    bad = types.SimpleNamespace(register_combiners=register_combiners)
    _fake_entry_points(monkeypatch, _EntryPoint("raises", lambda: bad))
    plugins.registries.cache_clear()
    try:
        with pytest.warns(UserWarning, match="'raises' failed: RuntimeError: boom"):
            regs = plugins.registries()
        assert "hne-resnet-small" in regs.models.names()
    finally:
        plugins.registries.cache_clear()


def test_disable_plugins(monkeypatch):
    monkeypatch.setenv("SELFENS_DISABLE_PLUGINS", "deep_ensemble")
    regs = plugins.Registries()
    pm = plugins.make_plugin_manager(regs)
    assert pm.get_plugin("deep_ensemble") is None and pm.get_plugin("hne") is not None
    assert regs.plugins["deep_ensemble"].disabled and not regs.plugins["hne"].disabled


def test_core_names_no_method():
    """The engine's contracts are generic: methods live in plugins/ (design.md)."""
    core = pathlib.Path(plugins.__file__).parent
    pattern = re.compile(r"\b(hne|ienet|nfe|meal|supernet)\b", re.IGNORECASE)
    hits = [f"{p.name}:{i}" for p in core.glob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert not hits


def test_import_and_help_load_no_torch():
    """Registration is lazy: importing the package or asking the CLI for help loads no plugin and no torch."""
    import subprocess
    import sys

    code = ("import sys, selfens_core\nfrom selfens_core.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nloaded = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'pluggy', 'plugins')]\nassert not loaded, f'imported {loaded}'")
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)


class _EveryHook:
    """A third-party plugin implementing every hook once."""

    def __init__(self, zoo_dir):
        self.zoo_dir = zoo_dir

    @hookimpl
    def register_models(self, register):
        register("acme-net", dict)
        register.family("acme-", dict, examples=["acme-tiny"])

    @hookimpl
    def register_combiners(self, register):
        register("acme_combiner", dict)

    @hookimpl
    def register_distillers(self, register):
        register("acme_distiller", dict)

    @hookimpl
    def register_samplers(self, register):
        register("acme_sampler", dict)

    @hookimpl
    def register_backbone_adapters(self, register):
        register("acme_adapter", types.SimpleNamespace(family="acme", matches=lambda model: False, split=None))

    @hookimpl
    def register_zoo_sources(self, register):
        register("acme-zoo", self.zoo_dir)

    @hookimpl
    def register_optimizers(self, register):
        register("acme_optimizer", dict)

    @hookimpl
    def register_schedules(self, register):
        register("acme_schedule", dict)

    @hookimpl
    def register_callbacks(self, register):
        register("acme_callback", dict)


def test_every_hook_registers_into_its_registry(isolated_registries, tmp_path):
    regs = isolated_registries(acme=_EveryHook(tmp_path))
    assert regs.registered_by("acme") == {
        "models": ["acme-<name>", "acme-net"], "combiners": ["acme_combiner"], "distillers": ["acme_distiller"],
        "samplers": ["acme_sampler"], "backbone_adapters": ["acme_adapter"], "zoo_sources": ["acme-zoo"],
        "optimizers": ["acme_optimizer"], "schedules": ["acme_schedule"], "callbacks": ["acme_callback"]}
    assert regs.plugins["acme"].hooks == sorted(plugins.HOOK_REGISTRIES)
    entry = regs.combiners.entry("acme_combiner")
    assert (entry.plugin, entry.version, entry.builtin) == ("acme", None, False)  # in-process: no distribution
    assert "hne" not in regs.plugins  # isolated: the core and the given plugins only


def test_zoo_source_lands_in_the_process_registries(register_plugin, tmp_path):
    register_plugin(_EveryHook(tmp_path), name="acme")
    assert plugins.registries().zoo_sources.get("acme-zoo") == tmp_path
    assert "acme-net" in selfens_core.list_models("acme-*")


def test_register_plugin_is_undone(tmp_path):
    name = plugins.register_plugin(_EveryHook(tmp_path), name="acme")
    assert "acme_sampler" in plugins.registries().samplers
    plugins.unregister_plugin(name)
    assert "acme_sampler" not in plugins.registries().samplers and "acme" not in plugins.registries().plugins


def test_entry_point_plugins_record_their_distribution_version(monkeypatch, tmp_path):
    dist = types.SimpleNamespace(name="acme-selfens", version="1.2.3")
    _fake_entry_points(monkeypatch, _EntryPoint("acme", lambda: _EveryHook(tmp_path), dist))
    regs = plugins.load_registries()
    assert regs.samplers.entry("acme_sampler").version == "1.2.3"
    assert regs.models.resolve("acme-x")[0].version == "1.2.3"
    info = regs.plugins["acme"]
    assert (info.distribution, info.version, info.builtin) == ("acme-selfens", "1.2.3", False)


def test_two_distributions_with_one_plugin_name_are_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")
    first, second = (types.SimpleNamespace(name=f"acme-{n}", version="1.0") for n in ("one", "two"))
    _fake_entry_points(monkeypatch, _EntryPoint("acme", lambda: _EveryHook(tmp_path), first),
                       _EntryPoint("acme", lambda: _EveryHook(tmp_path), second))
    with pytest.warns(UserWarning, match="plugin name 'acme' is used by acme-one and by acme-two; only the first"):
        regs = plugins.load_registries()
    assert regs.plugins["acme"].distribution == "acme-one" and "acme_sampler" in regs.samplers


class _TakesBuiltinName:
    @hookimpl(tryfirst=True)  # asks to run first: built-ins still register before it
    def register_combiners(self, register):
        register("mean_probs", dict)
        register("acme_combiner", dict)


class _ReplacesBuiltinName:
    @hookimpl
    def register_combiners(self, register):
        register("mean_probs", dict, replace=True)


def test_builtin_names_are_reserved_unless_replaced(isolated_registries, monkeypatch):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")
    message = ("'acme' failed: NameConflictError: combiner 'mean_probs' from plugin 'acme' is already registered by "
               "plugin 'selfens_core'; it is built in: pass replace=True to replace it")
    with pytest.warns(UserWarning, match=message):
        regs = isolated_registries(acme=_TakesBuiltinName())
    assert regs.combiners.entry("mean_probs").plugin == "selfens_core"
    assert regs.combiners.entry("acme_combiner").plugin == "acme"  # its other registrations go on
    assert len(regs.failures["acme"]) == 1
    regs = isolated_registries(acme=_ReplacesBuiltinName())
    assert regs.combiners.get("mean_probs") is dict and not regs.failures


class _RegistersAcmeSampler:
    @hookimpl
    def register_samplers(self, register):
        register("acme", dict, replace=True)  # replace=True only ever replaces a built-in


def test_two_plugins_with_one_name_are_an_error_naming_both(isolated_registries):
    message = ("'second' failed: NameConflictError: sampler 'acme' from plugin 'second' is already registered by "
               "plugin 'first'")
    with pytest.raises(plugins.PluginError, match=message):
        isolated_registries(first=_RegistersAcmeSampler(), second=_RegistersAcmeSampler())


class _MisnamedHook:
    @hookimpl
    def register_combiner(self, register):  # typo: the hook is register_combiners
        register("acme_combiner", dict)

    @hookimpl(optionalhook=True)
    def register_things_of_a_newer_selfens(self, register):
        pass

    @hookimpl
    def register_samplers(self, register):
        register("acme_sampler", dict)


def test_unknown_hook_is_reported_and_the_rest_of_the_plugin_works(isolated_registries, monkeypatch):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")
    with pytest.warns(UserWarning, match=r"'typo' failed: PluginValidationError: Unknown hook 'register_combiner'. "
                                         r"Did you mean 'register_combiners'"):
        regs = isolated_registries(typo=_MisnamedHook())
    assert len(regs.failures["typo"]) == 1  # the optional hook is not reported
    assert "acme_sampler" in regs.samplers and "acme_combiner" not in regs.combiners


def test_unknown_hook_is_an_error_in_strict_mode(isolated_registries):
    with pytest.raises(plugins.PluginError, match="Unknown hook 'register_combiner'"):
        isolated_registries(typo=_MisnamedHook())


def test_plugins_command_lists_versions_hooks_registrations_and_failures(monkeypatch, capsys):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")
    dist = types.SimpleNamespace(name="broken-plugin", version="0.0.1")
    _fake_entry_points(monkeypatch, _EntryPoint("broken", _broken_import, dist))
    plugins.registries.cache_clear()
    try:
        with pytest.warns(UserWarning, match="'broken' failed"):
            main(["plugins", "--json"])
        report = {plugin["name"]: plugin for plugin in json.loads(capsys.readouterr().out)["plugins"]}
        main(["plugins"])
        text = capsys.readouterr().out
    finally:
        plugins.registries.cache_clear()
    hne = report["hne"]
    assert hne["version"] == importlib.metadata.version("selfens") and hne["builtin"]
    assert "register_models" in hne["hooks"] and "hne-resnet-small" in hne["registered"]["models"]
    assert report["broken"]["failures"] == ["selfens plugin 'broken' failed: ImportError: No module named "
                                            "'missing_dependency'"]
    assert "broken 0.0.1 (broken-plugin)\n  FAILED: selfens plugin 'broken' failed: ImportError" in text
    assert "hne 0.1.0 (selfens, built in)\n  hooks: register_distillers, register_models\n" in text


def test_plugins_command_shows_the_problems_that_belong_to_no_plugin(monkeypatch, capsys, fresh_registries):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")
    monkeypatch.setenv("SELFENS_DISABLE_PLUGINS", "deep-ensemble")
    with pytest.warns(UserWarning, match="'deep-ensemble' is no installed plugin"):
        main(["plugins", "--json"])
    report = json.loads(capsys.readouterr().out)
    main(["plugins"])
    text = capsys.readouterr().out
    (problem,) = report["problems"]
    assert problem.startswith("SELFENS_DISABLE_PLUGINS: 'deep-ensemble' is no installed plugin, so nothing was "
                              "disabled for it (did you mean 'deep_ensemble'?)")
    assert "deep_ensemble" in {plugin["name"] for plugin in report["plugins"]}
    assert f"\nPROBLEM: {problem}\n" in text


def test_plugins_command_in_strict_mode_stops_at_a_broken_plugin(monkeypatch):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "1")
    _fake_entry_points(monkeypatch, _EntryPoint("broken", _broken_import))
    plugins.registries.cache_clear()
    try:
        with pytest.raises(SystemExit, match="error: selfens plugin 'broken' failed: ImportError"):
            main(["plugins"])
    finally:
        plugins.registries.cache_clear()


HOOKS = sorted(name for name, func in vars(hookspecs).items() if hasattr(func, f"{hookspecs.PROJECT}_spec"))


def test_every_hook_fills_a_registry():
    assert HOOKS == sorted(plugins.HOOK_REGISTRIES)


def test_every_hook_is_documented_under_a_heading():
    doc = (pathlib.Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    assert [hook for hook in HOOKS if not re.search(rf"^#+ .*\b{hook}\b", doc, re.MULTILINE)] == []


def test_every_hook_is_implemented_by_a_test_plugin():
    tests = "".join(path.read_text() for path in pathlib.Path(__file__).parent.glob("test_*.py"))
    assert [hook for hook in HOOKS if not re.search(rf"def {hook}\(", tests)] == []


# --- Hardening (issue 10): the environment, hook implementations, what register takes, what is missing and why ---

@pytest.fixture
def fresh_registries():
    """The process registries rebuilt for one test (after it changed the environment or the entry points), and
    rebuilt again afterwards."""
    plugins.registries.cache_clear()
    yield plugins.registries
    plugins.registries.cache_clear()


@pytest.mark.parametrize("value", ["no", "off", "false", "0", "", " No ", "FALSE"])
def test_strict_mode_words_that_mean_off_give_warnings(monkeypatch, value):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", value)
    _fake_entry_points(monkeypatch, _EntryPoint("broken", _broken_import))
    assert plugins.strict_mode() is False
    with pytest.warns(UserWarning, match="'broken' failed: ImportError"):
        plugins.make_plugin_manager(plugins.Registries())


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "ON", " True "])
def test_strict_mode_words_that_mean_on_give_errors(monkeypatch, value):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", value)
    _fake_entry_points(monkeypatch, _EntryPoint("broken", _broken_import))
    assert plugins.strict_mode() is True
    with pytest.raises(plugins.PluginError, match="'broken' failed: ImportError"):
        plugins.make_plugin_manager(plugins.Registries())


def test_an_unrecognised_strict_value_is_an_error_naming_the_variable_and_the_words(monkeypatch, fresh_registries):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "ture")
    message = (r"SELFENS_STRICT_PLUGINS='ture' is not a boolean: set it to 1, true, yes, on for errors or to 0, "
               r"false, no, off \(or leave it empty\) for warnings")
    with pytest.raises(plugins.PluginError, match=message):
        plugins.load_registries(entry_points=False)  # no plugin fails: the value itself is the error
    with pytest.raises(SystemExit, match="error: " + message):
        main(["list"])


def test_disabling_an_unknown_plugin_names_the_close_match_and_the_plugins(monkeypatch):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")
    monkeypatch.setenv("SELFENS_DISABLE_PLUGINS", "deep-ensemble")
    regs = plugins.Registries()
    with pytest.warns(UserWarning, match=r"SELFENS_DISABLE_PLUGINS: 'deep-ensemble' is no installed plugin, so nothing "
                                         r"was disabled for it \(did you mean 'deep_ensemble'\?\)\. Plugins, by "
                                         r"entry-point name: deep_ensemble, hne, ienet, meal, nfe, supernet, zoo"):
        plugins.make_plugin_manager(regs)
    assert not regs.plugins["deep_ensemble"].disabled and len(regs.problems) == 1
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "1")
    with pytest.raises(plugins.PluginError, match="'deep-ensemble' is no installed plugin"):
        plugins.make_plugin_manager(plugins.Registries())


def test_disabling_a_distribution_name_names_its_entry_points(monkeypatch, tmp_path):
    dist = types.SimpleNamespace(name="acme-selfens", version="1.0")
    _fake_entry_points(monkeypatch, _EntryPoint("acme", lambda: _EveryHook(tmp_path), dist))
    monkeypatch.setenv("SELFENS_DISABLE_PLUGINS", "acme_selfens")
    with pytest.raises(plugins.PluginError, match=r"'acme_selfens' is the name of a distribution, not of a plugin, "
                                                  r"so nothing was disabled: its plugin\(s\) \(entry points\) are "
                                                  r"named 'acme'; name those"):
        plugins.make_plugin_manager(plugins.Registries())
    monkeypatch.setenv("SELFENS_DISABLE_PLUGINS", "acme, selfens_core")
    with pytest.raises(plugins.PluginError, match="'selfens_core' is the core, which cannot be disabled"):
        plugins.make_plugin_manager(plugins.Registries())
    monkeypatch.setenv("SELFENS_DISABLE_PLUGINS", " acme ")
    regs = plugins.Registries()
    assert plugins.make_plugin_manager(regs).get_plugin("acme") is None and regs.plugins["acme"].disabled


def register_models(register):  # named like the hook but not decorated: pluggy would never call it
    register("acme-undecorated", dict)


def test_a_hook_function_without_hookimpl_is_reported(isolated_registries, monkeypatch):
    module = types.ModuleType("acme_plugin")
    module.register_models, module.__file__ = register_models, "/site-packages/acme_plugin/__init__.py"
    with pytest.raises(plugins.PluginError, match=r"function register_models in plugin 'acme' \(module acme_plugin "
                                                  r"\(/site-packages/acme_plugin/__init__.py\)\) is not decorated "
                                                  r"with @hookimpl"):
        isolated_registries(acme=module)
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")

    class HalfDecorated(_RegistersAcmeSampler):
        def register_combiners(self, register):
            register("acme_combiner", dict)

    with pytest.warns(UserWarning, match="function register_combiners in plugin 'half' .* is not decorated"):
        regs = isolated_registries(half=HalfDecorated())
    assert "acme" in regs.samplers and "acme_combiner" not in regs.combiners and len(regs.failures["half"]) == 1


def test_a_plugin_module_that_implements_no_hook_is_reported(monkeypatch, tmp_path):
    """The bug this guards: a folder `zoo/` in the working directory shadowed the bundled zoo package, the entry
    point loaded that empty folder as a namespace package, and the zoo vanished without a word."""
    (tmp_path / "acme_shadowed").mkdir()  # a folder named like the plugin's package, no __init__.py
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_shadowed", raising=False)
    real = importlib.metadata.entry_points(group="selfens")
    shadowed = _EntryPoint("acme", lambda: importlib.import_module("acme_shadowed"))
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [*real, shadowed])
    try:
        with pytest.raises(plugins.PluginError, match=rf"plugin 'acme' implements no selfens hook: module "
                                                      rf"acme_shadowed \(a namespace package: folder "
                                                      rf"{re.escape(str(tmp_path / 'acme_shadowed'))}\) has no "
                                                      rf"@hookimpl function named register_models, .*shadows it"):
            plugins.make_plugin_manager(plugins.Registries())
    finally:
        sys.modules.pop("acme_shadowed", None)
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")
    empty = _EntryPoint("empty", lambda: types.ModuleType("empty"))
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [*real, empty])
    regs = plugins.Registries()
    with pytest.warns(UserWarning, match="'empty' implements no selfens hook"):
        plugins.make_plugin_manager(regs)
    assert regs.plugins["empty"].hooks == [] and regs.failures["empty"]


class _RegistersWrongly:
    """Every registration here is a mistake except the last of each hook."""

    @hookimpl
    def register_models(self, register):
        register("acme-instance", object())
        register("acme-typo", dict, descripton="typo")
        register.family("acme-", dict, examples=["other-x"])
        register("acme-net", dict, description="fine")

    @hookimpl
    def register_combiners(self, register):
        from selfens_core.combiners import MeanProbs

        register("acme_instance", MeanProbs())
        register("acme_args", MeanProbs, args={"temperature": 2})
        register("acme_fine", MeanProbs)

    @hookimpl
    def register_backbone_adapters(self, register):
        register("acme_class", type("AcmeAdapter", (), {"family": "acme", "matches": None, "split": None}))

    @hookimpl
    def register_zoo_sources(self, register):
        register("acme_missing", "/nonexistent/selfens-zoo")


def test_register_refuses_what_its_hook_does_not_take_naming_plugin_hook_and_what_it_takes(isolated_registries,
                                                                                            monkeypatch):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")
    with pytest.warns(UserWarning) as caught:
        regs = isolated_registries(acme=_RegistersWrongly())
    failures = [str(w.message).split(" (set SELFENS_STRICT_PLUGINS")[0] for w in caught]
    prefix = "selfens plugin 'acme' failed: TypeError: "
    assert failures == [prefix + message for message in [
        "register_models: register('acme-instance', ...) takes a model builder (a class or factory function, called "
        "as builder(*, num_classes, in_chans, **args)), not an instance of object: register the class itself "
        "(object), selfens instantiates it",
        "register_models: register('acme-typo', ...) got unknown keyword(s) 'descripton' (did you mean "
        "'description' for 'descripton'?); it accepts description, distiller, combiner, sampler, phases, callbacks, "
        "replace",
        "register_models: register.family('acme-', ...) takes examples=a list of names starting with 'acme-', not "
        "['other-x']",
        "register_combiners: register('acme_instance', ...) takes a Combiner class (a class or factory function, "
        "called as cls(**combiner.args)), not an instance of MeanProbs: register the class itself (MeanProbs), "
        "selfens instantiates it",
        "register_combiners: register('acme_args', ...) got unknown keyword(s) 'args'; it accepts replace",
        "register_backbone_adapters: register('acme_class', ...) takes a backbone adapter instance, not the class "
        "AcmeAdapter: register an instance (AcmeAdapter(...))",
        "register_zoo_sources: register('acme_missing', ...) takes an existing directory of zoo entries; "
        "/nonexistent/selfens-zoo is not a directory",
    ]]
    assert regs.registered_by("acme") == {"models": ["acme-net"], "combiners": ["acme_fine"]}
    with pytest.raises(plugins.PluginError, match="takes a model builder"):  # strict: the first one is an error
        monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "1")
        isolated_registries(acme=_RegistersWrongly())


@pytest.mark.parametrize(("hook", "base"), [("register_distillers", "Distiller"), ("register_samplers", "Sampler")])
def test_register_refuses_an_instance_for_distillers_and_samplers(isolated_registries, hook, base):
    cls = getattr(selfens_core, base)
    plugin = types.SimpleNamespace(**{hook: hookimpl(lambda register: register("acme", cls()))})
    with pytest.raises(plugins.PluginError, match=rf"{hook}: register\('acme', ...\) takes a {base} class .*not an "
                                                  rf"instance of {base}: register the class itself \({base}\)"):
        isolated_registries(acme=plugin)


@pytest.mark.parametrize(("hook", "takes"), [
    ("register_optimizers", r"an optimizer class or factory \(a class or factory function, called as "
                            r"factory\(param_groups, lr=\.\.\., \*\*train\.optimizer_args\)\)"),
    ("register_schedules", r"a schedule class \(a class or factory function, called as "
                           r"cls\(\*\*train\.schedule_args\)\)"),
    ("register_callbacks", r"a callback class \(a class or factory function, called as cls\(\*\*args\)\)"),
])
def test_register_refuses_an_instance_for_optimizers_schedules_and_callbacks(isolated_registries, hook, takes):
    class Acme:
        pass

    plugin = types.SimpleNamespace(**{hook: hookimpl(lambda register: register("acme", Acme()))})
    with pytest.raises(plugins.PluginError, match=rf"{hook}: register\('acme', ...\) takes {takes}, not an instance "
                                                  r"of .*Acme: register the class itself"):
        isolated_registries(acme=plugin)


def test_register_plugin_refuses_a_class():
    with pytest.raises(TypeError, match=r"a module or an instance, not the class _EveryHook: pass _EveryHook\(\)"):
        plugins.register_plugin(_EveryHook, name="acme")
    assert "acme" not in plugins._in_process


def test_unknown_names_say_which_plugins_are_disabled_or_failed(monkeypatch, fresh_registries):
    from selfens_core.factory import build_component

    monkeypatch.setenv("SELFENS_DISABLE_PLUGINS", "meal")
    with pytest.raises(UnknownNameError, match=r"Unknown distiller 'meal'\. .* Not loaded, and may provide it: "
                                               r"plugin 'meal' is disabled by SELFENS_DISABLE_PLUGINS\."):
        build_component("distillers", "meal")
    monkeypatch.delenv("SELFENS_DISABLE_PLUGINS")
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")
    _fake_entry_points(monkeypatch, _EntryPoint("broken", _broken_import))
    fresh_registries.cache_clear()
    with pytest.warns(UserWarning, match="'broken' failed"):
        regs = fresh_registries()
    with pytest.raises(UnknownNameError, match=r"Unknown model 'acme-net'\. .* Not loaded, and may provide it: "
                                               r"plugin 'broken' failed to load: ImportError: No module named "
                                               r"'missing_dependency'\."):
        selfens_core.create("acme-net", num_classes=3)
    assert regs.samplers.unavailable == ["plugin 'broken' failed to load: ImportError: No module named "
                                         "'missing_dependency'"]


def test_a_plugin_failing_in_one_hook_is_named_only_for_that_registry(isolated_registries, monkeypatch):
    monkeypatch.setenv("SELFENS_STRICT_PLUGINS", "0")

    class Raises(_RegistersAcmeSampler):
        @hookimpl
        def register_combiners(self, register):
            raise RuntimeError("boom")

    with pytest.warns(UserWarning, match="boom"):
        regs = isolated_registries(acme=Raises())
    assert regs.combiners.unavailable == ["plugin 'acme' failed: RuntimeError: boom"]
    assert regs.distillers.unavailable == [] and regs.plugins["acme"].hooks  # it loaded; distillers are not its


def test_list_shows_families_with_a_truthful_pattern_and_names_they_build(capsys):
    main(["list"])
    out = capsys.readouterr().out
    assert "<name>" not in out  # no family builds "any name"
    assert ("  hne-<timm model name>: a timm model name that is_timm_model() accepts; e.g. hne-resnet18, "
            "hne-mobilenetv2_100, hne-efficientnet_b0 (plugin hne)\n") in out
    main(["list", "hne-resnet50"])  # no example, but the family builds it
    assert capsys.readouterr().out.splitlines()[:3] == [
        "hne-resnet50", "families (each builds its prefix + any name its rule accepts: more than the examples listed):",
        "  hne-<timm model name>: a timm model name that is_timm_model() accepts (plugin hne)"]
    main(["list", "*resnet18*"])
    out = capsys.readouterr().out
    assert "deep-ensemble-resnet18\nhne-resnet18\nienet-resnet18\nnfe-resnet18\nfamilies" in out
    assert "e.g. ienet-resnet18 (plugin ienet)" in out
    with pytest.raises(SystemExit, match="error: Unknown model 'hne-resnt50'. Did you mean"):
        main(["list", "hne-resnt50"])


def _is_acme(suffix):
    """A name from the ACME catalogue."""
    return suffix in ("a", "b")


class _AcmeFamily:
    @hookimpl
    def register_models(self, register):
        register.family("acme-", dict, accepts=_is_acme, examples=["acme-a"])
        register.family("any-", dict)


def test_a_family_without_suffix_words_is_described_by_its_accepts_function(isolated_registries):
    models = isolated_registries(acme=_AcmeFamily()).models
    assert models.describe_families() == [
        {"pattern": "acme-<name>", "accepts": "a name that _is_acme() accepts (A name from the ACME catalogue)",
         "examples": ["acme-a"], "plugin": "acme"},
        {"pattern": "any-<name>", "accepts": "any name", "examples": [], "plugin": "acme"}]
    assert [f["pattern"] for f in models.describe_families("acme-b")] == ["acme-<name>"]
    assert models.describe_families("acme-c") == [] and models.family("acme-b") == "acme-"


PLUGINS_DOC = pathlib.Path(__file__).parents[1] / "docs" / "plugins.md"
EXAMPLE_PLUGIN = pathlib.Path(__file__).parents[1] / "docs" / "examples" / "selfens-example-plugin"


def _python_blocks(path):
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.MULTILINE | re.DOTALL)


def _unbound_names(code):
    """Names a block reads but neither imports, defines, assigns nor gets from builtins (a missing import)."""
    import ast
    import builtins

    tree = ast.parse(code)
    bound, read = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
    return sorted(read - bound)


def test_docs_python_blocks_import_every_name_they_use_and_run(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))  # the tutorial's package, as a reader's checkout has it
    blocks = _python_blocks(PLUGINS_DOC)
    assert len(blocks) >= 6
    assert {i: _unbound_names(code) for i, code in enumerate(blocks)} == {i: [] for i in range(len(blocks))}
    namespaces = []
    try:
        for code in blocks:
            namespace = {"__name__": "docs_block", "__package__": "selfens_example_plugin"}  # relative imports resolve
            exec(compile(code, str(PLUGINS_DOC), "exec"), namespace)
            namespaces.append(namespace)
    finally:  # the tutorial's package was imported from the checkout: leave no trace for other tests
        for module in [m for m in sys.modules if m.split(".")[0] == "selfens_example_plugin"]:
            del sys.modules[module]
    defined = {k: v for ns in namespaces for k, v in ns.items()}
    import torch

    from selfens_core.samplers import plan_passes

    model = defined["multihead"](num_classes=3, in_chans=1, num_members=2, width=4).eval()
    logits = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 2, 3)
    assert defined["MedianProbs"]()(logits).sum(-1).allclose(torch.ones(2))
    passes = plan_passes(defined["SplitBatch"](), torch.randn(4, 1), torch.arange(4), num_members=2, epoch=0)
    assert [p.members for p in passes] == [(0,), (1,)] and [len(p.inputs) for p in passes] == [2, 2]


def test_docs_name_only_things_selfens_has():
    """Every dotted ``selfens_core.X.Y`` the plugin guide mentions exists."""
    missing = []
    for dotted in sorted(set(re.findall(r"\bselfens_core(?:\.\w+)+", PLUGINS_DOC.read_text()))):
        parts, obj = dotted.split("."), None
        for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            break
        if obj is None:
            missing.append(dotted)
    assert missing == []
