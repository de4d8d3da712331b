"""The fission ensemble: one network's weights split among full-depth exits that share their early stages.

Exit 0 is the original network (stem → every stage → neck → classifier). Exit e ≥ 1 branches off it after stage
``branch_after[e-1]`` (1-based; 0: right after the stem) and owns copies of the stages after that point, its own neck
(the final BatchNorm of a WRN) and its own linear classifier. With the defaults, exit e branches after stage e: N = 2
copies stages 2–3 of a WRN after stage 1, N = 3 also copies stage 3 after stage 2 (the public code's layout). Every
copy starts as an exact copy of the template network, so the model holds N identical networks until it is
*fissioned*; fission (:meth:`FissionEnsemble.prepare`, which the engine calls once before training) prunes the
template at initialisation and deals each stage's kept weights out among that stage's copies, each to exactly one.
The union of all copies' weights is then exactly the pruned template network.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from selfens_core import SelfEnsemble
from selfens_core.backbones import BackboneParts
from selfens_core.metrics import count_flops, count_params

from .grouping import split_balanced
from .masks import add_masks, mask_of, masked_layers, set_mask, stored_weight
from .pruning import check_method, prune


class SinglePath(nn.Module):
    """One exit's path as a plain network, images → logits (B, C): what the pruning methods score."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], neck: nn.Module, classifier: nn.Module):
        super().__init__()
        self.stem, self.stages, self.neck, self.classifier = stem, nn.ModuleList(stages), neck, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.classifier(self.neck(x).mean((2, 3)))


def exit_routes(branch_after: Sequence[int], num_stages: int) -> tuple[tuple[int, ...], ...]:
    """``routes[e][s]``: which copy of stage ``s`` exit ``e`` runs. Copy 0 is the template's (exit 0 and every exit
    that has not branched yet); the exits that own a copy of stage ``s`` are numbered after it in exit order."""
    owners = [[0, *(e for e, b in enumerate(branch_after, 1) if b <= s)] for s in range(num_stages)]
    return tuple(tuple(owners[s].index(e) if e in owners[s] else 0 for s in range(num_stages))
                 for e in range(len(branch_after) + 1))


