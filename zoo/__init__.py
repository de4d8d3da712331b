"""The selfens model zoo: one folder per pretrained entry (``<name>.<tag>/manifest.json`` plus, where small enough,
the bundled ``config.json``, ``model.safetensors`` and ``README.md``), registered as a zoo source like any plugin's."""
from pathlib import Path

from selfens_core.hookspecs import hookimpl


@hookimpl
def register_zoo_sources(register):
    register("selfens-zoo", Path(__file__).parent)
