"""Evaluation metrics for self-ensembles, as pure functions on tensors.

Classification metrics take probabilities ``(B, C)`` and integer targets ``(B,)``; ensemble-diversity metrics take the
member logits ``(M, B, C)`` a :class:`SelfEnsemble` returns. :class:`MetricAccumulator` computes the same numbers over
an evaluation loop without keeping the data in memory. All sums are taken in float64 so that the streaming and one-shot
results agree (for float32 inputs the calibration-bin sums are exact, so the streaming ECE equals :func:`ece` bit for
bit).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

NLL_EPS = 1e-12
"""Probabilities are clamped to at least this before taking the log, so one confident mistake cannot give ``inf``."""


def accuracy(probs: Tensor, targets: Tensor) -> float:
    """Fraction (in ``[0, 1]``) of samples whose most probable class is the target."""
    return (probs.argmax(-1) == targets).double().mean().item()


def _nll_sum(probs: Tensor, targets: Tensor) -> float:
    p_true = probs.detach().double().gather(-1, targets[:, None]).squeeze(-1)
    return -p_true.clamp_min(NLL_EPS).log().sum().item()


def nll(probs: Tensor, targets: Tensor) -> float:
    """Mean negative log-likelihood of the targets, ``-log p[y]`` with ``p`` clamped at :data:`NLL_EPS`."""
    return _nll_sum(probs, targets) / len(targets)


def _brier_sum(probs: Tensor, targets: Tensor) -> float:
    p = probs.detach().double()
    onehot = torch.nn.functional.one_hot(targets, p.shape[-1]).double()
    return (p - onehot).square().sum().item()


def brier(probs: Tensor, targets: Tensor) -> float:
    """Brier score: mean over samples of ``sum_c (p_c - onehot(y)_c)^2`` (0 is perfect, 2 is worst)."""
    return _brier_sum(probs, targets) / len(targets)


def _calibration_bins(probs: Tensor, targets: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin ``(count, sum of confidence, number correct)`` on CPU for equal-width confidence bins ``(lo, hi]``."""
    p = probs.detach().double()
    confidence, prediction = p.amax(-1), p.argmax(-1)
    inner_edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=p.device)[1:-1]
    bin_index = torch.bucketize(confidence, inner_edges)  # right=False: edges[i-1] < conf <= edges[i]
    correct = (prediction == targets).double()
    counts = torch.bincount(bin_index, minlength=n_bins)
    conf_sums = torch.zeros(n_bins, dtype=torch.float64, device=p.device).index_add_(0, bin_index, confidence)
    correct_sums = torch.zeros(n_bins, dtype=torch.float64, device=p.device).index_add_(0, bin_index, correct)
    return counts.cpu(), conf_sums.cpu(), correct_sums.cpu()


def _ece_from_bins(counts: Tensor, conf_sums: Tensor, correct_sums: Tensor) -> float:
    """``sum_b |B_b|/N * |acc_b - conf_b|``, written as ``sum_b |correct_b - conf_sum_b| / N``."""
    return ((correct_sums - conf_sums).abs().sum() / counts.sum()).item()


