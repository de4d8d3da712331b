"""The MEAL objective: block-wise similarity to a teacher (random per iteration, or the teachers' average) plus one
adversarial discriminator per tap."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from selfens_core.distillers import Distiller, member_cross_entropy

from .discriminator import Discriminator, grad_reverse
from .taps import FeatureTaps, align, probe_sizes, stages, timm_networks
from .teachers import Teacher, load_teacher

SELECTIONS = ("random", "average")
LOSSES = ("ce", "l1", "l2")
POOLS = ("avg", "max")
ADVERSARIAL = ("alternating", "grl", "joint", "none")
MISSING_TAPS = ("error", "skip")
TAP_WEIGHTS = {1: [1.0], 3: [0.01, 0.05, 1.0], 5: [0.001, 0.01, 0.05, 0.1, 1.0]}  # the paper's γ
MIN_POSITIONS = 16  # default intermediate taps: the deepest stages whose output has at least 4×4 positions
STUDENT, TEACHER = 0, 1  # discriminator output columns


class MealDistiller(Distiller):
    """MEAL (Shen et al., AAAI 2019) and MEAL-V2's teacher averaging; see plugins/meal/README.md.

    Args (``distiller.args``):
        teachers: zoo references (``NAME[.TAG]``, ``hf-hub:ORG/REPO@REV``, ``local-dir:PATH``), loaded frozen, in eval
            mode; a self-ensemble teacher counts by its combined output.
        selection: ``random`` (one teacher per iteration, MEAL) or ``average`` (all teachers' probabilities averaged,
            MEAL-V2).
        taps: number of taps per side, the logits included (1: logits only).
        reductions: the stages tapped before the logits, by reduction (e.g. ``[4, 8]``: the stages whose output is
            1/4 and 1/8 of the input size) on student and teachers alike; default the deepest ``taps - 1`` student
            stages with at least 16 output positions.
        dims: aligned length of each intermediate tap; default its number of positions on the student.
        pool: alignment pooling, ``avg`` (default) or ``max``.
        loss: similarity, ``ce`` (soft cross-entropy, default), ``l1`` or ``l2`` between the tap distributions.
        weights: per-tap weights γ, the logits last; default [0.01, 0.05, 1] for 3 taps, [1] for 1, the paper's
            five for 5.
        adversarial: ``alternating`` (default), ``grl`` (gradient reversal), ``joint`` (the original code) or ``none``.
        adversarial_weight: β, the weight of the student's adversarial loss (the reversal scale for ``grl``).
        discriminator_lr: learning rate of the discriminators' parameter group (the original code's 1e-3).
        temperature: softens the logits tap (and the loss is scaled by T² for ``ce``); 1 in MEAL.
        label_weight: weight of an added cross-entropy on the labels; 0 in MEAL (which uses no labels).
        missing_taps: ``error`` (default) when a teacher lacks a tapped stage, or ``skip``: such a teacher only
            teaches the taps it has (e.g. a stacked-tree self-ensemble, which offers only its logits).
    """

    def __init__(self, teachers: list[str], selection: str = "random", taps: int = 3,
                 reductions: list[int] | None = None, dims: list[int] | None = None, pool: str = "avg",
                 loss: str = "ce", weights: list[float] | None = None, adversarial: str = "alternating",
                 adversarial_weight: float = 1.0, discriminator_lr: float = 1e-3, temperature: float = 1.0,
                 label_weight: float = 0.0, missing_taps: str = "error"):
        super().__init__()
        if isinstance(teachers, str) or not teachers or not all(isinstance(t, str) and t for t in teachers):
            raise ValueError(f"teachers must be a non-empty list of zoo references, got {teachers!r}")
        for name, value, allowed in (("selection", selection, SELECTIONS), ("pool", pool, POOLS),
                                     ("loss", loss, LOSSES), ("adversarial", adversarial, ADVERSARIAL),
                                     ("missing_taps", missing_taps, MISSING_TAPS)):
            if value not in allowed:
                raise ValueError(f"{name} is {value!r}; allowed: {', '.join(allowed)}")
        if not isinstance(taps, int) or taps < 1:
            raise ValueError(f"taps must be an int >= 1 (the logits count as one), got {taps!r}")
        for name, values in (("reductions", reductions), ("dims", dims)):
            if values is not None and (len(values) != taps - 1 or not all(isinstance(v, int) and v >= 1
                                                                          for v in values)):
                raise ValueError(f"{name} must list {taps - 1} positive int(s), one per tap before the logits "
                                 f"(taps={taps}), got {values!r}")
        if weights is None:
            if taps not in TAP_WEIGHTS:
                raise ValueError(f"no default weights for taps={taps}; give weights (one per tap, the logits last)")
            weights = TAP_WEIGHTS[taps]
        if len(weights) != taps:
            raise ValueError(f"weights must have one value per tap ({taps}), got {list(weights)}")
        if temperature <= 0 or adversarial_weight < 0 or label_weight < 0 or discriminator_lr <= 0:
            raise ValueError("need temperature > 0, discriminator_lr > 0, adversarial_weight >= 0, label_weight >= 0")
        self.teacher_refs = list(teachers)
        self.selection, self.taps, self.pool, self.loss, self.adversarial = selection, taps, pool, loss, adversarial
        self.requested_reductions = None if reductions is None else list(reductions)
        self.requested_dims = None if dims is None else list(dims)
        self.weights = [float(w) for w in weights]
        self.adversarial_weight, self.temperature, self.label_weight = adversarial_weight, temperature, label_weight
        self.missing_taps = missing_taps
        self.lr = discriminator_lr  # the engine gives the distiller's parameters their own group at this rate
        self.discriminators = nn.ModuleList()
        # Kept out of state_dict() and parameters(): a plain list, moved by _apply. Filled by attach().
        self._teachers: list[Teacher] = []
        self._student_taps: FeatureTaps | None = None
        self.reductions: list[int] = []
        self.dims: list[int] = []
        self.num_classes = 0

    # ------------------------------------------------------------------------------------------------ set-up

    @property
    def tap_names(self) -> list[str]:
        return [f"r{r}" for r in self.reductions] + ["logits"]

    @property
    def teachers(self) -> list[Teacher]:
        return list(self._teachers)

    def attach(self, model: nn.Module) -> None:
        """Load and check the teachers, hook the student's and teachers' tapped stages, build the discriminators."""
        self.release()
        cfg = model.pretrained_cfg
        self._teachers = [Teacher(ref, load_teacher(ref, cfg)) for ref in self.teacher_refs]
        self.num_classes = cfg["num_classes"]
        if self.taps > 1:
            self.reductions, sizes = self._student_stages(model)
            self.dims = self.requested_dims or [sizes[r][0] * sizes[r][1] for r in self.reductions]
            for teacher in self._teachers:
                self._hook_teacher(teacher)
        if self.adversarial != "none":
            self.discriminators = nn.ModuleList(Discriminator(d) for d in [*self.dims, cfg["num_classes"]])
            # a moving average per tap (nan: none yet), in the checkpoint so that a resumed run reports it whole
            self.register_buffer("discriminator_accuracy", torch.full((self.taps,), float("nan")))

    def _student_stages(self, model: nn.Module) -> tuple[list[int], dict[int, tuple[int, int]]]:
        name = model.pretrained_cfg.get("architecture", type(model).__name__)
        networks = timm_networks(model)
        if not networks:
            raise ValueError(f"taps={self.taps} asks for {self.taps - 1} tap(s) before the logits, but the student "
                             f"{name} offers only its logits (it holds no timm network with feature stages); use "
                             "taps: 1, or a timm-network student such as deep-ensemble-<timm name>")
        if len(networks) != getattr(model, "num_members", 1):
            raise ValueError(f"the student {name} holds {len(networks)} timm networks for {model.num_members} "
                             "members; intermediate taps need one network per member (use taps: 1)")
        sizes = probe_sizes(model, networks[0], tuple(model.pretrained_cfg["input_size"]))
        offered = ", ".join(f"r{r} ({h}x{w})" for r, (h, w) in sorted(sizes.items()))
        if self.requested_reductions is not None:
            missing = [r for r in self.requested_reductions if r not in sizes]
            if missing:
                raise ValueError(f"the student {name} has no stage at reduction(s) {missing}; it offers {offered}")
            reductions = self.requested_reductions
        else:
            large = [r for r, (h, w) in sorted(sizes.items()) if h * w >= MIN_POSITIONS]
            if len(large) < self.taps - 1:
                raise ValueError(f"taps={self.taps} needs {self.taps - 1} student stage(s) with at least "
                                 f"{MIN_POSITIONS} output positions; the student {name} offers {offered}: set "
                                 "reductions, or fewer taps")
            reductions = large[len(large) - (self.taps - 1):]
        modules = [[net.get_submodule(_stage_modules(net)[r]) for r in reductions] for net in networks]
        self._student_taps = FeatureTaps(modules, active=torch.is_grad_enabled)  # training passes only
        return list(reductions), sizes

    def _hook_teacher(self, teacher: Teacher) -> None:
        networks = timm_networks(teacher.model)
        per_network = [_stage_modules(net) for net in networks]
        teacher.has_tap = [bool(networks) and all(r in s for s in per_network) for r in self.reductions]
        if not all(teacher.has_tap) and self.missing_taps == "error":
            missing = [f"r{r}" for r, ok in zip(self.reductions, teacher.has_tap) if not ok]
            offers = (", ".join(f"r{r}" for r in sorted(per_network[0])) if networks
                      else "only its logits (it holds no timm network with feature stages)")
            raise ValueError(f"teacher {teacher.ref!r} ({teacher.model.pretrained_cfg.get('architecture')}) has no "
                             f"stage for tap(s) {', '.join(missing)}; it offers {offers}. Use the same taps on both "
                             "sides (taps, reductions), or missing_taps: skip to let it teach only the taps it has")
        if any(teacher.has_tap):
            modules = [[net.get_submodule(s[r]) if ok else None for r, ok in zip(self.reductions, teacher.has_tap)]
                       for net, s in zip(networks, per_network)]
            teacher.taps = FeatureTaps(modules, active=lambda: True)  # a teacher runs only inside forward()

    def release(self) -> None:
        """Remove every hook this distiller put on the student and the teachers."""
        if self._student_taps is not None:
            self._student_taps.remove()
        for teacher in self._teachers:
            if teacher.taps is not None:
                teacher.taps.remove()
        self._student_taps = None

    def _apply(self, fn, recurse=True):  # .to(device) / .float() also move the teachers, kept out of the children
        super()._apply(fn, recurse)
        for teacher in self._teachers:
            teacher.model._apply(fn, recurse)
        return self

    # ------------------------------------------------------------------------------------------------ the loss

    def forward(self, outputs, targets, *, inputs=None, model=None) -> dict[str, torch.Tensor]:
        if not self._teachers:
            raise RuntimeError("the MEAL distiller is not attached: call distiller.attach(model) first (the engine "
                               "does this when it builds a run)")
        if inputs is None:
            raise ValueError("the MEAL distiller needs the inputs (forward(..., inputs=images)) to run the teachers")
        student = self.student_representations(outputs)
        teacher = self.teacher_representations(inputs)
        terms = {}
        for name, weight, s, t in zip(self.tap_names, self.weights, student, teacher):
            terms[f"sim.{name}"] = weight * (self.similarity(s, t) if t is not None else s.new_zeros(()))
        if self.temperature != 1.0 and self.loss == "ce":
            terms["sim.logits"] = terms["sim.logits"] * self.temperature**2
        if self.label_weight:
            terms["ce"] = self.label_weight * member_cross_entropy(outputs, targets)
        if self.adversarial != "none":
            terms.update(self.adversarial_terms(student, teacher))
        return terms

    def student_representations(self, outputs: torch.Tensor) -> list[torch.Tensor]:
        """Per tap, the student's log-distribution (M, B, d): aligned stage outputs, then the logits (at T)."""
        reps = []
        if self.taps > 1:
            captured = self._student_taps.take()
            members = outputs.shape[0]
            if {n for n, _ in captured} != set(range(members)):
                raise RuntimeError(
                    f"MEAL's intermediate taps need each training pass to run the student's first members in grad mode "
                    f"(got {members} member outputs and stage features of networks {sorted({n for n, _ in captured})}"
                    "); use the 'all' sampler, or taps: 1")
            for j, dim in enumerate(self.dims):
                reps.append(torch.stack([F.log_softmax(align(captured[(n, j)], dim, self.pool), -1)
                                         for n in range(members)]))
        reps.append(F.log_softmax(outputs.float() / self.temperature, -1))
        return reps

    @torch.no_grad()
    def teacher_representations(self, inputs: torch.Tensor) -> list[torch.Tensor | None]:
        """Per tap, the teacher's log-distribution (B, d), or None where the chosen teacher(s) lack the tap: one
        teacher drawn uniformly (``random``) or the average of all teachers' distributions (``average``)."""
        if self.selection == "average":
            chosen = self._teachers
        else:
            chosen = [self._teachers[int(torch.randint(len(self._teachers), ()))]]
        per_teacher = [self._run_teacher(t, inputs) for t in chosen]
        reps: list[torch.Tensor | None] = []
        for j in range(self.taps):
            probs = [p[j] for p in per_teacher if p[j] is not None]
            reps.append(torch.stack(probs).mean(0).clamp_min(1e-12).log() if probs else None)
        if self.temperature != 1.0:
            reps[-1] = F.log_softmax(reps[-1] / self.temperature, -1)
        return reps

    def _run_teacher(self, teacher: Teacher, inputs: torch.Tensor) -> list[torch.Tensor | None]:
        """Per tap, the teacher's probabilities (B, d): a multi-network teacher averages its networks' tap
        distributions, as its combined output is the teacher's logits tap."""
        probs = [teacher.model.predict(inputs).float()]
        captured = teacher.taps.take() if teacher.taps is not None else {}
        taps = []
        for j, (dim, ok) in enumerate(zip(self.dims, teacher.has_tap)):
            features = [captured[key] for key in sorted(captured) if key[1] == j]
            taps.append(torch.stack([F.softmax(align(f, dim, self.pool), -1) for f in features]).mean(0)
                        if ok else None)
        return taps + probs

    def similarity(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Σ over members, mean over the batch, of the distance between distributions given as logs: soft
        cross-entropy −Σ p_T·log p_S, L1 Σ|p_S − p_T| or L2 Σ(p_S − p_T)²."""
        target = teacher.detach().exp()
        if self.loss == "ce":
            per_sample = -(target * student).sum(-1)
        elif self.loss == "l1":
            per_sample = (student.exp() - target).abs().sum(-1)
        else:
            per_sample = (student.exp() - target).square().sum(-1)
        return per_sample.mean(-1).sum(0)

    def adversarial_terms(self, student: list[torch.Tensor], teacher: list[torch.Tensor | None]
                          ) -> dict[str, torch.Tensor]:
        """``disc``: the discriminators' loss (student samples labelled student, teacher samples teacher);
        ``adv`` (``alternating``): the student's loss for being recognised as a student, through frozen copies of
        the discriminators. See plugins/meal/README.md for the sign of each mode."""
        disc = student[-1].new_zeros(())
        adv = student[-1].new_zeros(())
        beta = self.adversarial_weight
        for j, (s, t, discriminator) in enumerate(zip(student, teacher, self.discriminators)):
            if t is None:
                continue
            s = s.flatten(0, -2)  # every member's samples
            if self.adversarial == "alternating":
                s_logits = discriminator(s.detach())
                frozen = {k: v.detach() for k, v in discriminator.named_parameters()}
                fooled = torch.func.functional_call(discriminator, frozen, (s,))
                adv = adv + _bce(fooled, TEACHER)
            elif self.adversarial == "grl":
                s_logits = discriminator(grad_reverse(s, beta))
            else:
                s_logits = discriminator(s)
            t_logits = discriminator(t.detach())
            disc = disc + 0.5 * (_bce(s_logits, STUDENT) + _bce(t_logits, TEACHER))
            self._track_accuracy(j, s_logits.detach(), t_logits.detach())
        if self.adversarial == "alternating":
            return {"disc": disc, "adv": beta * adv}
        return {"disc": beta * disc if self.adversarial == "joint" else disc}

    @torch.no_grad()
    def _track_accuracy(self, j: int, s_logits: torch.Tensor, t_logits: torch.Tensor) -> None:
        acc = 0.5 * ((s_logits.argmax(-1) == STUDENT).float().mean() + (t_logits.argmax(-1) == TEACHER).float().mean())
        old = self.discriminator_accuracy[j]
        self.discriminator_accuracy[j] = torch.where(old.isnan(), acc, 0.98 * old + 0.02 * acc)

    def describe(self) -> dict[str, Any]:
        if not self._teachers:
            return {}
        record = {
            "method": "meal", "teachers": [t.record() for t in self._teachers], "selection": self.selection,
            "taps": self.tap_names, "dims": [*self.dims, self.num_classes], "pool": self.pool, "loss": self.loss,
            "weights": self.weights, "temperature": self.temperature, "label_weight": self.label_weight,
            "adversarial": self.adversarial,
        }
        if self.adversarial != "none":
            record.update(adversarial_weight=self.adversarial_weight, discriminator_lr=self.lr,
                          discriminator_accuracy={name: (None if math.isnan(a) else round(a, 4))
                                                  for name, a in zip(self.tap_names,
                                                                     self.discriminator_accuracy.tolist())})
        return record


def _stage_modules(network: nn.Module) -> dict[int, str]:
    return {s.reduction: s.module for s in stages(network)}


def _bce(logits: torch.Tensor, column: int) -> torch.Tensor:
    """Binary cross-entropy of the two discriminator outputs against the one-hot label ``column``."""
    target = torch.zeros_like(logits)
    target[:, column] = 1.0
    return F.binary_cross_entropy_with_logits(logits.float(), target)