class FissionEnsemble(SelfEnsemble):
    """Network fission ensemble over a backbone split into stem, stages, neck and classifier.

    Pruned and grouped layers: every Conv2d of the stem and the stages, shortcut (downsample) 1×1 convolutions
    included. Their masks are buffers (see :mod:`.masks`): a masked weight is exactly zero in every forward and
    stays zero under any optimizer. BatchNorm layers are neither pruned nor split: each stage copy owns its own, as
    each exit owns its neck and its linear classifier, which stay dense (they are a small part of the weights, and the
    public code leaves them dense too). The buffer ``fissioned`` records that :meth:`prepare` ran; a model loaded from
    its weights file gets its masks and that flag back, so it is never pruned again.

    Until it is fissioned the model computes N identical copies of the dense template network (every exit gives
    the same logits): that is what ``selfens_core.create`` returns, and what a training loop other than the engine
    trains unless it calls ``model.prepare(model, batches)`` first.
    """

    def __init__(self, parts: BackboneParts, *, num_members: int, num_classes: int, in_chans: int,
                 branch_after: Sequence[int] | None = None, pruning: str = "snip", sparsity: float = 0.5):
        super().__init__(num_members=num_members, num_classes=num_classes, in_chans=in_chans, input_size=(32, 32),
                         min_input_size=16)
        check_method(pruning, sparsity)
        num_stages = len(parts.stages)
        branch_after = list(range(1, self.num_members)) if branch_after is None else list(branch_after)
        if len(branch_after) != self.num_members - 1:
            raise ValueError(f"{self.num_members} exits need {self.num_members - 1} branch points (branch_after), "
                             f"got {branch_after}")
        bad = [b for b in branch_after if not (isinstance(b, int) and 0 <= b < num_stages)]
        if bad:
            hint = (f"; by default exit e branches after stage e, so at most {num_stages} exits"
                    if self.num_members > num_stages else "")
            raise ValueError(f"branch_after holds stage numbers in [0, {num_stages - 1}] (the backbone has "
                             f"{num_stages} stages; 0: after the stem, the exit then copies every stage), got "
                             f"{branch_after}{hint}")
        self.pruning, self.sparsity, self.branch_after = pruning, float(sparsity), tuple(branch_after)
        self.routes = exit_routes(branch_after, num_stages)
        add_masks(parts.stem)
        for stage in parts.stages:
            add_masks(stage)
        self.stem = parts.stem
        self.stages = nn.ModuleList(
            nn.ModuleList([stage, *(copy.deepcopy(stage) for _ in range(max(r[s] for r in self.routes)))])
            for s, stage in enumerate(parts.stages))
        self.necks = nn.ModuleList([parts.neck, *(copy.deepcopy(parts.neck) for _ in range(self.num_members - 1))])
        self.classifiers = nn.ModuleList([parts.classifier, *(copy.deepcopy(parts.classifier)
                                                             for _ in range(self.num_members - 1))])
        self.register_buffer("fissioned", torch.tensor(False))

    # ------------------------------------------------------------------ forward

    def _pooled(self, x: torch.Tensor, exits: Sequence[int]) -> list[torch.Tensor]:
        """The pooled features (B, d) of ``exits``, each shared stage copy computed once."""
        outputs, previous = {0: self.stem(x)}, [0] * len(exits)
        for s, copies in enumerate(self.stages):
            route = [self.routes[e][s] for e in exits]
            computed: dict[int, torch.Tensor] = {}
            for i, c in enumerate(route):
                if c not in computed:
                    computed[c] = copies[c](outputs[previous[i]])
            outputs, previous = computed, route
        return [self.necks[e](outputs[previous[i]]).mean((2, 3)) for i, e in enumerate(exits)]

    def _logits(self, x: torch.Tensor, exits: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = self._pooled(x, exits)
        return torch.stack([self.classifiers[e](f) for e, f in zip(exits, features)]), features

    def forward_members(self, x: torch.Tensor, members: int) -> torch.Tensor:
        return self._logits(x, range(members))[0]

    def forward_subset(self, x: torch.Tensor, indices: tuple[int, ...]) -> torch.Tensor:
        """Only the listed exits' paths run."""
        return self._logits(x, indices)[0]

    def forward_features(self, x: torch.Tensor, members: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self._logits(x, range(members))

    # ------------------------------------------------------------------ structure

    def _used(self, exits: Iterable[int]) -> list[nn.Module]:
        """The modules that ``exits`` run, each once."""
        exits = list(exits)
        copies = [self.stages[s][c] for s in range(len(self.stages))
                  for c in sorted({self.routes[e][s] for e in exits})]
        return [self.stem, *copies, *(self.necks[e] for e in exits), *(self.classifiers[e] for e in exits)]

    def parameter_groups(self) -> dict[str, list[str]]:
        """Adds ``member<e>``: every parameter on exit ``e``'s path (shared stages included, so the groups
        overlap), e.g. ``trains: [member1]`` fine-tunes exit 1 alone."""
        groups = super().parameter_groups()
        name_of = {id(p): n for n, p in self.named_parameters()}
        for e in range(self.num_members):
            groups[f"member{e}"] = [name_of[id(p)] for m in self._used([e]) for p in m.parameters()]
        return groups

    def single_network(self) -> SinglePath:
        """Exit 0's path as a plain network sharing this model's modules: before fission, the dense template."""
        return SinglePath(self.stem, [copies[0] for copies in self.stages], self.necks[0], self.classifiers[0])

    # ------------------------------------------------------------------ fission

    def prepare(self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fission, once, before training (the engine calls it on a fresh run with the training batches on the
        model's device): prune the template at initialisation with ``pruning`` at ``sparsity`` (scored on a copy of
        exit 0's path, the dense network), then deal each stage's kept weights among its copies, balanced and at
        random, each to exactly one; masked weights are zeroed. Nothing happens if the model is fissioned already
        (e.g. loaded from a trained run). ``model`` is this model (the engine's prepare contract)."""
        if bool(self.fissioned):
            return
        self._check_unfissioned_copies()
        if self.sparsity > 0:
            scored = copy.deepcopy(self.single_network())
            keep = prune(self.pruning, scored, list(masked_layers(scored)), batches, self.sparsity)
        else:
            keep = [torch.ones_like(mask_of(layer)) for layer in masked_layers(self.single_network())]
        keep = iter(keep)
        for layer in masked_layers(self.stem):
            set_mask(layer, next(keep))
        for copies in self.stages:
            per_copy = [list(masked_layers(c)) for c in copies]
            for position in range(len(per_copy[0])):
                for layers, part in zip(per_copy, split_balanced(next(keep), len(copies))):
                    set_mask(layers[position], part)
        self.fissioned.fill_(True)

    def _check_unfissioned_copies(self) -> None:
        """Fission splits the template's weights, so every copy of a stage must still be the template."""
        for s, copies in enumerate(self.stages):
            template = list(masked_layers(copies[0]))
            for c, other in enumerate(copies[1:], 1):
                if not all(torch.equal(stored_weight(a), stored_weight(b))
                           for a, b in zip(template, masked_layers(other))):
                    raise RuntimeError(f"cannot fission: copy {c} of stage {s + 1} differs from the template (was the "
                                       "model trained before prepare?); fission needs a freshly built model")

    # ------------------------------------------------------------------ cost

    @torch.no_grad()
    def effective_cost(self, members: int) -> dict[str, int]:
        """FLOPs per image (at ``pretrained_cfg["input_size"]``) and parameters of the first ``members`` exits,
        counting nonzero weights only: a masked conv's FLOPs are 2 · H_out · W_out per kept weight. Dense
        kernels do not run faster for it (see plugins/nfe/README.md)."""
        exits = range(self.member_count(members))
        used = self._used(exits)
        params = count_params(nn.ModuleList(used))  # a parameter shared by several exits counts once
        layers = [layer for module in used for layer in masked_layers(module)]
        pruned = {id(layer): int(mask_of(layer).numel() - mask_of(layer).sum()) for layer in layers}
        params -= sum(pruned.values())
        positions: dict[int, int] = {}
        hooks = [layer.register_forward_hook(
            lambda layer, _, out: positions.__setitem__(id(layer), out.shape[-1] * out.shape[-2]))
            for layer in layers]
        weight = next(self.parameters())
        example = torch.zeros(1, *self.pretrained_cfg["input_size"], device=weight.device, dtype=weight.dtype)
        was_training = self.training
        self.eval()
        try:
            flops = count_flops(self, example, members=len(exits))
        finally:
            self.train(was_training)
            for hook in hooks:
                hook.remove()
        flops -= sum(2 * positions[i] * n for i, n in pruned.items())
        return {"flops": int(flops), "params": int(params)}
