"""The one contract every method implements: a module whose forward returns member logits shaped (M, B, C)."""
from __future__ import annotations

import operator
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .allocator import keep_freed_memory
from .combiners import Combiner, MeanLogits


class NonFiniteInputError(ValueError):
    """A training batch holds NaN or infinite values; the model refused it before any module ran (a BatchNorm in
    training mode would have turned its running statistics, and every later prediction, into NaN)."""


class NonFiniteInputWarning(RuntimeWarning):
    """Images with NaN or infinite values reached a model in evaluation mode: their outputs are NaN (the other
    images of the batch are unaffected)."""


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name`` (a bool is refused: ``True`` is not a count)."""
    index = _as_index(value)
    if index is None or index < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return index


def _caller_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel (for a call made by this function's caller) of the first frame outside this
    module and ``torch.nn``'s call machinery: the user's ``model(x)`` or ``model.predict(x)`` line."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and (frame.f_globals.get("__name__") == __name__
                                        or frame.f_globals.get("__name__", "").startswith("torch.nn.modules")):
        frame, level = frame.f_back, level + 1
    return level


def _as_index(value: Any) -> int | None:
    """An int-like value (int, numpy integer, 0-d integer tensor) as an int; None for anything else, bools included
    (``True`` is an int to Python, but never a count)."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


@dataclass(frozen=True)
class MemberOutputs:
    """What the members of a self-ensemble return for one batch: their logits (M, B, C) and, when asked for
    (``model.outputs(x, features=True)``), their penultimate features, one (B, d_k) tensor per member (widths may
    differ between members). Combiners that declare ``consumes_features`` combine through both."""

    logits: torch.Tensor
    features: tuple[torch.Tensor, ...] | None = None

    def first(self, k: int) -> MemberOutputs:
        """The outputs of the first ``k`` members."""
        return MemberOutputs(self.logits[:k], None if self.features is None else self.features[:k])

    def detach(self) -> MemberOutputs:
        return MemberOutputs(self.logits.detach(),
                             None if self.features is None else tuple(f.detach() for f in self.features))


