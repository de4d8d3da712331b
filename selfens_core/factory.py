"""``create`` and ``list_models``: build any registered model by name."""
from __future__ import annotations

import inspect
from typing import Any

from .combiners import Combiner
from .ensemble import SelfEnsemble
from .plugins import registries


def list_models(pattern: str = "*", *, pretrained: bool = False) -> list[str]:
    """Sorted registered model names matching an fnmatch ``pattern``. Open families (``prefix<name>``) are
    represented by their examples; ``create`` accepts any member of a family. With ``pretrained``, the zoo's entries
    (``name.tag``) instead."""
    if pretrained:
        from .zoo import list_pretrained

        return list_pretrained(pattern)
    return registries().models.names(pattern)


def check_arguments(what: str, func: Any, kwargs: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    """Refuse keyword arguments ``func`` does not take, naming them and listing what it does take."""
    params = inspect.signature(func).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        shown = [n for n in allowed if n not in skip]
        raise TypeError(f"{what} got unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(shown)}")


def build_component(kind: str, name: str, options: dict[str, Any] | None = None) -> Any:
    """Instantiate a registered combiner / distiller / sampler by name with checked options."""
    registry = getattr(registries(), kind)
    cls = registry.get(name)
    options = dict(options or {})
    check_arguments(f"{registry.kind} {name!r}", cls, options)
    return cls(**options)


def recipe_defaults(name: str) -> dict[str, Any]:
    """The default distiller / combiner / sampler names a model's plugin registered for it."""
    entry, _ = registries().models.resolve(name)
    return {k: entry.options[k] for k in ("distiller", "combiner", "sampler") if k in entry.options}


def create(name: str, *, num_classes: int | None = None, in_chans: int | None = None,
           combiner: str | Combiner | None = None, pretrained: bool = False, **overrides: Any) -> SelfEnsemble:
    """Build an untrained self-ensemble by registered name, or with ``pretrained`` load the zoo entry ``name``.

    ``overrides`` are the builder's own arguments (e.g. ``num_members``); an unknown one is an error listing what the
    builder takes. ``combiner`` is a registered combiner name or instance (default: the model's own). A pretrained
    model is exactly the published one: ``num_classes``/``in_chans`` may be given only to check them, and builder
    arguments are refused rather than silently re-initialising a head.
    """
    if pretrained:
        return _create_pretrained(name, num_classes, in_chans, combiner, overrides)
    if num_classes is None:
        raise TypeError(f"create({name!r}) needs num_classes (or pretrained=True to load it from the zoo)")
    in_chans = 3 if in_chans is None else in_chans
    entry, suffix = registries().models.resolve(name)
    check_arguments(f"model {name!r}", entry.obj, overrides, skip=("num_classes", "in_chans"))
    args = (suffix,) if suffix is not None else ()
    model = entry.obj(*args, num_classes=num_classes, in_chans=in_chans, **overrides)
    combiner = combiner or entry.options.get("combiner")
    if isinstance(combiner, str):
        combiner = build_component("combiners", combiner)
    if combiner is not None:
        model.combiner = combiner
    model.pretrained_cfg.update(architecture=name, build_args=dict(overrides))
    return model


def _create_pretrained(name: str, num_classes: int | None, in_chans: int | None, combiner: str | Combiner | None,
                       overrides: dict[str, Any]) -> SelfEnsemble:
    from .zoo import load

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