def ece(probs: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins over the top-class confidence (Guo et al., 2017)."""
    return _ece_from_bins(*_calibration_bins(probs, targets, n_bins))


def _member_predictions(member_logits: Tensor) -> Tensor:
    if member_logits.dim() != 3:
        raise ValueError(f"member logits must be shaped (M, B, C), got {tuple(member_logits.shape)}")
    return member_logits.argmax(-1)


def _disagreeing_pairs(predictions: Tensor) -> int:
    """Sum over member pairs ``i < j`` of the number of samples on which the two predict different classes."""
    differ = predictions[:, None, :] != predictions[None, :, :]
    return int(differ.sum().item()) // 2


def _num_pairs(num_members: int) -> int:
    return num_members * (num_members - 1) // 2


def disagreement(member_logits: Tensor) -> float:
    """Mean over member pairs of the fraction of samples whose predicted classes differ; 0.0 for a single member."""
    predictions = _member_predictions(member_logits)
    num_members, batch = predictions.shape
    if num_members == 1:
        return 0.0
    return _disagreeing_pairs(predictions) / (_num_pairs(num_members) * batch)


def _all_agree_count(predictions: Tensor) -> int:
    return int((predictions == predictions[:1]).all(0).sum().item())


def agreement_all(member_logits: Tensor) -> float:
    """Fraction of samples on which every member predicts the same class."""
    predictions = _member_predictions(member_logits)
    return _all_agree_count(predictions) / predictions.shape[1]


def count_flops(model: nn.Module, example: Tensor, **forward_kwargs) -> int:
    """FLOPs of one forward of ``model(example, **forward_kwargs)``, for the whole batch in ``example``.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2 FLOPs; element-wise ops such as
    bias additions and activations are not counted) under ``torch.no_grad()``, with the model in its current
    train/eval mode. Pass a batch of size 1 to get per-image FLOPs.
    """
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example, **forward_kwargs)
    return counter.get_total_flops()


def count_params(model: nn.Module) -> int:
    """Number of parameter elements, counting a parameter shared between modules (tied weights) once; no buffers."""
    return sum(p.numel() for p in model.parameters())


class _BudgetStats:
    """Running sums for the ensemble of the first ``k`` members."""

    def __init__(self, n_bins: int) -> None:
        self.correct = 0
        self.nll_sum = 0.0
        self.brier_sum = 0.0
        self.bin_counts = torch.zeros(n_bins, dtype=torch.int64)
        self.bin_conf = torch.zeros(n_bins, dtype=torch.float64)
        self.bin_correct = torch.zeros(n_bins, dtype=torch.float64)

    def update(self, probs: Tensor, targets: Tensor) -> None:
        counts, conf_sums, correct_sums = _calibration_bins(probs, targets, len(self.bin_counts))
        self.bin_counts += counts
        self.bin_conf += conf_sums
        self.bin_correct += correct_sums
        self.correct += int(correct_sums.sum().item())
        self.nll_sum += _nll_sum(probs, targets)
        self.brier_sum += _brier_sum(probs, targets)

    def compute(self, num_samples: int) -> dict[str, float]:
        return {
            "acc": self.correct / num_samples,
            "nll": self.nll_sum / num_samples,
            "ece": _ece_from_bins(self.bin_counts, self.bin_conf, self.bin_correct),
            "brier": self.brier_sum / num_samples,
        }


class MetricAccumulator:
    """Accumulates ensemble metrics over an evaluation loop, holding only running sums.

    For each budget ``k`` the ensemble of the first ``k`` members is scored (accuracy, NLL, ECE, Brier); the member
    statistics (per-member accuracy, pairwise disagreement, all-agree fraction) use all ``num_members`` members.
    The results equal the one-shot functions of this module applied to the concatenated data.
    """

    def __init__(self, num_members: int, budgets: list[int], n_bins: int = 15) -> None:
        bad = [k for k in budgets if not 1 <= k <= num_members]
        if num_members < 1 or bad:
            raise ValueError(f"budgets must lie in [1, {num_members}], got {budgets}")
        self.num_members = num_members
        self.budgets = list(dict.fromkeys(budgets))
        self._budget_stats = {k: _BudgetStats(n_bins) for k in self.budgets}
        self._member_correct = torch.zeros(num_members, dtype=torch.int64)
        self._disagreeing_pairs = 0
        self._all_agree = 0
        self._num_samples = 0

    def update(self, member_logits: Tensor, targets: Tensor, combine: Callable[[Tensor], Tensor]) -> None:
        """Add one batch: ``member_logits`` ``(M, B, C)`` of all members, ``targets`` ``(B,)``.

        ``combine`` maps the logits of the first ``k`` members ``(k, B, C)`` to ensemble probabilities ``(B, C)``.
        """
        predictions = _member_predictions(member_logits)
        if predictions.shape != (self.num_members, len(targets)):
            raise ValueError(
                f"expected logits for {self.num_members} members and {len(targets)} targets, "
                f"got {tuple(member_logits.shape)}"
            )
        for k, stats in self._budget_stats.items():
            stats.update(combine(member_logits[:k]), targets)
        self._member_correct += (predictions == targets).sum(1).cpu()
        self._disagreeing_pairs += _disagreeing_pairs(predictions)
        self._all_agree += _all_agree_count(predictions)
        self._num_samples += len(targets)

    def merge(self, reduce: Callable[[Tensor], Tensor]) -> None:
        """Replace the running sums by ``reduce`` of them: every sum packed into one float64 tensor (exact for counts
        below 2**53), e.g. summed over the processes that each accumulated a shard of the data."""
        budgets = list(self._budget_stats.values())
        flat = torch.cat([
            torch.tensor([self._disagreeing_pairs, self._all_agree, self._num_samples], dtype=torch.float64),
            self._member_correct.double(),
            *(torch.cat([torch.tensor([b.correct, b.nll_sum, b.brier_sum], dtype=torch.float64),
                         b.bin_counts.double(), b.bin_conf, b.bin_correct]) for b in budgets),
        ])
        parts = iter(reduce(flat).split([3, self.num_members, *(3 + 3 * len(b.bin_counts) for b in budgets)]))
        pairs, agree, samples = next(parts).tolist()
        self._disagreeing_pairs, self._all_agree, self._num_samples = int(pairs), int(agree), int(samples)
        self._member_correct = next(parts).round().long()
        for b, part in zip(budgets, parts):
            n = len(b.bin_counts)
            correct, b.nll_sum, b.brier_sum = part[:3].tolist()
            b.correct = int(correct)
            b.bin_counts, b.bin_conf, b.bin_correct = part[3:].split(n)
            b.bin_counts = b.bin_counts.round().long()

    def compute(self) -> dict:
        """The metrics so far, as
        ``{"members": {str(k): {"acc", "nll", "ece", "brier"}}, "member_acc": [...], "disagreement", "agreement"}``.
        """
        n = self._num_samples
        if n == 0:
            raise ValueError("MetricAccumulator.compute() called before any update()")
        pairs = _num_pairs(self.num_members)
        return {
            "members": {str(k): stats.compute(n) for k, stats in self._budget_stats.items()},
            "member_acc": (self._member_correct.double() / n).tolist(),
            "disagreement": self._disagreeing_pairs / (pairs * n) if pairs else 0.0,
            "agreement": self._all_agree / n,
        }
