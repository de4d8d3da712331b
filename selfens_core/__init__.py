"""selfens: self-ensembles in PyTorch — several member networks in one model, trained together, combined at
inference.

>>> model = selfens_core.create(name, num_classes=10, in_chans=1)   # a name from list_models()
>>> probs = model.predict(images, members=4)   # (B, 10) from the first four members
>>> model = selfens_core.load("resnet10t.fmnist")   # pretrained, from the zoo (list_models(pretrained=True))

The public names are imported on first use, so ``import selfens_core`` and ``selfens --help`` stay fast.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Combiner": "combiners", "Distiller": "distillers", "Pass": "samplers", "Sampler": "samplers",
    "SelfEnsemble": "ensemble", "create": "api", "list_models": "api", "load": "zoo", "hookimpl": "hookspecs",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'selfens_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