class SelfEnsemble(nn.Module, ABC):
    """Several member networks in one module, sharing parameters and computation.

    ``model(x, members=k)`` returns the logits of the first ``k`` members (all when ``None``), shaped (k, B, C), and
    computes only what those members need; ``model(x, members=(2, 0))`` returns the listed members. ``model.predict(x,
    members=k)`` combines them into class probabilities (B, C) through ``model.combiner`` (assigning a combiner binds
    it to this model's member and class counts). Subclasses implement :meth:`forward_members` and may override
    :meth:`forward_subset`, :meth:`forward_features` (penultimate features, for combiners that consume them),
    :meth:`parameter_groups` (named parameter groups a training phase can select) and :meth:`effective_cost` (a cost
    that FLOP counting of the dense modules does not see, such as pruned weights).

    Inputs are checked before any module runs (:meth:`check_input`): images (B, in_chans, H, W) of the parameters'
    floating dtype (any floating dtype under an active ``torch.autocast``). Non-finite values are refused in training
    mode (:class:`NonFiniteInputError`) and warned about in evaluation mode (:class:`NonFiniteInputWarning`; those
    images' outputs are NaN, the others' are unaffected). A batch of 0 images gives empty logits (M, 0, C) and
    ``predict`` empty probabilities (0, C) in evaluation mode, and is refused in training mode.
    """

    def __init__(self, *, num_members: int, num_classes: int, in_chans: int, input_size: tuple[int, int] = (32, 32),
                 min_input_size: int = 8, combiner: Combiner | None = None):
        super().__init__()
        keep_freed_memory()  # once per process: member-parallel activations are large (allocator.py)
        num_members = positive_int("num_members", num_members)
        num_classes, in_chans = positive_int("num_classes", num_classes), positive_int("in_chans", in_chans)
        self.num_members = num_members
        self.pretrained_cfg: dict[str, Any] = {
            "num_classes": num_classes,
            "in_chans": in_chans,
            "input_size": (in_chans, *input_size),
            "min_input_size": min_input_size,
            "mean": (0.5,) * in_chans,
            "std": (0.5,) * in_chans,
        }
        self.combiner = combiner if combiner is not None else MeanLogits()

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "combiner" and isinstance(value, Combiner):  # size it for this model (stacking: NC×C)
            value.bind(num_members=self.num_members, num_classes=self.num_classes)
        super().__setattr__(name, value)

    @property
    def num_classes(self) -> int:
        return self.pretrained_cfg["num_classes"]

    def budgets(self) -> list[int]:
        """Member counts worth evaluating (each a valid ``members`` argument), smallest first."""
        return list(range(1, self.num_members + 1))

    def member_count(self, members: int | None) -> int:
        """Validate a ``members`` argument and return how many members will run."""
        if members is None:
            return self.num_members
        count = _as_index(members)
        if count is None or not 1 <= count <= self.num_members:
            hint = " (a bool is not a member count)" if isinstance(members, bool) else ""
            raise ValueError(f"members must be an int in [1, {self.num_members}], a sequence of member indices or "
                             f"None, got {members!r}{hint}")
        return count

    def member_indices(self, members: Sequence[int]) -> tuple[int, ...]:
        """Validate an explicit list of member indices (distinct, each in [0, num_members))."""
        indices = tuple(_as_index(i) for i in members)
        bad = [i for i in indices if i is None or not 0 <= i < self.num_members]
        if not indices or bad or len(set(indices)) != len(indices):
            raise ValueError(f"member indices must be distinct ints in [0, {self.num_members - 1}], got {members!r}")
        return indices

    def parameter_dtype(self) -> torch.dtype | None:
        """The dtype of the first floating-point parameter: the input dtype the model takes outside autocast."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), None)

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse inputs the model cannot take, before any module runs, with a message that says what it expects:
        shape, channels, minimum size, dtype, and (in training mode) finite values and at least one image. In
        evaluation mode non-finite images are warned about (:class:`NonFiniteInputWarning`) and run."""
        in_chans, min_size = self.pretrained_cfg["in_chans"], self.pretrained_cfg["min_input_size"]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor of images shaped (B, {in_chans}, H, W), got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"expected a batch of images shaped (B, {in_chans}, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != in_chans:
            if x.shape[-1] == in_chans:
                hint = "the channels come last: pass x.permute(0, 3, 1, 2)"
            elif "origin" in self.pretrained_cfg:  # loaded pretrained: its stem is fixed
                hint = f"convert the images to {in_chans} channel(s)"
            else:
                hint = f"create the model with in_chans={x.shape[1]} or convert the images"
            raise ValueError(f"expected {in_chans} input channel(s), got {x.shape[1]} (input shape "
                             f"{tuple(x.shape)}); {hint}")
        if min(x.shape[-2:]) < min_size:
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} is smaller than this model's minimum {min_size}x{min_size}; "
                f"resize the images (the model was built for {self.pretrained_cfg['input_size'][1:]})"
            )
        self._check_dtype(x)
        if x.shape[0] == 0 and self.training:
            raise ValueError("a training batch of 0 images: nothing to train on (and no BatchNorm statistics); "
                             "drop empty batches before the model (evaluation mode returns empty outputs)")
        self._check_finite(x)

    def _check_dtype(self, x: torch.Tensor) -> None:
        wanted = self.parameter_dtype() or torch.get_default_dtype()
        if x.dtype == wanted:
            return
        if not x.is_floating_point():
            raise TypeError(
                f"expected floating-point images ({wanted}, the model's parameter dtype), got {x.dtype}; convert "
                f"8-bit images with x.float() / 255, then normalise them with model.pretrained_cfg['mean'] and "
                f"['std']: (x - mean) / std per channel"
            )
        if not torch.is_autocast_enabled(x.device.type):  # autocast casts inside each op: any float dtype works
            autocast = (f", run the model under torch.autocast('{x.device.type}', dtype={x.dtype})"
                        if x.dtype in (torch.float16, torch.bfloat16) else "")
            raise TypeError(f"the model's parameters are {wanted} but the images are {x.dtype}; pass "
                            f"x.to({wanted}){autocast} or convert the model with model.to({x.dtype})")

    def _check_finite(self, x: torch.Tensor) -> None:
        if bool(torch.isfinite(x).all()):  # one reduction (and one device sync): negligible next to a forward
            return
        bad_images = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
        values = int((~torch.isfinite(x)).sum())
        where = ", ".join(map(str, bad_images[:10])) + (", ..." if len(bad_images) > 10 else "")
        what = (f"{len(bad_images)} of {x.shape[0]} images contain non-finite values ({values} NaN/inf values; "
                f"batch positions {where})")
        if self.training:
            raise NonFiniteInputError(
                f"{what}: refused in training mode before any module ran (BatchNorm running statistics would "
                f"become NaN, and every later prediction with them); check the data and its normalisation "
                f"(a std of 0 divides by zero)")
        warnings.warn(f"{what}: their logits and probabilities are NaN; the other images are unaffected",
                      NonFiniteInputWarning, stacklevel=_caller_stacklevel())

    def forward(self, x: torch.Tensor, members: int | Sequence[int] | None = None) -> torch.Tensor:
        """Logits (M, B, C) of the first ``members`` members (all when ``None``), or of the listed member indices
        in that order (a sampler that trains members on different batches passes e.g. ``members=(2,)``)."""
        return self.outputs(x, members).logits

    def outputs(self, x: torch.Tensor, members: int | Sequence[int] | None = None, *,
                features: bool = False) -> MemberOutputs:
        """The members' logits, as :meth:`forward` returns them, and with ``features=True`` their penultimate
        features (:meth:`forward_features`). Inputs are checked (:meth:`check_input`) before any module runs."""
        indices = None
        if isinstance(members, Sequence) and not isinstance(members, (str, bytes)):
            indices = self.member_indices(members)
            count = len(indices)
        else:
            count = self.member_count(members)
        self.check_input(x)
        if features and not self.has_features:
            raise NotImplementedError(f"{type(self).__name__} does not expose its members' features (it does not "
                                      "implement forward_features); use a combiner that takes logits only")
        if x.shape[0] == 0:  # evaluation mode (check_input refuses it in training): empty in, empty out
            dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
            empty = x.new_zeros((count, 0, self.num_classes), dtype=dtype)
            return MemberOutputs(empty, self._empty_features(x, count, indices) if features else None)
        if features:
            return MemberOutputs(*self._features(x, count, indices))
        if indices is not None:
            return MemberOutputs(self.forward_subset(x, indices))
        return MemberOutputs(self.forward_members(x, count))

    def _features(self, x: torch.Tensor, count: int,
                  indices: tuple[int, ...] | None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if indices is None:
            logits, feats = self.forward_features(x, count)
            return logits, tuple(feats)
        logits, feats = self.forward_features(x, self.member_count(max(indices) + 1))
        return logits[list(indices)], tuple(feats[i] for i in indices)

    def _empty_features(self, x: torch.Tensor, count: int, indices: tuple[int, ...] | None) -> tuple[torch.Tensor, ...]:
        """Empty (0, d_k) features of the members asked for: their widths from one image run in evaluation mode."""
        with torch.no_grad():
            _, feats = self._features(x.new_zeros((1, *x.shape[1:])), count, indices)
        return tuple(f[:0] for f in feats)

    @abstractmethod
    def forward_members(self, x: torch.Tensor, members: int) -> torch.Tensor:
        """Logits (members, B, C) of the first ``members`` members, computing only what they need."""

    def forward_subset(self, x: torch.Tensor, indices: tuple[int, ...]) -> torch.Tensor:
        """Logits (len(indices), B, C) of the listed members. This default runs the smallest prefix that holds them
        and selects; methods whose members are separate paths override it to compute only the listed ones."""
        return self.forward_members(x, self.member_count(max(indices) + 1))[list(indices)]

    def forward_features(self, x: torch.Tensor, members: int) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        """Logits (members, B, C) of the first ``members`` members and their penultimate features, one (B, d_k)
        tensor per member: what each member's last layer maps to its logits. Optional: a model that implements it
        can be combined by combiners that consume features (a merge layer over the concatenated features)."""
        raise NotImplementedError

    @property
    def has_features(self) -> bool:
        """Whether this model implements :meth:`forward_features`."""
        return type(self).forward_features is not SelfEnsemble.forward_features

    @property
    def combines_features(self) -> bool:
        """Whether the combiner consumes the members' features (then combining needs ``outputs(features=True)``)."""
        return getattr(self.combiner, "consumes_features", False)

    def combine(self, outputs: MemberOutputs) -> torch.Tensor:
        """Class probabilities (B, C) from the outputs of the first k members: the one path through which
        ``predict``, training, evaluation and the zoo combine members."""
        if self.combines_features:
            return self.combiner(outputs.logits, features=self._required_features(outputs))
        return self.combiner(outputs.logits)

    def combiner_loss(self, outputs: MemberOutputs, targets: torch.Tensor) -> torch.Tensor:
        """The combiner's own training loss on (detached) member outputs, through the same path as :meth:`combine`."""
        if self.combines_features:
            return self.combiner.loss(outputs.logits, targets, features=self._required_features(outputs))
        return self.combiner.loss(outputs.logits, targets)

    def _required_features(self, outputs: MemberOutputs) -> tuple[torch.Tensor, ...]:
        if outputs.features is None:
            raise ValueError(f"the {type(self.combiner).__name__} combiner consumes the members' features: get the "
                             "outputs with model.outputs(x, features=True)")
        return outputs.features

    def predict(self, x: torch.Tensor, members: int | None = None) -> torch.Tensor:
        """Combined class probabilities (B, C) of the first ``members`` members."""
        return self.combine(self.outputs(x, members, features=self.combines_features))

    def parameter_groups(self) -> dict[str, list[str]]:
        """Named groups of parameter names that a training phase can select by name (``trains: [members]``):
        ``combiner`` (the combiner's own parameters) and ``members`` (everything else). Models add their own
        groups (a head, one group per member, ...) by extending this dict."""
        names = [n for n, _ in self.named_parameters()]
        return {"members": [n for n in names if not n.startswith("combiner.")],
                "combiner": [n for n in names if n.startswith("combiner.")]}

    def effective_cost(self, members: int) -> dict[str, int] | None:
        """The cost of the first ``members`` members as the model counts it (``{"flops": per image, "params":}``)
        when FLOP counting of its dense modules overstates it (e.g. pruned weights that are zero); None (the
        default): the dense count is the cost. Reported in ``metrics.json`` beside the dense count."""
        return None
