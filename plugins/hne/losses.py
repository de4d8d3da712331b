"""HNE training objectives (paper, Section 3.2): L_I, L_H, co-distillation and hierarchical co-distillation."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from selfens_core.distillers import Distiller, co_distillation, member_cross_entropy, soft_cross_entropy

OBJECTIVES = ("li", "lh", "li+cd", "li+lhd")


class HierarchicalDistillation(Distiller):
    """y^b is the mean logits of the first 2^b members, y^E = y^B the whole ensemble.

    - ``li``: L_I = Σ_n CE(F_n, y), members trained independently;
    - ``lh``: L_H = Σ_b CE(y^b, y), the sub-ensembles trained on the labels (a weaker baseline in the paper);
    - ``li+cd``: (1−α)·L_I + α·Σ_n KL_T(y^E ‖ F_n), standard co-distillation of every member from the ensemble
      (the core's :func:`~selfens_core.distillers.co_distillation`, which the ``co_distillation`` distiller computes);
    - ``li+lhd``: (1−α)·L_I + α·Σ_{b<B} KL_T(y^E ‖ y^b), hierarchical co-distillation (default, α = 0.5, T = 2).

    Targets are detached and the KL terms carry a T² factor, as in ONE / collaborative learning [our choice].
    """

    def __init__(self, objective: str = "li+lhd", alpha: float = 0.5, temperature: float = 2.0):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown HNE objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if not 0.0 <= alpha <= 1.0 or temperature <= 0:
            raise ValueError(f"need 0 <= alpha <= 1 and temperature > 0, got alpha={alpha}, temperature={temperature}")
        self.objective, self.alpha, self.temperature = objective, alpha, temperature

    def forward(self, outputs, targets, *, inputs=None, model=None) -> dict[str, torch.Tensor]:
        levels = int(math.log2(outputs.shape[0]))
        sub_ensembles = [outputs[: 2**b].mean(0) for b in range(levels + 1)]
        ensemble = sub_ensembles[-1]
        if self.objective == "lh":
            return {"lh": sum(F.cross_entropy(y.float(), targets) for y in sub_ensembles)}
        if self.objective == "li":
            return {"li": member_cross_entropy(outputs, targets)}
        if self.objective == "li+cd":
            independent, distill = co_distillation(outputs, targets, self.temperature)
        else:
            independent = member_cross_entropy(outputs, targets)
            distill = sum((soft_cross_entropy(y, ensemble, self.temperature) for y in sub_ensembles[:-1]),
                          outputs.new_zeros(()))
        name = self.objective.split("+")[1]
        return {"li": (1 - self.alpha) * independent, name: self.alpha * distill}
