"""``train.init_from``: start a run from the weights of a trained model (a warm start).

``train.init_from: REF`` copies the whole state of the model ``REF`` (a zoo entry ``NAME[.TAG]``,
``hf-hub:ORG/REPO@REV`` or ``local-dir:PATH``, loaded and hash-verified as ``selfens_core.load`` does) into a fresh
run's model before its first step; the run then trains with the config's own optimizer and schedule, which start
fresh. What it is for: continuing a trained model with a new schedule (a second cosine cycle, a budget longer than
one machine session trained in stages), fine-tuning a zoo entry on the data it was trained on. The source must be the
run's architecture with the same build arguments, parameters and buffers, trained on the run's data; anything else is
refused before a weight changes. The engine copies after every component prepared (so that what a component decided
at initialisation, such as a pruning mask, is the source's too); a resumed run takes its weights from its checkpoint.
"""
from __future__ import annotations

from torch import nn

from .zoo import load_for_run


def copy_weights_from(model: nn.Module, source: str) -> None:
    """Load the state dict of the trained model ``source`` into ``model``, after checking that it fits."""
    what = f"train.init_from {source!r}"
    trained = load_for_run(source, model.pretrained_cfg, what)
    mine, theirs = model.pretrained_cfg, trained.pretrained_cfg
    for key in ("architecture", "build_args"):
        if mine.get(key, {}) != theirs.get(key, {}):
            raise ValueError(f"{what} is {theirs.get('architecture')} with build_args {theirs.get('build_args', {})}; "
                             f"this run builds {mine.get('architecture')} with {mine.get('build_args', {})}: give "
                             "model.name and model.args as the source was trained")
    wanted = {name: tensor.shape for name, tensor in model.state_dict().items()}
    given = {name: tensor.shape for name, tensor in trained.state_dict().items()}
    if wanted != given:  # the same builder, yet other tensors: e.g. another combiner with weights of its own
        differ = sorted(name for name in wanted.keys() | given.keys() if wanted.get(name) != given.get(name))
        raise ValueError(f"{what} does not have this run's parameters and buffers ({len(differ)} differ, e.g. "
                         f"{', '.join(differ[:3])}): train it with the same combiner and options")
    model.load_state_dict(trained.state_dict())
    print(f"train.init_from: the run starts from the weights of {source}")
