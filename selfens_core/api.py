"""The public entry points ``create`` and ``list_models``: registered models, untrained or from the zoo."""
from __future__ import annotations

from typing import Any

from .combiners import Combiner
from .ensemble import SelfEnsemble
from .factory import build_component, build_model
from .plugins import registries
from .zoo import list_pretrained, load


def list_models(pattern: str = "*", *, pretrained: bool = False) -> list[str]:
    """Sorted registered model names matching an fnmatch ``pattern``. Open families (``prefix<name>``) are
    represented by their examples; ``create`` accepts any member of a family. With ``pretrained``, the zoo's entries
    (``name.tag``) instead."""
    if pretrained:
        return list_pretrained(pattern)
    return registries().models.names(pattern)


def create(name: str, *, num_classes: int | None = None, in_chans: int | None = None,
           combiner: str | Combiner | None = None, pretrained: bool = False, **overrides: Any) -> SelfEnsemble:
    """Build an untrained self-ensemble by registered name, or with ``pretrained`` load the zoo entry ``name``.

    ``overrides`` are the builder's own arguments (e.g. ``num_members``); an unknown one is an error listing what the
    builder takes. ``combiner`` is a registered combiner name or instance (default: the model's own). A pretrained
    model is exactly the published one: ``num_classes``/``in_chans`` may be given only to check them, and builder
    arguments are refused rather than silently re-initialising a head.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"create() takes a model name (list_models() lists them), got {name!r}")
    if pretrained:
        return _create_pretrained(name, num_classes, in_chans, combiner, overrides)
    if num_classes is None:
        raise TypeError(f"create({name!r}) needs num_classes (or pretrained=True to load it from the zoo)")
    return build_model(name, num_classes=num_classes, in_chans=3 if in_chans is None else in_chans,
                       combiner=combiner, **overrides)


def _create_pretrained(name: str, num_classes: int | None, in_chans: int | None, combiner: str | Combiner | None,
                       overrides: dict[str, Any]) -> SelfEnsemble:
    if overrides:
        raise TypeError(f"create({name!r}, pretrained=True) takes no builder arguments ({', '.join(overrides)}): the "
                        "zoo entry's config.json fixes them; train a new model to change them")
    model = load(name)
    for key, wanted in (("num_classes", num_classes), ("in_chans", in_chans)):
        if wanted is not None and model.pretrained_cfg[key] != wanted:
            raise ValueError(f"zoo entry {name!r} has {key}={model.pretrained_cfg[key]}, not {wanted}; a pretrained "
                             "head is never re-initialised silently: fine-tune it, or create() an untrained model")
    if isinstance(combiner, str):
        combiner = build_component("combiners", combiner)
    if combiner is not None:
        model.combiner = combiner
    return model
