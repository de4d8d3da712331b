import os

os.environ.setdefault("SELFENS_STRICT_PLUGINS", "1")  # a plugin failure fails the tests instead of warning
pytest_plugins = ["selfens_core.testing"]  # fixtures: isolated_registries, register_plugin
