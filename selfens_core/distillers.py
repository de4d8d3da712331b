"""Distillers: the training objective, member outputs → named loss terms (summed by the engine)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class Distiller(nn.Module):
    """Base class. ``forward(outputs, targets, inputs=..., model=...)`` returns ``{term name: scalar loss}``.

    ``outputs`` are member logits (M, B, C). A distiller may own parameters (e.g. discriminators); they are
    optimised with the model in their own parameter group (``distiller.lr``, default: the model's), and saved in the
    run's checkpoints. Frozen helpers (e.g. teacher networks) are kept out of the distiller's ``state_dict`` and
    ``parameters()``, so they are neither trained nor checkpointed.

    The engine calls :meth:`attach` once, after the model is built and before the optimizer is made, and
    :meth:`describe` once, when training ends.
    """

    def attach(self, model: nn.Module) -> None:
        """Called once with the model to train (on the CPU, its ``pretrained_cfg`` holding the dataset's
        ``num_classes``, ``in_chans``, ``input_size``, ``mean`` and ``std``) before the optimizer is made: register
        forward hooks on it, check it, and build parameters sized from its features. A ``ValueError`` is reported as a
        configuration error of the distiller. The default does nothing."""

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts about what the distiller used (e.g. teachers and their resolved revisions),
        recorded under ``"distiller"`` in the run's ``metrics.json``. The default records nothing."""
        return {}

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor, *, inputs: torch.Tensor | None = None,
                model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def member_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ_n CE(F_n, y): every member trained on the labels independently."""
    m, b, c = outputs.shape
    return F.cross_entropy(outputs.reshape(m * b, c).float(), targets.repeat(m), reduction="sum") / b


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T²·KL(softmax(target/T) ‖ softmax(logits/T)) against a detached target, averaged over the batch
    (the usual distillation scaling, so gradients keep their size across temperatures)."""
    log_p = F.log_softmax(logits.float() / temperature, -1)
    log_q = F.log_softmax(target_logits.detach().float() / temperature, -1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * temperature**2


def co_distillation(outputs: torch.Tensor, targets: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sums of co-distillation from the ensemble: (Σ_n CE(F_n, y), Σ_n T²·KL(q_E ‖ softmax(F_n / T))), where
    q_E = softmax(z_E / T) and z_E is the mean of the detached member logits. Every member learns from the labels and
    from the ensemble of all members; the target is detached, so no member is pulled towards itself through it."""
    ensemble = outputs.mean(0)
    distill = sum((soft_cross_entropy(member, ensemble, temperature) for member in outputs), outputs.new_zeros(()))
    return member_cross_entropy(outputs, targets), distill


class CoDistillation(Distiller):
    """Co-distillation from the ensemble: ``ce`` = Σ_n CE(F_n, y) and ``cd`` = weight · Σ_n T²·KL(q_E ‖
    softmax(F_n / T)), q_E = softmax(mean of the detached member logits / T) (:func:`co_distillation`). Defaults:
    T = 3, weight 1."""

    def __init__(self, temperature: float = 3.0, weight: float = 1.0):
        super().__init__()
        if not temperature > 0 or not weight >= 0:
            raise ValueError(f"need temperature > 0 and weight >= 0, got temperature={temperature}, weight={weight}")
        self.temperature, self.weight = temperature, weight

    def forward(self, outputs, targets, *, inputs=None, model=None):
        ce, distill = co_distillation(outputs, targets, self.temperature)
        return {"ce": ce, "cd": self.weight * distill}


class Independent(Distiller):
    """Each member trained alone on the labels, as in a deep ensemble: Σ_n CE(F_n, y)."""

    def forward(self, outputs, targets, *, inputs=None, model=None):
        return {"ce": member_cross_entropy(outputs, targets)}
