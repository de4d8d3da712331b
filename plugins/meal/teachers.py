"""Teachers: pretrained models from the zoo (or a Hub repo, or a local directory), frozen, in eval mode, checked
against the student's data; and the teachers' own averaged ensemble as a SelfEnsemble (the "true ensemble")."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfens_core import SelfEnsemble
from selfens_core.pretrained import check_same_data

from .taps import FeatureTaps


@dataclass
class Teacher:
    """One loaded teacher: its reference, the frozen model, and hooks on the stages it offers for each tap."""

    ref: str
    model: SelfEnsemble
    has_tap: list[bool] = field(default_factory=list)  # per intermediate tap
    taps: FeatureTaps | None = None

    def record(self) -> dict[str, Any]:
        """Provenance for metrics.json: what it is and where it came from (zoo entry, repo and resolved revision)."""
        cfg = self.model.pretrained_cfg
        origin = dict(cfg.get("origin") or {})
        record = {"ref": self.ref, "architecture": cfg.get("architecture"), "build_args": cfg.get("build_args"),
                  "num_members": self.model.num_members, "dataset": cfg.get("dataset"), **origin}
        sha = _weights_sha256(origin)
        if sha:
            record["weights_sha256"] = sha
        return record


def load_teacher(ref: str, student_cfg: dict[str, Any]) -> SelfEnsemble:
    """``selfens_core.load(ref)``, frozen and in eval mode; refused (``ValueError`` naming it) when it does not fit
    the student's data: number of classes, input channels, normalisation (mean/std) or class names."""
    from selfens_core.zoo import load_for_run

    if not isinstance(ref, str) or not ref:
        raise ValueError(f"teachers are zoo references (NAME[.TAG], hf-hub:ORG/REPO@REV, local-dir:PATH); got {ref!r}")
    model = load_for_run(ref, student_cfg, f"teacher {ref!r}", whose="the student's data")
    model.requires_grad_(False)
    return model.eval()


def _weights_sha256(origin: dict[str, Any]) -> str | None:
    """The sha256 of the teacher's weights where the origin has no commit to pin it: a local directory, or a zoo
    entry not yet pushed (its manifest holds the hash that loading verified)."""
    if origin.get("revision"):
        return None
    if "local_dir" in origin:
        from selfens_core.hub import sha256_file
        from selfens_core.pretrained import WEIGHTS_FILE

        path = Path(origin["local_dir"]) / WEIGHTS_FILE
        return sha256_file(path) if path.is_file() else None
    if "zoo" in origin:
        from selfens_core.zoo import resolve

        return resolve(origin["zoo"]).files.get("model.safetensors", {}).get("sha256")
    return None


class TeacherEnsemble(SelfEnsemble):
    """The teachers' averaged ensemble (MEAL's "true ensemble") as a self-ensemble: member ``k`` is teacher ``k``'s
    combined output (its log-probabilities), and the ``mean_probs`` combiner averages their probabilities. So
    ``evaluate`` gives its accuracy and FLOPs per number of teachers like any model."""

    def __init__(self, teachers: list[SelfEnsemble]):
        from selfens_core.combiners import MeanProbs

        first = teachers[0].pretrained_cfg
        super().__init__(num_members=len(teachers), num_classes=first["num_classes"], in_chans=first["in_chans"],
                         input_size=tuple(first["input_size"][1:]),
                         min_input_size=max(t.pretrained_cfg.get("min_input_size", 1) for t in teachers),
                         combiner=MeanProbs())
        self.teachers = nn.ModuleList(teachers)
        self.pretrained_cfg.update({k: first[k] for k in ("mean", "std", "class_names", "dataset") if k in first})

    @classmethod
    def load(cls, refs: list[str]) -> TeacherEnsemble:
        import selfens_core

        models = [selfens_core.load(ref) for ref in refs]
        for ref, model in zip(refs[1:], models[1:]):
            check_same_data(f"teacher {ref!r}", model.pretrained_cfg, models[0].pretrained_cfg,
                            whose=f"teacher {refs[0]!r}")
        return cls(models).eval()

    def forward_members(self, x: torch.Tensor, members: int) -> torch.Tensor:
        return torch.stack([t.predict(x).float().clamp_min(1e-12).log() for t in self.teachers[:members]])
