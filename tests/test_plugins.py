"""Discovery through the `selfens` entry-point group: built-ins register like any plugin, a broken one is contained."""
import importlib.metadata
import json
import pathlib
import re
import types

import pytest

import selfens_core
from selfens_core import hookspecs, plugins
from selfens_core.cli import main
from selfens_core.hookspecs import hookimpl


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
        register("acme_adapter", dict)

    @hookimpl
    def register_zoo_sources(self, register):
        register("acme-zoo", self.zoo_dir)


def test_every_hook_registers_into_its_registry(isolated_registries, tmp_path):
    regs = isolated_registries(acme=_EveryHook(tmp_path))
    assert regs.registered_by("acme") == {
        "models": ["acme-<name>", "acme-net"], "combiners": ["acme_combiner"], "distillers": ["acme_distiller"],
        "samplers": ["acme_sampler"], "backbone_adapters": ["acme_adapter"], "zoo_sources": ["acme-zoo"]}
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
        report = {plugin["name"]: plugin for plugin in json.loads(capsys.readouterr().out)}
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
