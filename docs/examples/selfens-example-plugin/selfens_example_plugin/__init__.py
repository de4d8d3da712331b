"""An example selfens plugin: the ``median_probs`` combiner and the ``example-multihead`` method.

selfens finds this module through the ``selfens`` entry point in ``pyproject.toml`` and calls the hook
implementations below the first time it needs its registries. The module itself imports nothing heavy, so
``import selfens_core`` and ``selfens --help`` stay fast with the plugin installed: torch code is imported inside
the hooks.
"""
from selfens_core.hookspecs import hookimpl


@hookimpl
def register_combiners(register):
    from .combiners import MedianProbs

    register("median_probs", MedianProbs)


@hookimpl
def register_models(register):
    from .model import multihead

    register("example-multihead", multihead, description="a CNN trunk shared by N linear heads",
             distiller="independent", combiner="median_probs", sampler="all")
