"""The ``weights_from`` callback: start a run from the weights of a trained model (a warm start).

``callbacks: [{name: weights_from, args: {source: REF}}]`` copies the whole state of the model ``REF`` (a zoo entry
``NAME[.TAG]``, ``hf-hub:ORG/REPO@REV`` or ``local-dir:PATH``, loaded and hash-verified as ``selfens_core.load``
does) into the run's model before its first step, then trains with the config's own optimizer and schedule, which
start fresh. What it is for: continuing a trained model with a new schedule (a second cosine cycle, a longer
budget split across machine sessions, a lower rate), fine-tuning a zoo entry on the data it was trained on. The
source must be the run's architecture with the same build arguments and trained on the run's data; anything else is
refused before a weight changes. It acts in ``prepare`` (a fresh run only, after every other component prepared, so
that what a component decided at initialisation, such as pruning masks, is the source's too); a resumed run takes
its weights from its checkpoint.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class WeightsFrom:
    """Load ``source``'s state dict into the run's model when the run starts fresh."""

    def __init__(self, source: str):
        if not isinstance(source, str) or not source.strip():
            raise ValueError("source must be a model reference (NAME[.TAG], hf-hub:ORG/REPO@REV, local-dir:PATH); "
                             f"got {source!r}")
        self.source = source

    def prepare(self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        from .zoo import load_for_run

        what = f"weights_from source {self.source!r}"
        trained = load_for_run(self.source, model.pretrained_cfg, what)
        mine, theirs = model.pretrained_cfg, trained.pretrained_cfg
        for key in ("architecture", "build_args"):
            if mine.get(key, {}) != theirs.get(key, {}):
                raise ValueError(f"{what} is {theirs.get('architecture')} with build_args "
                                 f"{theirs.get('build_args', {})}; this run builds {mine.get('architecture')} with "
                                 f"{mine.get('build_args', {})}: give model.name and model.args as the source was "
                                 "trained")
        wanted = {name: tensor.shape for name, tensor in model.state_dict().items()}
        given = {name: tensor.shape for name, tensor in trained.state_dict().items()}
        if wanted != given:  # the same builder, yet other tensors: e.g. another combiner with weights of its own
            differ = sorted(name for name in wanted.keys() | given.keys() if wanted.get(name) != given.get(name))
            raise ValueError(f"{what} does not have this run's parameters and buffers ({len(differ)} differ, e.g. "
                             f"{', '.join(differ[:3])}): train it with the same combiner and options")
        model.load_state_dict(trained.state_dict())
        print(f"weights_from: the run starts from the weights of {self.source}")
