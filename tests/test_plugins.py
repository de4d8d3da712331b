"""Discovery through the `selfens` entry-point group: built-ins register like any plugin, a broken one is contained."""
import importlib.metadata
import types

import pytest

from selfens_core import plugins
from selfens_core.hookspecs import hookimpl


def test_builtin_methods_register_through_entry_points():
    names = {ep.name for ep in importlib.metadata.entry_points(group="selfens")}
    assert {"hne", "deep_ensemble"} <= names
    regs = plugins.registries()
    assert regs.models.resolve("hne-resnet-small")[0].plugin == "hne"
    assert regs.models.resolve("deep-ensemble-resnet18")[0].plugin == "deep_ensemble"
    assert regs.distillers.entry("independent").plugin == "selfens_core"
    assert regs.combiners.names() == ["mean_logits", "mean_probs"]


def _fake_entry_points(monkeypatch, *extra):
    real = importlib.metadata.entry_points(group="selfens")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [*real, *extra])


class _EntryPoint:
    def __init__(self, name, load):
        self.name, self.load = name, load


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
    pm = plugins.make_plugin_manager(plugins.Registries())
    assert pm.get_plugin("deep_ensemble") is None and pm.get_plugin("hne") is not None


def test_core_names_no_method():
    """The engine's contracts are generic: methods live in plugins/ (design.md)."""
    import pathlib
    import re

    core = pathlib.Path(plugins.__file__).parent
    pattern = re.compile(r"\b(hne|ienet|nfe|meal|supernet)\b", re.IGNORECASE)
    hits = [f"{p.name}:{i}" for p in core.glob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert not hits


def test_import_and_help_load_no_torch():
    """Registration is lazy: importing the package or asking the CLI for help must stay fast (no torch)."""
    import subprocess
    import sys

    code = "import sys, selfens_core, selfens_core.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
